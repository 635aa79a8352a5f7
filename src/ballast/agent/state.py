"""The agent's local memory of its instances, kept on disk so a restarted agent adopts them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ballast.wire.reports import DrainReport


@dataclass
class LocalInstance:
    id: str
    port: int                        # the registered endpoint (the sidecar's inbound side)
    app_port: int = 0                # where the app listens, behind its sidecar
    mesh_port: int = 0               # the sidecar's outbound listener
    pid: int | None = None
    started: int | None = None
    sidecar_pid: int | None = None
    sidecar_started: int | None = None
    restarts: int = 0
    revision: int = 0
    drain: DrainReport | None = None      # the last wait for in-flight requests, as reported


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, LocalInstance]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError):
            return {}  # unreadable state: start clean rather than adopt the wrong processes
        known = set(LocalInstance.__dataclass_fields__)
        out = {}
        for item in raw.get("instances", []):
            fields = {k: v for k, v in item.items() if k in known}
            try:
                fields["drain"] = DrainReport.from_json(fields["drain"]) if fields.get("drain") else None
            except ValueError:
                fields["drain"] = None  # a report this version cannot read is only history
            out[item["id"]] = LocalInstance(**fields)
        return out

    def save(self, instances: dict[str, LocalInstance]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        items = [{**asdict(i), "drain": i.drain.to_json() if i.drain is not None else None} for i in instances.values()]
        tmp.write_text(json.dumps({"instances": items}, indent=1))
        os.replace(tmp, self.path)
