"""Business units end to end: the real `ballast up`, real HAProxy sidecars and gateway, demo apps in a chain.

U → A → B, each call through the caller's sidecar (the demo app forwards /pay, /replenish and /stress
downstream with the same path, and answers with what the next one answered, so every answer names the
instance and group of A and B that served it). A and B have isolation groups of unit `vostro`; a ColoringRule
at U marks /replenish calls `biz=replenish` and one TrafficRule routes them from U into A's group; A's group
keeps them in the unit by itself (self-convergence). B denies stress-test calls to its default instances.

Every change is awaited as a fact (`inEffect`: each traffic component acknowledged it; endpoints ready and
acknowledged), never with a sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import urllib.error
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from ballast.cli.packaging import stage_demo
from tests.e2e.conftest import Platform, eventually, http_get_json, start_platform
from tests.e2e.test_releases import HEALTH, phase_is, wait_release
from tests.e2e.test_scheduled_tasks import _server_pid
from tests.e2e.test_traffic_rules import Deployed as RulesDeployed
from tests.e2e.test_traffic_rules import binomial_interval

pytestmark = pytest.mark.e2e
FIRST_IP = "127.0.173.2"
CHAIN_PATHS = "/pay,/replenish,/stress"
TASK_MS = "2000"   # a task call takes this long at A: a kill of the control plane lands while calls are in flight
SHARDS = 8
Item = dict[str, Any]


def app(name: str, replicas: int, greeting: str = "v1", **extra: Any) -> Item:
    env = {"GREETING": greeting, **extra.pop("env", {})}
    if "DEMO_CALL_SERVICE" in env:   # the last of the chain answers these paths itself
        env["DEMO_CALL_PATHS"] = CHAIN_PATHS
    spec: Item = {"replicas": replicas,
                  "template": {"artifact": "./", "command": ["python3", "app.py"], "env": env, "healthCheck": HEALTH,
                               "gracePeriodSeconds": 3},
                  # replace: make before break, so one instance per cell is enough for no call to fail
                  "strategy": {"betaSize": 1, "groups": 2, "pause": "none", "upgrade": "replace"}, **extra}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name}, "spec": spec}


def group(name: str, app_name: str, code: str, replicas: int, **spec: Any) -> Item:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "IsolationGroup", "metadata": {"name": name},
            "spec": {"app": app_name, "code": code, "replicas": replicas, **spec}}


def coloring(name: str, prefix: str, tags: dict[str, str]) -> Item:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "ColoringRule", "metadata": {"name": name},
            "spec": {"at": {"apps": ["u"]}, "match": {"pathPrefix": prefix}, "tags": tags}}


def replenish_rule(*extra_routes: Item, callers: tuple[str, ...] = ("u",)) -> Item:
    routes = [{"name": "replenish", "match": {"tags": {"biz": "replenish"}}, "to": [{"group": "vostro"}]},
              *extra_routes]
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "TrafficRule", "metadata": {"name": "a-replenish"},
            "spec": {"service": "a", "from": {"apps": list(callers)}, "routes": routes}}


class Deployed(RulesDeployed):
    """The traffic-rules module's applier (CLI `apply -f`), and what a change of units waits for."""

    def settled(self, groups: dict[str, int], rules: tuple[tuple[str, str], ...] = (), timeout: float = 120) -> None:
        """Each group has its size in ready endpoints and is in effect everywhere, every rule is in effect, and
        every endpoint of the chain's apps is acknowledged by every component that routes to it."""
        def check() -> None:
            listed = {g["name"]: g for g in self.api.get("/v1/isolationgroups")["items"]}
            for name, size in groups.items():
                g = listed.get(name)
                assert g is not None, f"no group {name}"
                assert g["inEffect"] and g["ready"] == size and g["instances"] == size, \
                    f"{name}: ready {g['ready']}/{size}, instances {g['instances']}, pending {g['pending']}"
            for kind, name in rules:
                state = self.api.get(f"/v1/{kind}/{name}")
                assert state["inEffect"], f"{kind}/{name} pending: {state['pending']}"
            for service in ("u", "a", "b"):
                for e in self.api.get(f"/v1/apps/{service}/endpoints")["items"]:
                    assert not e["status"]["pending"], f"{e['metadata']['name']} pending {e['status']['pending']}"
                instances = [i for i in self.api.instances(service) if i["spec"]["desired"] == "running"]
                assert all(i["status"]["ready"] for i in instances), f"{service} not all ready"
        eventually(check, f"groups {groups} settled", timeout)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("business-units"), FIRST_IP)


@pytest.fixture(scope="module")
def deployed(platform: Platform) -> Deployed:
    d = Deployed(platform, stage_demo(platform.root / "apps"))
    d.apply(app("u", 2, expose=[{"host": "u.local", "path": "/"}], env={"DEMO_CALL_SERVICE": "a"}),
            app("a", 2, env={"DEMO_CALL_SERVICE": "b", "DEMO_TASK_MS": TASK_MS}),
            app("b", 2, traffic={"stress": "deny"}),
            group("a-vostro", "a", "vostro", 2, stress=True),
            group("b-vostro", "b", "vostro", 2),
            coloring("u-replenish", "/replenish", {"biz": "replenish"}),
            coloring("u-stress", "/stress", {"stress": "true"}),
            replenish_rule())
    d.settled({"a-vostro": 2, "b-vostro": 2}, (("trafficrules", "a-replenish"), ("coloringrules", "u-replenish"),
                                                ("coloringrules", "u-stress")), timeout=180)
    return d


# --- calls ------------------------------------------------------------------------------------------------
@dataclass
class Served:
    """One answer through the chain: its status, and the group and revision of A and B that served it."""

    status: int
    a: tuple[str, str] | None = None     # (group, revision)
    b: tuple[str, str] | None = None
    text: str = ""


def _served(status: int, body: bytes) -> Served:
    try:
        answer = json.loads(body)
    except ValueError:
        return Served(status, text=body[:300].decode(errors="replace"))
    if status != 200:
        return Served(status, text=json.dumps(answer))
    a, b = answer["downstream"]["self"], answer["downstream"]["downstream"]
    return Served(status, (a["group"], a["revision"]), (b["group"], b["revision"]))


def _call(conn: http.client.HTTPConnection, port: int, path: str) -> tuple[http.client.HTTPConnection, Served]:
    for attempt in (1, 2):
        try:
            conn.request("GET", path, headers={"Host": "u.local"})
            r = conn.getresponse()
            return conn, _served(r.status, r.read())
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # a kept-alive connection the gateway closed while idle (its reload): every client sends again once
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def calls(platform: Platform, path: str, count: int, threads: int = 4) -> list[Served]:
    out: list[Served] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", platform.gateway_port, timeout=15)
        mine = []
        try:
            for _ in range(n):
                conn, served = _call(conn, platform.gateway_port, path)
                mine.append(served)
        finally:
            conn.close()
            with lock:
                out.extend(mine)
    workers = [threading.Thread(target=send, args=(count // threads + (i < count % threads),)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)
    assert len(out) == count, f"{len(out)} of {count} calls answered"
    return out


@dataclass
class Load:
    """Both kinds of call at once, until stopped: /pay (no color) and /replenish (the unit's)."""

    platform: Platform
    threads: int = 6
    answers: dict[str, list[Served]] = field(default_factory=lambda: {"/pay": [], "/replenish": []})
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.threads):
            self.workers.append(threading.Thread(target=self._run, args=("/pay" if i % 2 else "/replenish",)))
            self.workers[-1].start()

    def _run(self, path: str) -> None:
        port = self.platform.gateway_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        mine = self.answers[path]   # appended to as answers come (list.append is atomic), so progress is visible
        try:
            while not self.stop.is_set():
                conn, served = _call(conn, port, path)
                mine.append(served)
        except Exception as exc:  # noqa: BLE001 - a lost call is the test's finding, reported below
            self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def total(self) -> int:
        return sum(len(v) for v in self.answers.values())

    def reached(self, count: int) -> None:
        assert self.total() >= count or self.stop.is_set(), f"{self.total()} of {count} calls so far"

    def finish(self) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(60)


# --- the tests --------------------------------------------------------------------------------------------
def test_a_unit_keeps_its_calls_and_no_other_call_reaches_it_through_a_release_and_a_scale_out(
        deployed: Deployed) -> None:
    p, api = deployed.platform, deployed.api
    load = Load(p)
    load.start()
    try:
        eventually(lambda: load.reached(2000), "load under way", 120)
        # A release of A, its group's instances included, under both kinds of load.
        deployed.apply(app("a", 2, greeting="v2", env={"DEMO_CALL_SERVICE": "b", "DEMO_TASK_MS": TASK_MS}))
        p.cli("release", "start", "a")
        done = wait_release(api, "a", "released", phase_is("Succeeded"), timeout=240)
        assert done["toRevision"] == 2
        running = [i for i in api.instances("a") if i["spec"]["desired"] == "running"]
        assert sorted((i["spec"].get("group", ""), i["status"]["revision"]) for i in running) == \
            [("", 2), ("", 2), ("vostro", 2), ("vostro", 2)]
        # A scale-out of A's group under the same load.
        deployed.apply(group("a-vostro", "a", "vostro", 3, stress=True))
        deployed.settled({"a-vostro": 3, "b-vostro": 2}, timeout=180)
        # A group created and deleted under the same load: not one call of either kind reaches it.
        deployed.apply(group("a-night", "a", "night", 2))
        deployed.settled({"a-vostro": 3, "a-night": 2})
        p.cli("delete", "group", "a-night")

        def night_stopped() -> None:
            night = [i for i in api.instances("a") if i["spec"].get("group") == "night"]
            assert all(i["status"]["phase"] == "Stopped" for i in night), [i["status"]["phase"] for i in night]
        eventually(night_stopped, "a-night's instances drained and stopped", 120)
        eventually(lambda: load.reached(20_000), "at least 20,000 calls", 600)
    finally:
        load.finish()
    assert not load.errors, load.errors
    pay, replenish = load.answers["/pay"], load.answers["/replenish"]
    failed = [s for s in pay + replenish if s.status != 200]
    assert not failed, f"{len(failed)} of {load.total()} calls failed, e.g. {failed[:3]}"
    assert len(pay) + len(replenish) >= 20_000 and len(pay) > 1000 and len(replenish) > 1000
    untagged_in_unit = [s for s in pay if s.a is not None and s.b is not None and (s.a[0] or s.b[0])]
    tagged_outside = [s for s in replenish if s.a is not None and s.b is not None
                      and (s.a[0], s.b[0]) != ("vostro", "vostro")]
    assert not untagged_in_unit, f"{len(untagged_in_unit)} untagged calls reached a vostro instance"
    assert not tagged_outside, f"{len(tagged_outside)} replenish calls left the unit, e.g. {tagged_outside[:3]}"
    assert {s.a[1] for s in replenish if s.a} == {"1", "2"}, "the unit's instances of A were released too"


def test_stress_calls_reach_only_a_group_that_takes_them_and_a_share_goes_into_a_unit(deployed: Deployed) -> None:
    p = deployed.platform
    denied = calls(p, "/stress", 200)
    assert all(s.status != 200 for s in denied), "no group of B takes stress calls: every one fails closed"
    assert all("takes no stress-test calls" in s.text for s in denied), denied[:2]

    deployed.apply(group("b-perf", "b", "perf", 1, stress=True))
    deployed.settled({"b-perf": 1})
    served = calls(p, "/stress", 400)
    assert all(s.status == 200 for s in served), [s for s in served if s.status != 200][:3]
    assert Counter(s.b[0] for s in served if s.b) == {"perf": 400}, "B's production instances see no stress call"

    # 1/1000 of A's stress calls into its unit; B's stress group still takes every one of them.
    deployed.apply(replenish_rule({"name": "stress", "match": {"tags": {"stress": "true"}},
                                   "to": [{"weight": 999}, {"group": "vostro", "weight": 1}]}))
    deployed.settled({"b-perf": 1}, (("trafficrules", "a-replenish"),))
    n = 20_000
    served = calls(p, "/stress", n, threads=6)
    assert all(s.status == 200 for s in served), [s for s in served if s.status != 200][:3]
    in_unit = sum(1 for s in served if s.a and s.a[0] == "vostro")
    low, high = binomial_interval(n, 0.001)
    assert low <= in_unit <= high, f"{in_unit} of {n} stress calls into a-vostro, expected {low}..{high}"
    assert Counter(s.b[0] for s in served if s.b) == {"perf": n}


def test_strict_convergence_fails_closed_where_the_unit_has_no_group(deployed: Deployed) -> None:
    p = deployed.platform
    # B's group says strict and has no instance: the unit's calls fail, they never take B's default pool.
    deployed.apply(group("b-vostro", "b", "vostro", 0, convergence="strict"))
    deployed.settled({"b-vostro": 0})
    refused = calls(p, "/replenish", 200)
    assert all(s.status != 200 for s in refused), [s for s in refused if s.status == 200][:3]
    assert all("isolation group of unit vostro of b (convergence: strict)" in s.text for s in refused), refused[:2]
    assert all(s.status == 200 and s.b == ("", "1") for s in calls(p, "/pay", 200)), "other calls are unaffected"

    # A's group says strict and B has no group of the unit at all.
    p.cli("delete", "group", "b-vostro")
    deployed.apply(group("a-vostro", "a", "vostro", 3, stress=True, convergence="strict"))
    deployed.settled({"a-vostro": 3})
    refused = calls(p, "/replenish", 200)
    assert all(s.status != 200 and "has no isolation group of unit vostro" in s.text for s in refused), refused[:2]

    # prefer: the unit's calls take B's default pool where B has no group of the unit.
    deployed.apply(group("a-vostro", "a", "vostro", 3, stress=True))
    deployed.settled({"a-vostro": 3})
    served = calls(p, "/replenish", 200)
    assert all(s.status == 200 and s.a and s.a[0] == "vostro" and s.b and s.b[0] == "" for s in served), served[:3]


def test_a_scheduled_batch_lands_in_the_unit_and_a_control_plane_kill_loses_or_repeats_no_shard(
        deployed: Deployed) -> None:
    """The seeds' streaming task: the batch is colored biz=replenish, and the rule that routes U's replenishment
    into the unit routes the gateway's task calls there too."""
    p, api = deployed.platform, deployed.api
    task = {"apiVersion": "ballast.io/v1alpha1", "kind": "ScheduledTask", "metadata": {"name": "replenish-batch"},
            "spec": {"schedule": "0 3 * * *", "timeZone": "Asia/Shanghai",
                     "target": {"service": "a", "path": "/tasks/replenish", "method": "POST"}, "shards": SHARDS,
                     "tags": {"biz": "replenish"}, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 60,
                     "timeoutSeconds": 20, "retries": 2}}
    deployed.apply(replenish_rule(callers=("u", "gateway")), task)
    deployed.settled({"a-vostro": 3}, (("trafficrules", "a-replenish"),))
    out = p.cli("task", "run", "replenish-batch").stdout
    run_id = int(out.split("run ", 1)[1].split()[0])

    def get(path: str) -> Any:
        try:
            return api.get(path)
        except (OSError, urllib.error.URLError) as exc:   # the control plane is down: not yet, not an error
            raise AssertionError(f"GET {path}: {exc!r}") from None

    def in_flight() -> None:
        states = get(f"/v1/taskruns/{run_id}")["shardStates"]
        assert states.get("claimed") == SHARDS, states
    eventually(in_flight, "every shard claimed, its call in flight", timeout=20)
    pid = _server_pid(p)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def restarted() -> None:
        assert _server_pid(p) not in (None, pid), "no new control plane yet"
    eventually(restarted, "ballast up restarts the control plane", timeout=30)

    def done() -> Item:
        run = get(f"/v1/taskruns/{run_id}")
        assert run["state"] in ("succeeded", "failed"), (run["state"], run["shardStates"])
        return dict(run)
    run = eventually(done, f"task run {run_id} finished", timeout=90)
    assert run["state"] == "succeeded", run
    shards = run["items"]
    assert sorted(s["index"] for s in shards) == list(range(SHARDS))
    assert all(s["statusCode"] == 200 and s["group"] == "vostro" for s in shards), shards
    assert all(s["claims"] == 1 and s["attempts"] == 1 for s in shards), shards
    unit = {i["metadata"]["name"] for i in api.instances("a") if i["spec"].get("group") == "vostro"}
    assert {s["instance"] for s in shards} <= unit
    seen: Counter[str] = Counter()
    for inst in api.instances("a"):
        if inst["spec"]["desired"] == "running":
            answer = http_get_json(inst["status"]["ip"], inst["status"]["port"], "/tasks-seen")
            seen.update({k: v["count"] for k, v in answer["seen"].items() if k.startswith(f"replenish-batch/{run_id}/")})
    assert seen == {f"replenish-batch/{run_id}/{i}": 1 for i in range(SHARDS)}, "A saw each shard exactly once"
    finishes = [a for a in get("/v1/audit?limit=10000")["items"]
                if a["action"] == "task.run-finish" and a["detail"].get("run") == run_id]
    assert len(finishes) == 1, finishes
