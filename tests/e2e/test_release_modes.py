"""Release modes end to end: replace (surge, then retire), ordered (one identity at a time, highest ordinal
first, data dir kept) and a release that stops itself when revision 2 fails its health check or crashes.

Same harness as test_releases.py (one platform for the module, every app applied at revision 1 and 2 up
front, one app per test, dense sampling over the CLI's own HTTP endpoints).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import pytest

from tests.e2e.conftest import Platform, proc_environ, start_platform
from tests.e2e.test_releases import (Deployed, Item, Sampler, app_spec, assert_kept_placement, assert_rolled_back,
                                     assert_serving, assert_untouched, by_id, changing, deploy, group_members, live,
                                     name, phase_is, starts, steady_at, summary, wait_release, wait_steady)

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.42.2"
ORDERED = {"upgrade": "ordered"}
CRASHING = ["python3", "-c", "import sys; sys.exit(3)"]
APPS: dict[str, tuple[Item, Item]] = {
    "replace": (app_spec(), app_spec(greeting="v2")),
    "shop": (app_spec(replicas=4, strategy=ORDERED), app_spec(replicas=4, strategy=ORDERED, greeting="v2")),
    "unhealthy": (app_spec(), app_spec(greeting="v2", env={"DEMO_UNHEALTHY": "1"})),
    "crashing": (app_spec(), app_spec(greeting="v2", command=CRASHING)),
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("release-modes"), FIRST_IP)


@pytest.fixture(scope="module")
def env(platform: Platform) -> Deployed:
    return deploy(platform, platform.root, APPS)


def test_replace_mode_surges_a_new_instance_per_slot_in_its_cell_and_retires_the_old(env: Deployed) -> None:
    """upgrade replace, pause none: every instance is replaced by a new id in the same cell, the old ones are
    gone at the end, 10 remain, and ready capacity never drops below 10 while it runs."""
    d, app = env, "replace"
    old = d.initial[app]
    with Sampler(d.api, app) as sampler:
        d.platform.cli("release", "start", app, "--upgrade", "replace", "--pause", "none",
                       "--max-unavailable-per-cell", "1")
        wait_release(d.api, app, "Succeeded", phase_is("Succeeded"), timeout=90)
    # Replace surges: it creates the new instance first and retires the old one (desired → deleted) only after
    # the new one is ready, so the ready, meant-to-run instances never drop below 10 - stricter than the
    # 10 - maxUnavailablePerCell x cells = 8 an in-place release may dip to.
    ready_counts = [sum(1 for i in live(sample) if i["status"]["ready"]) for sample in sampler.samples]
    assert min(ready_counts) >= 10, (min(ready_counts), ready_counts)
    assert max(len(live(sample)) for sample in sampler.samples) > 10, "replace should surge above 10"
    for sample in sampler.samples:
        busy = Counter(i["status"]["cell"] for i in sample if changing(i))
        assert all(n <= 1 for n in busy.values()), (busy, summary(sample))

    status = d.api.release(app)
    slots = [s for g in status["groups"] for s in g["instances"]]
    assert sorted(s["slot"] for s in slots) == sorted(old)
    now = wait_steady(d.api, app, 10, 2)  # the retired ones disappear once their agent has stopped them
    assert sorted(s["instance"] for s in slots) == sorted(now), "each slot's holder is one of the 10 now running"
    assert not set(now) & set(old), "every instance has a new id"
    for s in slots:
        assert now[s["instance"]]["status"]["cell"] == old[s["slot"]]["status"]["cell"] == s["cell"], s
        assert s["state"] == "done", s
    assert Counter(i["status"]["cell"] for i in now.values()) == {"cell-a": 5, "cell-b": 5}
    for item in now.values():
        assert starts(d.platform, item) == [2], (name(item), starts(d.platform, item))
        assert_serving(item, 2)
    for i, item in old.items():
        assert not _same_process(item), f"{i}'s process still runs"


def _same_process(item: Item) -> bool:
    """Whether the pid recorded for `item` still belongs to that instance's process (not a reused pid)."""
    try:
        return proc_environ(item["status"]["pid"]).get("BALLAST_INSTANCE_ID") == name(item)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def test_ordered_mode_updates_one_identity_at_a_time_from_the_highest_ordinal(env: Deployed) -> None:
    """upgrade ordered, 4 replicas shop-0..shop-3: shop-3, shop-2, shop-1, shop-0 in turn, never two away from
    revision 1 unfinished at once, each keeping its identity and data dir (both starts in its starts.log)."""
    d, app = env, "shop"
    assert sorted(d.initial[app]) == ["shop-0", "shop-1", "shop-2", "shop-3"]
    plan = d.cli_json("release", "plan", app, "--groups", "1", "--pause", "none")
    assert [s["instance"] for s in plan["groups"][0]["slots"]] == ["shop-3", "shop-2", "shop-1", "shop-0"]
    with Sampler(d.api, app, period=0.02) as sampler:
        d.platform.cli("release", "start", app, "--groups", "1", "--pause", "none")
        wait_release(d.api, app, "Succeeded", phase_is("Succeeded"))

    reached: list[str] = []
    for sample in sampler.samples:
        assert len(sample) == 4 and {name(i) for i in sample} == set(d.initial[app]), summary(sample)
        left_1 = [i for i in sample if not steady_at(i, 1)]       # no longer settled at the old revision
        unfinished = [i for i in left_1 if not steady_at(i, 2)]
        assert len(unfinished) <= 1, summary(sample)
        reached += sorted((name(i) for i in left_1 if steady_at(i, 2) and name(i) not in reached), reverse=True)
    assert reached == ["shop-3", "shop-2", "shop-1", "shop-0"], reached

    now = wait_steady(d.api, app, 4, 2)
    assert_kept_placement(d, app, now)
    for item in now.values():
        assert starts(d.platform, item) == [1, 2], (name(item), starts(d.platform, item))
        assert_serving(item, 2)


@pytest.mark.parametrize("app", ["unhealthy", "crashing"])
def test_a_failing_revision_pauses_the_release_in_the_beta_group_and_rollback_restores_it(
        env: Deployed, app: str) -> None:
    """Revision 2 answers 503 on /healthz (or exits at once): the release pauses itself in the beta group with a
    reason naming the failing instance, nothing outside the beta group changes, and rollback → RolledBack."""
    d = env
    d.platform.cli("release", "start", app, "--pause", "manual")
    paused = wait_release(d.api, app, "paused by its own failure", phase_is("Paused", 0))
    beta = group_members(paused)["beta"]
    failing = {"unhealthy": "Unhealthy", "crashing": "BackOff"}[app]
    named = [i for i in beta if f"instance {i} is {failing} at revision 2" in paused["reason"]]
    assert paused["reason"].startswith("beta: ") and len(named) == 1, paused["reason"]
    assert "never continued on failure" in paused["reason"], paused["reason"]
    failed = [s for g in paused["groups"] for s in g["instances"] if s["state"] == "failed"]
    assert {s["slot"] for s in failed} <= beta, failed  # (a crash-looping one may be between restarts: not listed)

    now = by_id(d.api.instances(app))
    assert_untouched(d, app, set(now) - beta, now)
    out = d.platform.cli("release", "rollback", app).stdout
    assert "Paused → RollingBack" in out, out
    now = assert_rolled_back(d, app, paused["id"])
    assert_untouched(d, app, set(now) - beta, now)
    for i in beta:
        revisions = starts(d.platform, now[i])
        assert revisions[0] == 1 and revisions[-1] == 1 and set(revisions) <= {1, 2}, (i, revisions)
    assert d.api.app(app)["status"]["deployedRevision"] == 1
