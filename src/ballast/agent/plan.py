"""What the agent does about its instances, decided from values. Pure.

The agent is level-triggered: each assignments answer is the whole desired
set for the node. `plan()` compares it with what the agent supervises, what
is still stopping and what its state file remembers from an earlier agent,
and returns the actions; `Agent` only carries them out. The health counter
is the same kind of value for one instance's health checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import AbstractSet, Mapping, Sequence, Union

from ballast.wire.assignments import Assignment

FAST_PROBE_SECONDS = 0.2    # until the first pass: readiness is noticed promptly


@dataclass(frozen=True)
class Begin:
    """Start supervising an instance (adopting its process when an earlier agent left it running)."""

    assignment: Assignment


@dataclass(frozen=True)
class Replace:
    """Same instance, new revision: stop its app (after the drain), then start the new template."""

    assignment: Assignment


@dataclass(frozen=True)
class Retire:
    """Stop the instance for good: its app, then its sidecar."""

    instance: str


@dataclass(frozen=True)
class ReportStopped:
    """The instance is to be deleted and nothing of it runs here: say it is stopped."""

    instance: str


@dataclass(frozen=True)
class StopOrphan:
    """A process an earlier agent left running that nobody assigns any more."""

    instance: str


Action = Union[Begin, Replace, Retire, ReportStopped, StopOrphan]


def plan(wanted: Sequence[Assignment], supervised: Mapping[str, int], stopping: AbstractSet[str],
         remembered: AbstractSet[str]) -> list[Action]:
    """`supervised`: instance → the revision its supervisor runs; `stopping`: instances whose process is still
    being stopped (nothing new starts for them until it is gone); `remembered`: instances in the state file."""
    out: list[Action] = []
    by_id = {a.id: a for a in wanted}
    for instance, a in by_id.items():
        running = supervised.get(instance)
        if a.desired == "deleted":
            if running is not None:
                out.append(Retire(instance))
            elif instance not in stopping:
                if instance in remembered:
                    # An earlier agent's process, fenced while this node was away: stop it, never adopt it.
                    out.append(StopOrphan(instance))
                out.append(ReportStopped(instance))
        elif running is None:
            if a.template is not None and instance not in stopping:
                out.append(Begin(a))
        elif running != a.revision:
            out.append(Replace(a))
    out.extend(Retire(i) for i in supervised if i not in by_id)
    out.extend(StopOrphan(i) for i in remembered
               if i not in by_id and i not in supervised and i not in stopping)
    return out


class Health(str, Enum):
    READY = "ready"              # the check passed
    STARTING = "starting"        # not passed yet, and not failed often enough to say more
    UNHEALTHY = "unhealthy"      # failed `threshold` times in a row
    UNCHANGED = "unchanged"      # a failure below the threshold after it had passed: keep what was said


@dataclass(frozen=True)
class HealthCount:
    """Consecutive failures of an instance's health check. Before the first pass only answers that fail count:
    an app not listening yet is just starting."""

    threshold: int
    failures: int = 0
    passed_once: bool = False

    def observe(self, passed: bool, answered: bool) -> tuple["HealthCount", Health]:
        if passed:
            return replace(self, failures=0, passed_once=True), Health.READY
        count = replace(self, failures=self.failures + (1 if self.passed_once or answered else 0))
        if count.failures >= self.threshold:
            return count, Health.UNHEALTHY
        return count, Health.UNCHANGED if self.passed_once else Health.STARTING

    def next_probe(self, period: float) -> float:
        return period if self.passed_once else min(period, FAST_PROBE_SECONDS)
