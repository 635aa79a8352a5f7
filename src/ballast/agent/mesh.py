"""The node's mesh: the registry applied to every sidecar on this node, as one traffic component.

`dataplane/component.py` long-polls the registry and acknowledges; this is what
it applies: each snapshot goes to all running sidecars (runtime API for endpoint
changes, a seamless reload when a service appears or goes), and the generation
acknowledged is the lowest one every running sidecar has in effect. The control
plane lets a drained instance stop only after that acknowledgement, so a sidecar
on this node can never still be sending to it.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterable

from ballast.agent.sidecar import Sidecar
from ballast.dataplane.component import Applied, combined_digest
from ballast.wire.registry import Snapshot


class NodeMesh:
    def __init__(self, sidecars: Callable[[], Iterable[Sidecar]]) -> None:
        self.sidecars = sidecars

    async def apply(self, snapshot: Snapshot) -> Applied:
        await asyncio.gather(*(s.apply(snapshot) for s in self.sidecars() if s.proxy.alive()))
        running = [s for s in self.sidecars() if s.proxy.alive()]
        return Applied(generation=min((s.applied_generation for s in running), default=snapshot.generation),
                       digest=combined_digest((s.id, s.applied_digest) for s in running),
                       error="; ".join(f"{s.id}: {s.error}" for s in self.sidecars() if s.error))
