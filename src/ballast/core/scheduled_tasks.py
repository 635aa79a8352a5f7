"""ScheduledTask: a batch split into shards, each an ordinary call through the data plane. Pure.

`ScheduledTaskSpec` is what users write (field names are public API). The decisions here take values and
return values: which scheduled times fell due between the mark the controller last considered and now (in the
task's time zone: cron fields are local wall-clock time, and a DST change is handled as Debian's cron does —
a time skipped by the spring change runs once at the next minute that exists, a time repeated by the autumn
change runs once; `cronsim` implements exactly that), which of them are missed (older than
`startingDeadlineSeconds`, or passed over by a later one), and what `concurrencyPolicy` does with a run that is
still active. The controller (controllers/tasks.py) fetches, calls `decide_tick`, and writes the outcome in one
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Literal
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator

from ballast.core.spec_model import Name, SpecModel, iana_zone
from ballast.wire.traffic import PATH_PREFIX_PATTERN, Tags

SHARDS_MAX = 1000
MISSED_LISTED = 20        # missed scheduled times recorded one by one per pass; more are only counted
MISSED_COUNTED = 10_000   # how far a pass counts missed times after a long outage ("at least N")


class ConcurrencyPolicy(str, Enum):
    FORBID = "Forbid"     # a due time while a run is active is skipped (recorded)
    ALLOW = "Allow"       # runs may overlap
    REPLACE = "Replace"   # the active run's unclaimed shards are cancelled, then the new run starts


class RunState(str, Enum):
    PENDING = "pending"       # persisted with its shards; no shard claimed yet (e.g. no gateway registered)
    RUNNING = "running"       # some shard claimed
    SUCCEEDED = "succeeded"   # every shard succeeded
    FAILED = "failed"         # some shard failed or was cancelled
    SKIPPED = "skipped"       # not started: concurrencyPolicy Forbid and a run was active
    MISSED = "missed"         # not started: past startingDeadlineSeconds, or passed over by a later time


ACTIVE_RUN_STATES = (RunState.PENDING.value, RunState.RUNNING.value)


class ShardState(str, Enum):
    PENDING = "pending"       # waiting for a gateway to claim it
    CLAIMED = "claimed"       # a gateway holds it until its lease ends
    SUCCEEDED = "succeeded"   # the call answered below 500
    FAILED = "failed"         # every attempt failed (connection error or 5xx), or the shard's lease ran out too often
    CANCELLED = "cancelled"   # concurrencyPolicy Replace cancelled it before any gateway claimed it


FINISHED_SHARD_STATES = (ShardState.SUCCEEDED.value, ShardState.FAILED.value, ShardState.CANCELLED.value)


class TaskTarget(SpecModel):
    service: Name = Field(description="the app called, by name, like any mesh call")
    path: str = Field(pattern=PATH_PREFIX_PATTERN, description="an absolute path without query: / then letters, "
                      "digits, . _ ~ % / -; the shard and count are added as the query")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"


class ScheduledTaskSpec(SpecModel):
    schedule: str = Field(max_length=200, description="cron: five fields (minute hour day-of-month month "
                          "day-of-week), in timeZone")
    time_zone: str = Field("UTC", alias="timeZone", max_length=64, description="an IANA time zone, e.g. Asia/Shanghai")
    target: TaskTarget
    shards: int = Field(1, ge=1, le=SHARDS_MAX, description="calls per run, each told its index and the count")
    tags: Tags = Field(default_factory=dict, description="the calls' color (W3C baggage), so rules route the batch")
    concurrency_policy: ConcurrencyPolicy = Field(ConcurrencyPolicy.FORBID, alias="concurrencyPolicy", strict=False)
    starting_deadline_seconds: int | None = Field(None, alias="startingDeadlineSeconds", ge=1, le=86_400 * 7,
                                                  description="a due time older than this is missed, not run "
                                                  "(default: no bound; only the newest due time runs)")
    timeout_seconds: int = Field(30, alias="timeoutSeconds", ge=1, le=3600, description="per call")
    retries: int = Field(2, ge=0, le=10, description="further attempts per shard on connection errors and 5xx")
    suspend: bool = Field(False, description="true: no scheduled run starts (manual runs still may)")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a cron schedule of five fields (minute hour day-of-month month day-of-week), "
                             "e.g. '*/5 * * * *'")
        try:
            CronSim(value, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC")))
        except CronSimError as exc:
            raise ValueError(f"a valid cron schedule ({exc})") from None
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_zone(value)

    def lease_seconds(self) -> float:
        """How long a gateway holds a claimed shard: every attempt at its timeout, the pauses between them, and a
        margin. The executor starts no attempt that could end after its lease, so a lease that runs out means the
        gateway is gone (its shard is claimed again, under the same idempotency key)."""
        return float((self.retries + 1) * self.timeout_seconds + self.retries * RETRY_PAUSE_MAX + LEASE_MARGIN)


RETRY_PAUSE_MAX = 2.0     # the longest pause between two attempts of a shard (executor)
LEASE_MARGIN = 15.0


def due_times(schedule: str, time_zone: str, after: float, until: float, limit: int) -> list[float]:
    """Scheduled times t with after < t <= until (epoch seconds), oldest first, at most `limit` of them."""
    zone = ZoneInfo(time_zone)
    out: list[float] = []
    for moment in CronSim(schedule, datetime.fromtimestamp(after, zone)):
        t = moment.timestamp()
        if t > until or len(out) >= limit:
            break
        out.append(t)
    return out


def next_time(schedule: str, time_zone: str, after: float) -> float:
    """The first scheduled time after `after`."""
    return next(iter(CronSim(schedule, datetime.fromtimestamp(after, ZoneInfo(time_zone))))).timestamp()


@dataclass(frozen=True)
class TickDecision:
    """What one controller pass does for one task."""

    run: float | None = None                 # the scheduled time of the run to start now
    skipped: float | None = None             # a due time not run: Forbid, and a run is active
    replace: bool = False                    # cancel the active runs' unclaimed shards before starting `run`
    missed: tuple[float, ...] = ()           # due times recorded as missed (the newest MISSED_LISTED)
    missed_count: int = 0                    # every missed time counted (up to MISSED_COUNTED)
    considered_until: float = 0.0            # the new mark: every due time up to here is decided


def decide_tick(spec: ScheduledTaskSpec, considered: float, now: float, active_runs: int) -> TickDecision:
    """Decide the due times in (considered, now]. Pure.

    Of the due times, those older than `startingDeadlineSeconds` are missed; of the others only the newest runs
    (the rest are missed too, passed over by it): a control plane that was down starts one run on its return,
    not a burst. A suspended task decides nothing but moves its mark, so resuming it starts no backlog.
    """
    if now <= considered:
        return TickDecision(considered_until=considered)
    if spec.suspend:
        return TickDecision(considered_until=now)
    times = due_times(spec.schedule, spec.time_zone, considered, now, MISSED_COUNTED + 1)
    if not times:
        return TickDecision(considered_until=now)
    newest = times[-1]
    deadline = spec.starting_deadline_seconds
    runnable = newest if deadline is None or now - newest <= deadline else None
    missed = times[:-1] if runnable is not None else times
    decision = TickDecision(missed=tuple(missed[-MISSED_LISTED:]), missed_count=len(missed), considered_until=now)
    if runnable is None:
        return decision
    if active_runs and spec.concurrency_policy is ConcurrencyPolicy.FORBID:
        return replace(decision, skipped=runnable)
    return replace(decision, run=runnable,
                   replace=bool(active_runs) and spec.concurrency_policy is ConcurrencyPolicy.REPLACE)


def run_state(shard_states: list[str]) -> RunState:
    """A run's state from its shards' states. Pure."""
    if not shard_states or all(s == ShardState.PENDING.value for s in shard_states):
        return RunState.PENDING
    if any(s not in FINISHED_SHARD_STATES for s in shard_states):
        return RunState.RUNNING
    return RunState.SUCCEEDED if all(s == ShardState.SUCCEEDED.value for s in shard_states) else RunState.FAILED


def idempotency_key(task: str, run_id: int, shard: int) -> str:
    """The same for every attempt and every claim of one shard: an app may use it to do a shard's work once."""
    return f"{task}/{run_id}/{shard}"


def retryable(status: int | None) -> bool:
    """A connection error (no status) or a 5xx is attempted again; anything else is the shard's answer."""
    return status is None or status >= 500
