"""Lossless releases end to end: continuous load through the gateway and east-west, zero failed requests.

The lossless issue's promise on the real platform: a front app exposed through the gateway calls a back app
through its sidecar; a client app's sidecars carry east-west load to both. 10 instances each over two
cells, the demo app's realistic latency (a fifth of the requests take 100-500 ms), keep-alive connections.
While the load runs, each app is released through all its groups in each upgrade mode (in place, ordered,
replace) and rolled back mid-release; every request must succeed (no non-2xx, reset or timeout).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ballast.loadgen import BackgroundLoad, Load, Target, percentile
from tests.e2e.conftest import Platform, eventually, start_platform
from tests.e2e.test_releases import DEMO_APP, Api, phase_is, wait_release, wait_steady

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.91.2"
FIVE_EACH = {"cell-a": 5, "cell-b": 5}
HEALTH = {"path": "/healthz", "periodSeconds": 5, "timeoutSeconds": 1}
MIN_REQUESTS = 100_000   # the floor for a verdict
Item = dict[str, Any]


def manifest(app: str, greeting: str, **spec: Any) -> Item:
    env = {"GREETING": greeting, **spec.pop("env", {})}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": app},
            "spec": {"cells": spec.pop("cells", FIVE_EACH), **spec,
                     "template": {"artifact": "./", "command": ["python3", "app.py"], "env": env,
                                  "healthCheck": HEALTH, "gracePeriodSeconds": 5}}}


def front(greeting: str) -> Item:
    return manifest("front", greeting, expose={"host": "front.local", "path": "/"},
                    env={"DEMO_CALL_SERVICE": "back", "DEMO_LATENCY_PROFILE": "realistic"},
                    strategy={"pause": "none", "maxUnavailablePerCell": 2})


def back(greeting: str) -> Item:
    return manifest("back", greeting, env={"DEMO_LATENCY_PROFILE": "realistic"},
                    strategy={"pause": "none", "upgrade": "ordered"})


def client() -> Item:
    return manifest("client", "v1", cells={"cell-a": 1, "cell-b": 1})


class Apps:
    def __init__(self, platform: Platform, directory: Path) -> None:
        self.platform, self.directory, self.api = platform, directory, Api(platform)

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


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("lossless"), FIRST_IP)


@pytest.fixture(scope="module")
def apps(platform: Platform) -> Apps:
    directory = platform.root / "apps"
    directory.mkdir()
    shutil.copy(DEMO_APP, directory / "app.py")
    apps = Apps(platform, directory)
    apps.apply(back("v1"), front("v1"), client())
    for app, count in (("back", 10), ("front", 10), ("client", 2)):
        wait_steady(apps.api, app, count, 1, timeout=120)
    for app in ("back", "front"):
        eventually(lambda app=app: _all_serving(apps.api, app), f"every endpoint of {app} acknowledged everywhere")
    return apps


def _all_serving(api: Api, app: str) -> None:
    eps = api.get(f"/v1/apps/{app}/endpoints")["items"]
    assert len(eps) == 10 and all(e["status"]["state"] == "ready" and not e["status"]["pending"] for e in eps), \
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


def test_releases_and_rollbacks_under_load_lose_no_request(platform: Platform, apps: Apps) -> None:
    api = apps.api
    targets_used = targets(platform, api)
    with BackgroundLoad(targets_used) as load:
        time.sleep(3)  # steady state, for the latency baseline
        steady_until = time.monotonic()

        mark = _Marks(load)
        apps.apply(front("v2"))
        apps.release("front", "--upgrade", "inPlace")
        wait_release(api, "front", "in place to revision 2", phase_is("Succeeded"), timeout=180)
        mark("front in place")

        apps.apply(back("v2"))
        apps.release("back")  # ordered, from the highest ordinal down
        wait_release(api, "back", "ordered to revision 2", phase_is("Succeeded"), timeout=240)
        mark("back ordered")

        apps.apply(front("v3"))
        apps.release("front", "--upgrade", "replace")
        wait_release(api, "front", "replace to revision 3", phase_is("Succeeded"), timeout=180)
        mark("front replace")

        apps.apply(back("v3"))
        apps.release("back", "--upgrade", "inPlace", "--pause", "manual")
        wait_release(api, "back", "beta done, paused", phase_is("Paused", 1), timeout=120)
        platform.cli("release", "resume", "back")
        eventually(lambda: _some_changed_in_group_1(api), "group-1 of back under way", timeout=60)
        platform.cli("release", "rollback", "back")
        wait_release(api, "back", "rolled back to revision 2", phase_is("RolledBack"), timeout=180)
        mark("back rolled back inside group-1")

        apps.apply(front("v4"))
        apps.release("front", "--upgrade", "replace", "--pause", "manual")
        wait_release(api, "front", "beta done, paused", phase_is("Paused", 1), timeout=120)
        platform.cli("release", "rollback", "front")
        wait_release(api, "front", "rolled back to revision 3", phase_is("RolledBack"), timeout=180)
        mark("front rolled back after beta")

        # The floor of requests counts only what was sent while releases ran: release again until it is reached.
        for revision in range(5, 9):
            if load.window(since=steady_until).requests >= MIN_REQUESTS:
                break
            apps.apply(front(f"v{revision}"))
            apps.release("front", "--upgrade", "inPlace")
            wait_release(api, "front", f"in place to revision {revision}", phase_is("Succeeded"), timeout=180)
            mark(f"front in place to revision {revision}")
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
    assert released.requests >= MIN_REQUESTS, f"{released.requests} requests sent while releases ran"
    assert all(t.requests > 1000 for t in load.tallies.values()), {k: t.requests for k, t in load.tallies.items()}

    # What front runs now: the release it ended with decides (a retired instance of a rolled-back replacement may
    # still be listed at the newer revision for a moment).
    wait_steady(api, "front", 10, api.app("front")["status"]["deployedRevision"])
    wait_steady(api, "back", 10, 2)
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
