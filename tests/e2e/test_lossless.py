"""Lossless releases end to end: continuous load through the gateway and east-west, zero failed requests.

The lossless issue's promise on the real platform: a front app exposed through the gateway calls a back app
through its sidecar; a client app's sidecars carry east-west load to both. 10 instances each over two
cells, the demo app's realistic latency (a fifth of the requests take 100-500 ms), keep-alive connections.
While the load runs, each app is released through all its groups in each upgrade mode (in place, ordered,
replace) and rolled back mid-release; every request must succeed (no non-2xx, reset or timeout).
test_lossless_postgres.py runs the same body on PostgreSQL, smaller.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from ballast.loadgen import BackgroundLoad, Load, Target, percentile
from tests.e2e.conftest import Platform, eventually, start_platform
from tests.e2e.test_releases import DEMO_APP, Api, phase_is, wait_release, wait_steady

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.91.2"
HEALTH = {"path": "/healthz", "periodSeconds": 5, "timeoutSeconds": 1}
MIN_REQUESTS = 100_000   # the floor for a verdict
Item = dict[str, Any]


def manifest(app: str, greeting: str, per_cell: int = 5, **spec: Any) -> Item:
    env = {"GREETING": greeting, **spec.pop("env", {})}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": app},
            "spec": {"cells": spec.pop("cells", {"cell-a": per_cell, "cell-b": per_cell}), **spec,
                     "template": {"artifact": "./", "command": ["python3", "app.py"], "env": env,
                                  "healthCheck": HEALTH, "gracePeriodSeconds": 5}}}


def front(greeting: str, per_cell: int = 5) -> Item:
    return manifest("front", greeting, per_cell, expose={"host": "front.local", "path": "/"},
                    env={"DEMO_CALL_SERVICE": "back", "DEMO_LATENCY_PROFILE": "realistic"},
                    strategy={"pause": "none", "maxUnavailablePerCell": 2})


def back(greeting: str, per_cell: int = 5) -> Item:
    return manifest("back", greeting, per_cell, env={"DEMO_LATENCY_PROFILE": "realistic"},
                    strategy={"pause": "none", "upgrade": "ordered"})


def client() -> Item:
    return manifest("client", "v1", cells={"cell-a": 1, "cell-b": 1})


class Apps:
    def __init__(self, platform: Platform, directory: Path, per_cell: int = 5) -> None:
        self.platform, self.directory, self.api, self.per_cell = platform, directory, Api(platform), per_cell

    def apply(self, *docs: Item) -> None:
        files = []
        for doc in docs:
            path = self.directory / f"{doc['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            files += ["-f", str(path)]
        self.platform.cli("apply", *files)

    def release(self, app: str, *flags: str) -> int:
        self.platform.cli("release", "start", app, *flags)
        return int(self.api.release(app)["id"])


# --- the releases run under load, in this order: each applies a new revision and releases (or rolls back) it ----
def _front_in_place(apps: Apps) -> None:
    apps.apply(front("v2", apps.per_cell))
    apps.release("front", "--upgrade", "inPlace")
    wait_release(apps.api, "front", "in place to revision 2", phase_is("Succeeded"), timeout=180)


def _back_ordered(apps: Apps) -> None:
    apps.apply(back("v2", apps.per_cell))
    apps.release("back")  # ordered, from the highest ordinal down
    wait_release(apps.api, "back", "ordered to revision 2", phase_is("Succeeded"), timeout=240)


def _front_replace(apps: Apps) -> None:
    apps.apply(front("v3", apps.per_cell))
    apps.release("front", "--upgrade", "replace")
    wait_release(apps.api, "front", "replace to revision 3", phase_is("Succeeded"), timeout=180)


def _back_rolled_back_inside_group_1(apps: Apps) -> None:
    before = apps.api.app("back")["status"]["deployedRevision"]
    apps.apply(back("v3", apps.per_cell))
    apps.release("back", "--upgrade", "inPlace", "--pause", "manual")
    wait_release(apps.api, "back", "beta done, paused", phase_is("Paused", 1), timeout=120)
    apps.platform.cli("release", "resume", "back")
    eventually(lambda: _some_changed_in_group_1(apps.api), "group-1 of back under way", timeout=60)
    apps.platform.cli("release", "rollback", "back")
    wait_release(apps.api, "back", f"rolled back to revision {before}", phase_is("RolledBack"), timeout=180)
    wait_steady(apps.api, "back", 2 * apps.per_cell, before)


def _front_rolled_back_after_beta(apps: Apps) -> None:
    apps.apply(front("v4", apps.per_cell))
    apps.release("front", "--upgrade", "replace", "--pause", "manual")
    wait_release(apps.api, "front", "beta done, paused", phase_is("Paused", 1), timeout=120)
    apps.platform.cli("release", "rollback", "front")
    wait_release(apps.api, "front", "rolled back", phase_is("RolledBack"), timeout=180)


STEPS: dict[str, Callable[[Apps], None]] = {
    "front in place": _front_in_place,
    "back ordered": _back_ordered,
    "front replace": _front_replace,
    "back rolled back inside group-1": _back_rolled_back_inside_group_1,
    "front rolled back after beta": _front_rolled_back_after_beta,
}


@dataclass(frozen=True)
class Scale:
    """How big the run is: instances per cell of front and back, the releases run under load (names in STEPS, in
    order), and the floor of requests sent while releases ran (front is released again in place until it is met)."""

    per_cell: int = 5
    steps: tuple[str, ...] = tuple(STEPS)
    min_requests: int = MIN_REQUESTS


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("lossless"), FIRST_IP)


@pytest.fixture(scope="module")
def scale() -> Scale:
    return Scale()


@pytest.fixture(scope="module")
def apps(platform: Platform, scale: Scale) -> Apps:
    directory = platform.root / "apps"
    directory.mkdir()
    shutil.copy(DEMO_APP, directory / "app.py")
    apps = Apps(platform, directory, scale.per_cell)
    apps.apply(back("v1", scale.per_cell), front("v1", scale.per_cell), client())
    count = 2 * scale.per_cell
    for app, n in (("back", count), ("front", count), ("client", 2)):
        wait_steady(apps.api, app, n, 1, timeout=120)
    for app in ("back", "front"):
        eventually(lambda app=app: _all_serving(apps.api, app, count), f"every endpoint of {app} acknowledged everywhere")
    return apps


def _all_serving(api: Api, app: str, count: int) -> None:
    eps = api.get(f"/v1/apps/{app}/endpoints")["items"]
    assert len(eps) == count and all(e["status"]["state"] == "ready" and not e["status"]["pending"] for e in eps), \
        [(e["metadata"]["name"], e["status"]["state"], e["status"]["pending"]) for e in eps]


def targets(platform: Platform, api: Api) -> list[Target]:
    """North-south through the gateway, and east-west through the client app's sidecars."""
    gateway = Target("gateway", "127.0.0.1", platform.gateway_port, "front.local", ("/call", "/", "/call"), 48)
    mesh = [i["status"]["meshUrl"] for i in api.instances("client")]
    out = [gateway]
    for k, url in enumerate(sorted(mesh)):
        ip, port = url.removeprefix("http://").split(":")
        service = "back" if k == 0 else "front"
        paths = ("/",) if service == "back" else ("/", "/call")
        out.append(Target(f"east-west→{service}", ip, int(port), service, paths, 16))
    return out


def test_releases_and_rollbacks_under_load_lose_no_request(platform: Platform, apps: Apps, scale: Scale) -> None:
    api = apps.api
    targets_used = targets(platform, api)
    with BackgroundLoad(targets_used) as load:
        time.sleep(3)  # steady state, for the latency baseline
        steady_until = time.monotonic()

        mark = _Marks(load)
        for step in scale.steps:
            STEPS[step](apps)
            mark(step)

        # The floor of requests counts only what was sent while releases ran: release again until it is reached.
        for revision in range(5, 15):   # at most ten more: a slow machine sends fewer requests a release
            if load.window(since=steady_until).requests >= scale.min_requests:
                break
            apps.apply(front(f"v{revision}", scale.per_cell))
            apps.release("front", "--upgrade", "inPlace")
            wait_release(api, "front", f"in place to greeting v{revision}", phase_is("Succeeded"), timeout=180)
            mark(f"front in place to greeting v{revision}")
        released_until = time.monotonic()
        alive, started = load.workers_alive, load.workers_started

    steady = load.latencies(until=steady_until)
    during = load.latencies(since=steady_until, until=released_until)
    print(f"\nlossless: {load.requests} requests ({load.window(until=steady_until).requests} of them warm-up), "
          f"{load.failed} failed; steady p50/p99 "
          f"{percentile(steady, .5) * 1000:.0f}/{percentile(steady, .99) * 1000:.0f} ms, during releases "
          f"{percentile(during, .5) * 1000:.0f}/{percentile(during, .99) * 1000:.0f} ms")
    connections = sum(t.connections for t in targets_used)
    assert alive == started == connections, f"{started - alive} of {connections} load workers ended early"
    assert load.failed == 0, (f"{load.failed} of {load.requests} requests failed: {dict(load.failures())}; "
                              f"answers: {load.evidence()}")
    released = load.window(since=steady_until, until=released_until)
    assert released.requests >= scale.min_requests, f"{released.requests} requests sent while releases ran"
    assert all(t.requests > 1000 for t in load.tallies.values()), {k: t.requests for k, t in load.tallies.items()}

    # What each app runs now: the release it ended with decides (a retired instance of a rolled-back replacement
    # may still be listed at the newer revision for a moment).
    count = 2 * scale.per_cell
    for app in ("front", "back"):
        wait_steady(api, app, count, api.app(app)["status"]["deployedRevision"])
    drains = [i["status"]["lastDrain"] for app in ("front", "back") for i in api.instances(app)]
    assert not [d for d in drains if d and d["timedOut"]], drains


class _Marks:
    """Prints how long each step took and how many requests it saw (pytest -s shows them)."""

    def __init__(self, load: Load) -> None:
        self.load, self.at, self.count = load, time.monotonic(), load.requests

    def __call__(self, what: str) -> None:
        now, count = time.monotonic(), self.load.requests
        print(f"\n  {what}: {now - self.at:.1f}s, {count - self.count} requests, {self.load.failed} failed so far")
        self.at, self.count = now, count


def _some_changed_in_group_1(api: Api) -> None:
    status = api.release("back")
    group_1 = status["groups"][1]["cells"]
    assert sum(c["done"] + c["in progress"] for c in group_1.values()) >= 1, group_1
