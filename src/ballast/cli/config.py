"""Where the CLI finds the server URL and token.

Order: flags, then BALLAST_SERVER / BALLAST_TOKEN, then the first config file
found: --config, $BALLAST_CONFIG, ./.ballast/client.yaml, ~/.config/ballast/config.yaml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ballast.errors import BallastError


class ConfigMissing(BallastError):
    status = 2


@dataclass(frozen=True)
class ClientConfig:
    server: str          # one URL, or the replicas' URLs comma-separated (client.Client takes either)
    token: str | None


def _servers(value: object, path: Path) -> str:
    """`server:` is one URL or a list of the control plane replicas' URLs."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, str) or value is None:
        return value or ""
    raise ConfigMissing(f"client config {path}: server: expected a URL or a list of URLs, got {value!r}")


def candidate_files(explicit: str | None) -> list[Path]:
    paths = []
    if explicit:
        return [Path(explicit)]
    if os.environ.get("BALLAST_CONFIG"):
        paths.append(Path(os.environ["BALLAST_CONFIG"]))
    try:
        paths.append(Path.cwd() / ".ballast" / "client.yaml")
    except FileNotFoundError:
        pass  # the working directory was removed under us; the other places still count
    paths.append(Path.home() / ".config" / "ballast" / "config.yaml")
    return paths


def load(explicit: str | None = None, server: str | None = None, token: str | None = None) -> ClientConfig:
    server = server or os.environ.get("BALLAST_SERVER")
    token = token or os.environ.get("BALLAST_TOKEN")
    if server and token:
        return ClientConfig(server, token)
    for path in candidate_files(explicit):
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigMissing(f"client config {path} is not valid YAML: {exc}") from exc
            return ClientConfig(server or _servers(data.get("server"), path), token or data.get("token"))
    if server:
        return ClientConfig(server, token)
    raise ConfigMissing("no control plane configured: run 'ballast up', or set BALLAST_SERVER and BALLAST_TOKEN, "
                        "or pass --config FILE")


def write(path: Path, server: str | list[str], token: str) -> None:
    """`server`: one URL, or several (the replicas'), written as a list."""
    urls = [u.strip() for u in (server.split(",") if isinstance(server, str) else server) if u.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"server": urls[0] if len(urls) == 1 else urls, "token": token}, fh)
    os.replace(tmp, path)
