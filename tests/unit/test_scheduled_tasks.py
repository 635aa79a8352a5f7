"""Spec of a ScheduledTask's pure decisions: the manifest's checks, which scheduled times fall due in the task's time
zone (DST included), which are missed, what concurrencyPolicy does, and a run's state from its shards."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballast.core.manifests import API_VERSION, parse_documents
from ballast.core.scheduled_tasks import (MISSED_LISTED, ScheduledTaskSpec, decide_tick, due_times, idempotency_key,
                                          retryable, run_state)
from ballast.errors import InvalidInput


def spec(**fields: Any) -> ScheduledTaskSpec:
    body: dict[str, Any] = {"schedule": "*/5 * * * *", "target": {"service": "back", "path": "/tasks/replenish"}}
    body.update(fields)
    return ScheduledTaskSpec.model_validate(body)


def at(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def local(ts: float, zone: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


# --- the manifest ------------------------------------------------------------------------------------------------
def task_doc(**spec_fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schedule": "*/5 * * * *", "timeZone": "Asia/Shanghai",
                            "target": {"service": "back", "path": "/tasks/replenish", "method": "POST"},
                            "shards": 8, "tags": {"biz": "replenish"}, "concurrencyPolicy": "Forbid",
                            "startingDeadlineSeconds": 60, "timeoutSeconds": 30, "retries": 2}
    body.update(spec_fields)
    return {"apiVersion": API_VERSION, "kind": "ScheduledTask", "metadata": {"name": "replenish-batch"}, "spec": body}


def test_the_issues_example_parses_with_its_public_field_names() -> None:
    [m] = parse_documents([task_doc()])
    assert m.kind == "ScheduledTask"
    stored = m.spec.model_dump(mode="json", by_alias=True)
    assert stored == {"schedule": "*/5 * * * *", "timeZone": "Asia/Shanghai",
                      "target": {"service": "back", "path": "/tasks/replenish", "method": "POST"}, "shards": 8,
                      "tags": {"biz": "replenish"}, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 60,
                      "timeoutSeconds": 30, "retries": 2, "suspend": False}


BAD = [
    ({"schedule": "*/5 * * *"}, "items[0].spec.schedule", "five fields"),
    ({"schedule": "0 */5 * * * *"}, "items[0].spec.schedule", "five fields"),
    ({"schedule": "61 * * * *"}, "items[0].spec.schedule", "a valid cron schedule"),
    ({"schedule": "* * 31 2-x *"}, "items[0].spec.schedule", "a valid cron schedule"),
    ({"timeZone": "Mars/Olympus"}, "items[0].spec.timeZone", "an IANA time zone"),
    ({"shards": 0}, "items[0].spec.shards", "greater than or equal to 1"),
    ({"shards": 1001}, "items[0].spec.shards", "less than or equal to 1000"),
    ({"shards": True}, "items[0].spec.shards", "integer"),
    ({"target": {"service": "back", "path": "tasks"}}, "items[0].spec.target.path", "pattern"),
    ({"target": {"service": "back", "path": "/t?x=1"}}, "items[0].spec.target.path", "pattern"),
    ({"target": {"service": "back", "path": "/t", "method": "BREW"}}, "items[0].spec.target.method", "'GET'"),
    ({"target": {"service": "Back!", "path": "/t"}}, "items[0].spec.target.service", "pattern"),
    ({"tags": {"biz": "re plenish"}}, "items[0].spec.tags.biz", "pattern"),
    ({"tags": {"-biz": "x"}}, "items[0].spec.tags", "pattern"),
    ({"concurrencyPolicy": "Sometimes"}, "items[0].spec.concurrencyPolicy", "'Forbid'"),
    ({"retries": 11}, "items[0].spec.retries", "less than or equal to 10"),
    ({"timeoutSeconds": 0}, "items[0].spec.timeoutSeconds", "greater than or equal to 1"),
    ({"startingDeadlineSeconds": 0}, "items[0].spec.startingDeadlineSeconds", "greater than or equal to 1"),
    ({"suspend": "no"}, "items[0].spec.suspend", "boolean"),
    ({"shardz": 3}, "items[0].spec.shardz", "Extra inputs"),
]


@pytest.mark.parametrize(("fields", "path", "expected"), BAD, ids=[f"{b[1]}:{b[2][:16]}" for b in BAD])
def test_a_bad_task_names_the_field_path(fields: dict[str, Any], path: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_documents([task_doc(**fields)])
    problems = [(p.path, p.expected) for p in caught.value.problems]
    assert any(p.startswith(path) and expected in e for p, e in problems), problems


# --- due times ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("schedule", "zone", "after", "until", "expected"), [
    # every five minutes, in the window (after, until]
    ("*/5 * * * *", "UTC", "2024-05-01 10:00", "2024-05-01 10:16",
     ["2024-05-01 10:05 UTC", "2024-05-01 10:10 UTC", "2024-05-01 10:15 UTC"]),
    # 02:00 in Shanghai is 18:00 UTC the day before (no DST there)
    ("0 2 * * *", "Asia/Shanghai", "2024-05-01 00:00", "2024-05-02 23:00", ["2024-05-01 02:00 CST",
                                                                             "2024-05-02 02:00 CST"]),
    # spring forward in Zurich (02:00 -> 03:00 on 2024-03-31): 02:30 does not exist, it runs once at 03:00
    ("30 2 * * *", "Europe/Zurich", "2024-03-30 12:00", "2024-04-01 12:00",
     ["2024-03-31 03:00 CEST", "2024-04-01 02:30 CEST"]),
    # fall back in Zurich (03:00 -> 02:00 on 2024-10-27): a daily 02:30 runs once, not twice
    ("30 2 * * *", "Europe/Zurich", "2024-10-26 12:00", "2024-10-27 12:00", ["2024-10-27 02:30 CEST"]),
    # ... while an every-30-minutes job runs through both 02:xx hours
    ("*/30 2 * * *", "Europe/Zurich", "2024-10-27 01:59", "2024-10-27 03:01",
     ["2024-10-27 02:00 CEST", "2024-10-27 02:30 CEST", "2024-10-27 02:00 CET", "2024-10-27 02:30 CET"]),
])
def test_due_times_are_wall_clock_times_of_the_tasks_zone(schedule: str, zone: str, after: str, until: str,
                                                          expected: list[str]) -> None:
    times = due_times(schedule, zone, at(after, zone), at(until, zone), limit=100)
    assert [local(t, zone) for t in times] == expected


@settings(max_examples=60, deadline=None)
@given(start=st.integers(min_value=1_700_000_000, max_value=1_800_000_000), span=st.integers(min_value=0,
                                                                                            max_value=86_400),
       zone=st.sampled_from(["UTC", "Asia/Shanghai", "Europe/Zurich", "America/New_York"]))
def test_splitting_a_window_in_two_decides_the_same_times(start: int, span: int, zone: str) -> None:
    """Level-triggered: two passes over (a, m] and (m, b] see exactly the times one pass over (a, b] sees."""
    middle = start + span // 2
    whole = due_times("*/7 * * * *", zone, start, start + span, limit=10_000)
    halves = (due_times("*/7 * * * *", zone, start, middle, limit=10_000)
              + due_times("*/7 * * * *", zone, middle, start + span, limit=10_000))
    assert whole == halves
    assert all(start < t <= start + span for t in whole)


# --- one controller pass -----------------------------------------------------------------------------------------
T0 = at("2024-05-01 10:00")
MIN = 60.0


@pytest.mark.parametrize(("fields", "considered", "now", "active", "run", "skipped", "replace", "missed"), [
    # nothing due yet
    ({}, T0, T0 + 4 * MIN, 0, None, None, False, 0),
    # one time due, just now: it runs
    ({}, T0, T0 + 5 * MIN + 1, 0, T0 + 5 * MIN, None, False, 0),
    # due 50 s ago with a 60 s deadline: still runs
    ({"startingDeadlineSeconds": 60}, T0, T0 + 5 * MIN + 50, 0, T0 + 5 * MIN, None, False, 0),
    # due 70 s ago with a 60 s deadline: missed, recorded, not run
    ({"startingDeadlineSeconds": 60}, T0, T0 + 5 * MIN + 70, 0, None, None, False, 1),
    # down for 22 minutes without a deadline: the newest runs once, the three before it are missed
    ({}, T0, T0 + 22 * MIN, 0, T0 + 20 * MIN, None, False, 3),
    # Forbid with an active run: the due time is skipped
    ({"concurrencyPolicy": "Forbid"}, T0, T0 + 5 * MIN + 1, 1, None, T0 + 5 * MIN, False, 0),
    # Allow: it runs beside the active one
    ({"concurrencyPolicy": "Allow"}, T0, T0 + 5 * MIN + 1, 1, T0 + 5 * MIN, None, False, 0),
    # Replace: the active run's unclaimed shards go, the new run starts
    ({"concurrencyPolicy": "Replace"}, T0, T0 + 5 * MIN + 1, 2, T0 + 5 * MIN, None, True, 0),
    # Replace with nothing active replaces nothing
    ({"concurrencyPolicy": "Replace"}, T0, T0 + 5 * MIN + 1, 0, T0 + 5 * MIN, None, False, 0),
    # suspended: nothing runs, nothing is recorded, the mark moves (resuming starts no backlog)
    ({"suspend": True}, T0, T0 + 30 * MIN, 0, None, None, False, 0),
])
def test_one_pass_decides_the_due_times(fields: dict[str, Any], considered: float, now: float, active: int,
                                        run: float | None, skipped: float | None, replace: bool, missed: int) -> None:
    decision = decide_tick(spec(**fields), considered, now, active)
    assert (decision.run, decision.skipped, decision.replace, decision.missed_count) == (run, skipped, replace, missed)
    assert decision.considered_until == now


def test_a_second_pass_at_the_same_moment_decides_nothing_new() -> None:
    """What a pass decided is behind the mark it writes: run twice (a crash after the commit), nothing repeats."""
    first = decide_tick(spec(), T0, T0 + 5 * MIN + 1, 0)
    again = decide_tick(spec(), first.considered_until, T0 + 5 * MIN + 1, 1)
    assert first.run == T0 + 5 * MIN and (again.run, again.skipped, again.missed_count) == (None, None, 0)


def test_a_long_outage_lists_only_the_newest_missed_times_and_counts_them_all() -> None:
    decision = decide_tick(spec(schedule="* * * * *", startingDeadlineSeconds=30), T0, T0 + 1000 * MIN + 45, 0)
    assert decision.run is None and decision.missed_count == 1000
    assert len(decision.missed) == MISSED_LISTED and decision.missed[-1] == T0 + 1000 * MIN


# --- runs and shards ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("states", "expected"), [
    ([], "pending"),
    (["pending", "pending"], "pending"),
    (["claimed", "pending"], "running"),
    (["succeeded", "pending"], "running"),
    (["succeeded", "succeeded"], "succeeded"),
    (["succeeded", "failed"], "failed"),
    (["succeeded", "cancelled"], "failed"),
])
def test_a_runs_state_follows_its_shards(states: list[str], expected: str) -> None:
    assert run_state(states).value == expected


def test_the_idempotency_key_names_task_run_and_shard() -> None:
    assert idempotency_key("replenish-batch", 12, 3) == "replenish-batch/12/3"


@pytest.mark.parametrize(("status", "again"), [(None, True), (500, True), (503, True), (404, False), (200, False),
                                               (409, False)])
def test_connection_errors_and_5xx_are_attempted_again(status: int | None, again: bool) -> None:
    assert retryable(status) is again


def test_the_lease_outlasts_every_attempt() -> None:
    s = spec(timeoutSeconds=30, retries=2)
    assert s.lease_seconds() > 3 * 30 + 2 * 2
