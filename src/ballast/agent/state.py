"""The agent's local memory of its instances, kept on disk so a restarted agent adopts them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


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
    drain: dict[str, Any] | None = None   # the last wait for in-flight requests, as reported


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
        return {item["id"]: LocalInstance(**{k: v for k, v in item.items() if k in known})
                for item in raw.get("instances", [])}

    def save(self, instances: dict[str, LocalInstance]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"instances": [asdict(i) for i in instances.values()]}, indent=1))
        os.replace(tmp, self.path)
