"""The service registry's decisions: endpoint states and the drain gate. Pure.

Writers (scheduler, release engine, deletions) record *intent* on an instance
(`revision`, `desired`); the agent is told only what has been *granted*
(`granted_revision`, `granted_desired`). Between the two stands the drain
protocol:

1. an instance whose intent differs from its grant and whose endpoint is
   ready gets its endpoint marked draining (a new generation);
2. the grant follows only once every traffic component that routes to the
   service has acknowledged that generation (the agent then waits for the
   instance's in-flight requests to reach zero before it stops anything);
3. an endpoint is ready only while its instance runs the granted revision,
   healthy, with nothing pending; it counts as serving once every component
   has acknowledged that ready generation.

Each endpoint records the components that must acknowledge its generation
(`required`); who is still pending is derived from the components'
acknowledged generations whenever it is needed, so an acknowledgement costs
no write beyond its own. A component that does not acknowledge within the
app's `ackTimeoutSeconds` leaves a note naming it on the endpoint; the
release engine pauses on it. Nothing here waits: every pass decides from
records alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Sequence

from ballast.wire.assignments import DEFAULT_DRAIN_TIMEOUT_SECONDS

GATEWAY, MESH = "gateway", "mesh"
FORGET_AFTER_SECONDS = 600.0        # a removed endpoint some component never acknowledged is dropped after this
DEFAULT_ACK_TIMEOUT_SECONDS = 30.0   # the longest wait for a component's acknowledgement before a release pauses


class EndpointState(str, Enum):
    READY = "ready"
    DRAINING = "draining"
    REMOVED = "removed"


@dataclass(frozen=True)
class TrafficPolicy:
    components: frozenset[str] = frozenset({MESH})
    drain: bool = True
    drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS
    ack_timeout_seconds: float = DEFAULT_ACK_TIMEOUT_SECONDS


# For instances whose app is gone: the strictest reading (everything may route to them).
UNKNOWN_APP_POLICY = TrafficPolicy(components=frozenset({GATEWAY, MESH}))


@dataclass(frozen=True)
class InstanceFacts:
    id: str
    app: str
    node: str
    cell: str
    zone: str
    ip: str
    port: int | None
    revision: int                   # intent
    desired: str                    # intent: running | deleted
    granted_revision: int
    granted_desired: str
    running_revision: int | None    # what the agent reports
    phase: str
    ready: bool
    node_ready: bool
    group: str = ""                 # its isolation group's code


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    service: str
    node: str
    cell: str
    zone: str
    ip: str
    port: int
    revision: int
    state: EndpointState
    generation: int
    since: float
    required: tuple[str, ...] = ()   # components that must acknowledge this generation
    note: str = ""


@dataclass(frozen=True)
class Component:
    key: str             # "mesh/node-a1", "gateway/edge"
    kind: str            # mesh | gateway
    acked_generation: int


@dataclass(frozen=True)
class PutEndpoint:
    """Write the endpoint at a new generation (the writer's resource version)."""

    id: str
    service: str
    node: str
    cell: str
    zone: str
    ip: str
    port: int
    revision: int
    state: EndpointState
    required: tuple[str, ...]


@dataclass(frozen=True)
class SetNote:
    """An acknowledgement timed out (or a note no longer holds)."""

    id: str
    note: str


@dataclass(frozen=True)
class DropEndpoint:
    id: str


@dataclass(frozen=True)
class Grant:
    instance: str
    revision: int
    desired: str
    drained: bool        # whether a drain preceded it (False: nothing was routed to the instance)


@dataclass
class RegistryDecision:
    puts: list[PutEndpoint] = field(default_factory=list)
    notes: list[SetNote] = field(default_factory=list)
    drops: list[DropEndpoint] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)

    @property
    def registry_changed(self) -> bool:
        return bool(self.puts or self.drops)

    def empty(self) -> bool:
        return not (self.puts or self.notes or self.drops or self.grants)


def required_components(policy: TrafficPolicy, components: Iterable[Component]) -> tuple[str, ...]:
    """Every registered component of a kind that routes to the service must acknowledge. A gateway routes to
    every mesh service too (its scheduled-task calls), so it acknowledges their endpoints as well."""
    kinds = policy.components | ({GATEWAY} if MESH in policy.components else set())
    return tuple(sorted(c.key for c in components if c.kind in kinds))


def pending_acks(ep: EndpointRecord, acked: Mapping[str, int]) -> tuple[str, ...]:
    """Required components that have not acknowledged the endpoint's generation; a component deleted since
    no longer routes anything, so it is not waited for."""
    return tuple(k for k in ep.required if k in acked and acked[k] < ep.generation)


def ack_note(pending: Sequence[str], generation: int, state: EndpointState, since: float, now: float,
             timeout: float) -> str:
    if not pending or now - since <= timeout:
        return ""
    what = "removal" if state is not EndpointState.READY else "addition"
    return (f"{', '.join(pending)} did not acknowledge the {what} of this endpoint (generation {generation}) "
            f"within {timeout:g}s")


def _healthy(i: InstanceFacts) -> bool:
    return (i.granted_desired == "running" and i.running_revision == i.granted_revision and i.phase == "Running"
            and i.ready and i.node_ready and i.port is not None)


def decide(instances: Sequence[InstanceFacts], endpoints: Mapping[str, EndpointRecord],
           components: Sequence[Component], policies: Mapping[str, TrafficPolicy], now: float,
           *, forget_after_seconds: float = FORGET_AFTER_SECONDS) -> RegistryDecision:
    out = RegistryDecision()
    acked = {c.key: c.acked_generation for c in components}
    seen: set[str] = set()
    for inst in instances:
        seen.add(inst.id)
        policy = policies.get(inst.app, UNKNOWN_APP_POLICY)
        required = required_components(policy, components)
        ep = endpoints.get(inst.id)
        change_pending = (inst.revision, inst.desired) != (inst.granted_revision, inst.granted_desired)
        wanted_ready = _healthy(inst) and not change_pending
        put: PutEndpoint | None = None
        if wanted_ready:
            assert inst.port is not None and inst.running_revision is not None
            fresh = (ep is None or ep.state is not EndpointState.READY
                     or (ep.ip, ep.port, ep.revision) != (inst.ip, inst.port, inst.running_revision))
            if fresh:
                put = PutEndpoint(inst.id, inst.app, inst.node, inst.cell, inst.zone, inst.ip, inst.port,
                                  inst.running_revision, EndpointState.READY, required)
        elif ep is not None and not inst.node_ready and ep.state is not EndpointState.REMOVED:
            # Its node is NotReady: out of every routing table at once; nothing there can finish a drain.
            put = PutEndpoint(ep.id, ep.service, ep.node, ep.cell, ep.zone, ep.ip, ep.port, ep.revision,
                              EndpointState.REMOVED, required)
        elif ep is not None and ep.state is EndpointState.READY:
            put = PutEndpoint(ep.id, ep.service, ep.node, ep.cell, ep.zone, ep.ip, ep.port, ep.revision,
                              EndpointState.DRAINING, required)
        if put is not None:
            out.puts.append(put)
        elif ep is not None:
            _note(out, ep, acked, policy, now)
        if change_pending and _gate_open(ep, put, required, acked, policy):
            out.grants.append(Grant(inst.id, inst.revision, inst.desired,
                                    drained=ep is not None and policy.drain and bool(required)))
    for ep in endpoints.values():
        if ep.id in seen:
            continue
        required = required_components(policies.get(ep.service, UNKNOWN_APP_POLICY), components)
        if ep.state is not EndpointState.REMOVED:
            out.puts.append(PutEndpoint(ep.id, ep.service, ep.node, ep.cell, ep.zone, ep.ip, ep.port, ep.revision,
                                        EndpointState.REMOVED, required))
            continue
        if not pending_acks(ep, acked) or now - ep.since > forget_after_seconds:
            out.drops.append(DropEndpoint(ep.id))
    return out


def decided_until(endpoints: Mapping[str, EndpointRecord], components: Sequence[Component],
                  policies: Mapping[str, TrafficPolicy], now: float, *,
                  forget_after_seconds: float = FORGET_AFTER_SECONDS) -> float:
    """Until when `decide` gives the same answer from the same inputs: time alone changes it only when an
    acknowledgement still pending times out, or a removed endpoint is forgotten."""
    acked = {c.key: c.acked_generation for c in components}
    until = math.inf
    for ep in endpoints.values():
        if not pending_acks(ep, acked):
            continue
        timeout = policies.get(ep.service, UNKNOWN_APP_POLICY).ack_timeout_seconds
        for moment in (ep.since + timeout, ep.since + forget_after_seconds):
            if moment >= now:
                until = min(until, moment)
    return until


def _note(out: RegistryDecision, ep: EndpointRecord, acked: Mapping[str, int], policy: TrafficPolicy,
          now: float) -> None:
    note = ack_note(pending_acks(ep, acked), ep.generation, ep.state, ep.since, now, policy.ack_timeout_seconds)
    if note != ep.note:
        out.notes.append(SetNote(ep.id, note))


def _gate_open(ep: EndpointRecord | None, put: PutEndpoint | None, required: Sequence[str],
               acked: Mapping[str, int], policy: TrafficPolicy) -> bool:
    """May the agent act on the instance's new intent now?"""
    if not policy.drain or not required:
        return True               # nothing routes to it, or draining is switched off: act at once
    if ep is None:
        return True               # never registered: nothing was ever routed to it
    if put is not None:
        return False              # the drain begins in this very pass
    if ep.state is EndpointState.READY:
        return False
    return not pending_acks(ep, acked)


def serving(ep: EndpointRecord | None, acked: Mapping[str, int]) -> bool:
    """Ready, and every component that must route to it has acknowledged that."""
    return ep is not None and ep.state is EndpointState.READY and not pending_acks(ep, acked)
