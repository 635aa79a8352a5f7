"""The node lifecycle judgement, decided from values. Pure.

A node is `Ready` while its agent's heartbeats arrive and its reports say it is healthy; `NotReady` once it has
been silent for nodeGraceSeconds and its agent does not answer a direct probe either (a busy or frozen agent,
or a control plane too loaded to hear, is not a dead node), unless the control plane has suspended judgement
because too many are silent at once (core/nodes.py `hearing`); `Degraded` while it heartbeats but reports a sidecar that keeps failing, a
nearly full data directory or a clock too far from the control plane's. NotReady nodes lose their endpoints and
their instances (replaced in their cell); Degraded nodes are cordoned and evacuated losslessly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence


class NodeState(str, Enum):
    READY = "Ready"
    NOT_READY = "NotReady"
    DEGRADED = "Degraded"


@dataclass(frozen=True)
class HealthPolicy:
    """Bounds of a healthy node's own report."""

    min_free_bytes: int = 256 * 1024 * 1024     # of the agent's data directory (artifacts, state, sidecar files)
    min_free_ratio: float = 0.02
    max_clock_offset_seconds: float = 2.0       # certificates, audit timestamps and change windows need one time
    max_sidecar_restarts: int = 3               # per instance within a minute: a sidecar that keeps failing


@dataclass(frozen=True)
class NodeFacts:
    name: str
    state: NodeState                  # the judgement recorded so far
    silent_seconds: float             # since its last heartbeat (counted from when the control plane could hear)
    silent: bool                      # silent past nodeGraceSeconds
    suspended: bool                   # silent, but judgement is suspended (the control plane may be the deaf one)
    conditions: Mapping[str, Any] | None
    answering: bool = False           # silent, but its agent answers a direct probe: alive, only unheard


@dataclass(frozen=True)
class Judgement:
    node: str
    state: NodeState
    reason: str


def degradation(conditions: Mapping[str, Any] | None, policy: HealthPolicy) -> str:
    """Why a heartbeating node cannot be counted on ("": it can)."""
    if not conditions:
        return ""
    problems = []
    offset, uncertainty = conditions.get("clockOffsetSeconds"), conditions.get("clockUncertaintySeconds")
    # Judged only when measured, and only beyond what the measurement cannot tell apart from transit time.
    if offset is not None and uncertainty is not None \
            and abs(float(offset)) - float(uncertainty) > policy.max_clock_offset_seconds:
        problems.append(f"clock off by {float(offset):+.1f}s (±{float(uncertainty):.2f}s; bound "
                        f"{policy.max_clock_offset_seconds:g}s)")
    free, total = int(conditions.get("dataDirFreeBytes", 0)), int(conditions.get("dataDirTotalBytes", 0))
    if total and (free < policy.min_free_bytes or free < policy.min_free_ratio * total):
        problems.append(f"data dir nearly full ({free // (1024 * 1024)} MiB free of {total // (1024 * 1024)} MiB)")
    failing = sorted(f"{s['instance']} ({s['restarts']} restarts/min)" for s in conditions.get("failingSidecars", ())
                     if int(s.get("restarts", 0)) >= policy.max_sidecar_restarts)
    if failing:
        problems.append("sidecars keep failing: " + ", ".join(failing))
    return "; ".join(problems)


def judge(nodes: Sequence[NodeFacts], grace_seconds: float, policy: HealthPolicy = HealthPolicy()) -> list[Judgement]:
    """The nodes whose state changes, with why. A silent node under suspended judgement keeps its state."""
    out = []
    for n in nodes:
        if n.silent:
            if n.suspended or n.answering or n.state is NodeState.NOT_READY:
                continue
            out.append(Judgement(n.name, NodeState.NOT_READY,
                                 f"no heartbeat for {n.silent_seconds:.1f}s (nodeGraceSeconds {grace_seconds:g})"))
            continue
        why = degradation(n.conditions, policy)
        if why and n.state is not NodeState.DEGRADED:
            out.append(Judgement(n.name, NodeState.DEGRADED, why))
        elif not why and n.state is not NodeState.READY:
            out.append(Judgement(n.name, NodeState.READY, "heartbeats again" if n.state is NodeState.NOT_READY
                                 else "its report is healthy again (it stays cordoned until an operator uncordons it)"))
    return out
