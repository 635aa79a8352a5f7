"""Spec of the request-statistics collector: totals per series across proxy restarts, revisions and windows.

Proxies are stood in for by readers returning scripted (epoch, counts); time is a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ballast.core.request_metrics import Counts, Series
from ballast.dataplane.collector import RequestStats
from ballast.dataplane.runtime import RuntimeApiError

STARTED = 1000.0


@dataclass
class Clock:
    now: float = STARTED

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProxy:
    """One proxy worker's counters, as `ballast stats` would report them."""

    epoch: str
    requests: int = 0
    failing: bool = False
    calls: list[str] = field(default_factory=list)

    async def read(self) -> tuple[str, dict[str, Counts]]:
        if self.failing:
            raise RuntimeApiError("sidecar is not running")
        return self.epoch, {"": Counts(requests=self.requests)}


def series(revision: int, instance: str = "shop-1") -> Series:
    return Series("shop", instance, revision, "cell-a", "node-a1")


def make(clock: Clock, proxy: FakeProxy, revision: list[int]) -> RequestStats:
    stats = RequestStats("node-a1", interval=1.0, history_seconds=60, retention_seconds=120, clock=clock)
    stats.add("shop-1", proxy.read, lambda _key: series(revision[0]))
    return stats


def requests(stats: RequestStats) -> dict[int, int]:
    return {s.revision: c.requests for s, c in stats.totals().items()}


async def test_a_worker_started_after_the_collector_is_counted_from_zero() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 0.5:.6f}", requests=7)
    stats = make(clock, proxy, [1])
    await stats.poll_all()
    assert requests(stats) == {1: 7}


async def test_a_worker_already_running_is_taken_as_it_is() -> None:
    """What it counted before this process watched is not attributed to anything."""
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED - 60:.6f}", requests=500)
    stats = make(clock, proxy, [1])
    await stats.poll_all()
    assert requests(stats) == {}
    proxy.requests = 520
    await stats.poll_all()
    assert requests(stats) == {1: 20}


async def test_a_reload_or_restart_starts_a_new_count_that_is_added_whole() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 1:.6f}", requests=100)
    stats = make(clock, proxy, [1])
    await stats.poll_all()
    proxy.epoch, proxy.requests = f"{STARTED + 5:.6f}", 30
    await stats.poll_all()
    assert requests(stats) == {1: 130}


async def test_requests_after_a_revision_change_count_for_the_new_revision() -> None:
    clock, proxy, revision = Clock(), FakeProxy(epoch=f"{STARTED + 1:.6f}"), [1]
    stats = make(clock, proxy, revision)
    proxy.requests = 40
    await stats.poll("shop-1")      # the agent reads once more when the old revision has drained
    revision[0] = 2
    proxy.requests = 55
    await stats.poll_all()
    assert requests(stats) == {1: 40, 2: 15}


async def test_a_window_is_what_each_series_served_in_the_last_seconds() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 0.1:.6f}")
    stats = make(clock, proxy, [1])
    for second in range(1, 31):
        clock.now = STARTED + second
        proxy.requests = 10 * second
        await stats.poll_all()
    covered, recent = stats.window(10)
    assert covered == 10 and recent[series(1)].requests == 100
    covered, recent = stats.window(500)           # more than the history holds: all it holds
    assert covered == 30 and recent[series(1)].requests == 300


async def test_a_young_collector_answers_a_window_with_everything_since_it_started() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 0.1:.6f}", requests=9)
    stats = make(clock, proxy, [1])
    clock.now = STARTED + 3
    await stats.poll_all()
    covered, recent = stats.window(30)
    assert covered == 3 and recent[series(1)].requests == 9


async def test_a_removed_probe_keeps_its_totals_for_the_retention_then_they_go() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 0.1:.6f}", requests=5)
    stats = make(clock, proxy, [1])
    await stats.poll_all()
    stats.remove("shop-1")
    clock.now = STARTED + 100
    await stats.poll_all()
    assert requests(stats) == {1: 5}
    clock.now = STARTED + 200
    await stats.poll_all()
    assert requests(stats) == {}


async def test_a_failing_reading_is_counted_and_named_and_changes_no_total() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 0.1:.6f}", requests=5)
    stats = make(clock, proxy, [1])
    await stats.poll_all()
    proxy.failing = True
    await stats.poll_all()
    assert stats.read_errors == 1 and "not running" in stats.last_errors["shop-1"]
    assert requests(stats) == {1: 5}
    proxy.failing, proxy.requests = False, 8
    await stats.poll_all()
    assert requests(stats) == {1: 8} and not stats.last_errors


async def test_the_json_answer_filters_by_app_and_carries_the_epoch() -> None:
    clock, proxy = Clock(), FakeProxy(epoch=f"{STARTED + 0.1:.6f}", requests=5)
    stats = make(clock, proxy, [1])
    await stats.poll_all()
    body = stats.to_json("shop", 30)
    assert body["epoch"] == stats.epoch and body["source"] == "node-a1"
    assert [(s["instance"], s["revision"], s["total"]["requests"]) for s in body["series"]] == [("shop-1", 1, 5)]
    assert stats.to_json("other")["series"] == []
