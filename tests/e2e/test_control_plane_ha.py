"""A highly available control plane end to end: three `ballast server` replicas on one PostgreSQL store.

`ballast up --replicas 3` gives the agents, the gateway and the CLI all three URLs. One replica leads (runs
the controllers, fenced by the lease's epoch); all serve the API. Under continuous load through the gateway and
east-west: the leader is SIGKILLed in the middle of a grouped release, and again in the middle of a release
order's rollback; a new leader carries both on exactly where they were (the audit log shows every instance set
once per direction, none skipped; each instance's own start log agrees) and no request fails. Then the leader
is SIGSTOPped past its lease during a release's pause: another replica takes over and carries the release on;
on SIGCONT the former leader stops its controllers at its local deadline, and nothing is done twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ballast.loadgen import BackgroundLoad, Target
from tests.e2e.conftest import Platform, _handed_out, eventually, free_port, postgres_database, start_platform
from tests.e2e.test_releases import DEMO_APP, SLOW_HEALTH, Api, app_spec, phase_is, starts, wait_release, wait_steady

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FIRST_IP = "127.0.174.2"
REPLICAS = 3
THREE_EACH = {"cell-a": 3, "cell-b": 3}
Item = dict[str, Any]


def free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 all free (the replicas listen on consecutive ports)."""
    for _ in range(100):
        first = free_port()
        ok = True
        for port in range(first + 1, first + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
            if port in _handed_out:
                ok = False
        if ok:
            _handed_out.update(range(first, first + count))
            return first
    raise RuntimeError("no consecutive free ports")


class HaApi(Api):
    """GETs to whichever replica answers (a killed one is restarted by `ballast up`, a stopped one says nothing)."""

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        self.ports = [platform.port + i for i in range(REPLICAS)]

    def get(self, path: str) -> Any:
        return self.get_from(self.ports, path)

    def get_from(self, ports: list[int], path: str) -> Any:
        errors = []
        for port in ports:
            self.port = port
            try:
                return super().get(path)
            except (OSError, AssertionError) as exc:
                errors.append(f"{port}: {exc!r}")
        raise AssertionError(f"no replica answered {path}: {errors}")


@dataclass(frozen=True)
class Leader:
    holder: str
    epoch: int

    @property
    def port(self) -> int:
        return int(self.holder.split("/")[0].rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return int(self.holder.rsplit("/", 1)[1])


def leader(api: HaApi) -> Leader:
    def check() -> Leader:
        held = api.get("/v1/leader")["lease"]
        assert held is not None and not held["expired"], held
        return Leader(held["holder"], int(held["epoch"]))
    return eventually(check, "a replica leads")


def front(greeting: str, health: Item | None = None) -> Item:
    spec = app_spec(cells=THREE_EACH, greeting=greeting, health=health, strategy={"pause": "none"},
                    env={"DEMO_CALL_SERVICE": "back"})
    spec["expose"] = {"host": "front.local", "path": "/"}
    return spec


APPS: dict[str, Item] = {
    "back": app_spec(cells={"cell-a": 1, "cell-b": 1}),
    "front": front("v1"),
    "client": app_spec(cells={"cell-a": 1, "cell-b": 1}),
    # Automatic pauses between groups: the release engine's next write comes at a moment known in advance.
    "timed": app_spec(cells={"cell-a": 2, "cell-b": 2}, strategy={"pause": "auto", "pauseSeconds": 6}),
}


@dataclass
class Env:
    platform: Platform
    api: HaApi

    def apply(self, name: str, spec: Item) -> None:
        doc = {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name}, "spec": spec}
        path = self.platform.root / "apps" / f"{name}-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.platform.cli("apply", "-f", str(path))

    def targets(self) -> list[Target]:
        mesh = sorted(i["status"]["meshUrl"] for i in self.api.instances("client"))
        ip, port = mesh[0].removeprefix("http://").split(":")
        return [Target("gateway", "127.0.0.1", self.platform.gateway_port, "front.local", ("/", "/call"), 16),
                Target("east-west", ip, int(port), "front", ("/", "/call"), 8)]

    def audit(self) -> list[Item]:
        return list(self.api.get("/v1/audit?limit=10000")["items"])

    def set_revisions(self, app: str, release_id: int) -> Counter[str]:
        """How often the release engine set each instance of one release to a revision (audit log)."""
        sets: Counter[str] = Counter()
        for r in self.audit():
            if (r["resource"] == f"AppService/{app}" and r["action"] == "release.step"
                    and (r["detail"] or {}).get("release") == release_id):
                sets.update(a["setRevision"] for a in r["detail"]["actions"] if "setRevision" in a)
        return sets


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("ha"), FIRST_IP, store=database, port=free_ports(REPLICAS),
                              args=("--replicas", str(REPLICAS)))


@pytest.fixture(scope="module")
def env(platform: Platform) -> Env:
    (platform.root / "apps").mkdir()
    shutil.copy(DEMO_APP, platform.root / "apps" / "app.py")
    env = Env(platform, HaApi(platform))
    for name, spec in APPS.items():
        env.apply(name, spec)
    for name, spec in APPS.items():
        wait_steady(env.api, name, sum(spec["cells"].values()), 1, timeout=120)
    env.apply("timed", app_spec(cells={"cell-a": 2, "cell-b": 2}, greeting="v2",
                                strategy={"pause": "auto", "pauseSeconds": 6}))
    eventually(lambda: _all_routable(env), "the gateway and the sidecars route to every front instance")
    return env


def _all_routable(env: Env) -> None:
    eps = env.api.get("/v1/apps/front/endpoints")["items"]
    assert len(eps) == 6 and all(e["status"]["state"] == "ready" and not e["status"]["pending"] for e in eps), eps


def _kill_leader(env: Env) -> Leader:
    """SIGKILL the leading replica; return the replica that took over (a greater epoch)."""
    before = leader(env.api)
    os.kill(before.pid, signal.SIGKILL)
    killed = time.monotonic()

    def taken_over() -> Leader:
        now = leader(env.api)
        assert now.epoch > before.epoch and now.holder != before.holder, now
        return now
    after = eventually(taken_over, "another replica takes the lease over", timeout=30)
    print(f"\n  leader {before.holder} (epoch {before.epoch}) killed; {after.holder} leads at epoch {after.epoch} "
          f"{time.monotonic() - killed:.1f}s later")
    acquired = [r for r in env.audit() if r["action"] == "leader.acquired" and r["detail"]["epoch"] == after.epoch]
    assert [r["detail"]["holder"] for r in acquired] == [after.holder], acquired
    return after


def _warm(load: Any) -> None:
    eventually(lambda: _more(load.requests, 300), "the load runs")


def _more(value: int, floor: int) -> None:
    assert value >= floor, value


def test_the_agents_gateway_and_cli_know_every_replica_and_one_leads(env: Env) -> None:
    config = yaml.safe_load((env.platform.data_dir / "client.yaml").read_text())
    assert config["server"] == [f"http://127.0.0.1:{p}" for p in env.api.ports], config["server"]
    shown = env.platform.cli("leader").stdout
    now = leader(env.api)
    assert f"{now.holder}   epoch {now.epoch}" in shown, shown
    stores = {env.api.get_from([p], "/v1/leader")["store"] for p in env.api.ports}
    assert len(stores) == 1, stores


def test_a_grouped_release_carries_on_exactly_where_it_was_when_the_leader_is_killed(env: Env) -> None:
    env.apply("front", front("v2", SLOW_HEALTH))
    with BackgroundLoad(env.targets()) as load:
        _warm(load)
        env.platform.cli("release", "start", "front")
        release = wait_release(env.api, "front", "a group done, the next one changing",
                               lambda s: s["phase"] == "Running" and s["completedGroups"] >= 1, timeout=90)
        _kill_leader(env)
        wait_release(env.api, "front", "the release succeeds under the new leader", phase_is("Succeeded"), 120)
        now = wait_steady(env.api, "front", 6, 2)
        eventually(lambda: _all_routable(env), "every front instance routable again")
    print(f"  {load.requests} requests, {load.failed} failed")
    assert load.failed == 0, f"{load.failed} of {load.requests} failed: {dict(load.failures())}; {load.evidence()}"
    sets = env.set_revisions("front", release["id"])
    assert sets == Counter({i: 1 for i in now}), f"each instance set to revision 2 exactly once: {sets}"
    for item in now.values():
        assert starts(env.platform, item) == [1, 2], (item["metadata"]["name"], starts(env.platform, item))


def test_an_orders_rollback_carries_on_exactly_where_it_was_when_the_leader_is_killed(env: Env) -> None:
    tokens = {}
    for user, role in (("alice", "operator"), ("bob", "approver")):   # maker and checker
        env.platform.cli("user", "create", user, "--role", role)
        tokens[user] = env.platform.cli("token", "create", "--user", user).stdout.strip().splitlines()[-1].strip()
    env.apply("front", front("v3", {**SLOW_HEALTH, "initialDelaySeconds": 3}))
    order = {"apiVersion": "ballast.io/v1alpha1", "kind": "ReleaseOrder", "metadata": {"name": "chg-ha"},
             "spec": {"title": "front v3", "ticket": "CHG-1", "reason": "failover drill",
                      "releases": [{"app": "front", "strategy": {"pause": "none"}}]}}
    path = env.platform.root / "apps" / "order.yaml"
    path.write_text(yaml.safe_dump(order, sort_keys=False))
    env.platform.cli("--token", tokens["alice"], "apply", "-f", str(path))
    env.platform.cli("--token", tokens["bob"], "order", "approve", "chg-ha")
    with BackgroundLoad(env.targets()) as load:
        _warm(load)
        env.platform.cli("--token", tokens["alice"], "order", "start", "chg-ha")
        release = wait_release(env.api, "front", "the order's release: a group done, the next one changing",
                               lambda s: s["toRevision"] == 3 and s["phase"] == "Running" and s["completedGroups"] >= 1,
                               timeout=90)
        env.platform.cli("--token", tokens["alice"], "order", "rollback", "chg-ha")
        wait_release(env.api, "front", "rolling back", phase_is("RollingBack"), 30)
        _kill_leader(env)

        def rolled_back() -> None:
            phase = env.api.get("/v1/orders/chg-ha")["status"]["phase"]
            assert phase == "RolledBack", phase
        eventually(rolled_back, "the order is rolled back under the new leader", timeout=120)
        now = wait_steady(env.api, "front", 6, 2)
        eventually(lambda: _all_routable(env), "every front instance routable again")
    print(f"  {load.requests} requests, {load.failed} failed")
    assert load.failed == 0, f"{load.failed} of {load.requests} failed: {dict(load.failures())}; {load.evidence()}"
    sets = env.set_revisions("front", release["id"])
    assert sets and set(sets.values()) == {2}, f"each touched instance set forward once and back once: {sets}"
    for item in now.values():
        history = starts(env.platform, item)
        touched = item["metadata"]["name"] in sets
        assert history[:2] == [1, 2] and history.count(3) <= 1, (item["metadata"]["name"], history)
        assert (history[-1] == 2) and (touched or history == [1, 2]), (item["metadata"]["name"], history, touched)


def _metric(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _log_of(env: Env, port: int) -> str:
    index = port - env.platform.port
    return (env.platform.data_dir / "logs" / ("server.log" if index == 0 else f"server-{index}.log")).read_text()


def test_a_paused_leader_stops_acting_at_its_deadline_and_nothing_is_done_twice(env: Env) -> None:
    """SIGSTOP the leader during a release's automatic pause, past its lease: another replica takes over and
    finishes the release; on SIGCONT the former leader finds its local deadline passed and stops its controllers
    before they write. (That a stale write already under way is refused by the epoch is shown by
    tests/unit/test_leadership.py on SQLite and PostgreSQL: here the deadline comes first.)"""
    env.platform.cli("release", "start", "timed")
    release = wait_release(env.api, "timed", "the automatic pause after the first group",
                           lambda s: s["pauseUntil"] is not None and s["pauseUntil"] - time.time() > 2, timeout=90)
    stale = leader(env.api)
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        def taken_over() -> Leader:
            now = leader(_others(env, stale.port))
            assert now.epoch > stale.epoch, now
            return now
        now = eventually(taken_over, "another replica takes the lease over", timeout=30)
        wait_release(_others(env, stale.port), "timed", "the new leader carries the release on past the pause",
                     lambda s: s["completedGroups"] >= 2 or s["phase"] == "Succeeded", 60)
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    eventually(lambda: _more(_log_of(env, stale.port).count(
        f"({stale.holder}) stopped leading at epoch {stale.epoch}: its local deadline passed"), 1),
        "the former leader stopped its controllers at its deadline", timeout=15)
    seen = env.api.get_from([stale.port], "/v1/leader")
    assert seen["lease"]["holder"] == now.holder and seen["answeredBy"] == stale.holder, seen
    print(f"\n  paused leader {stale.holder} epoch {stale.epoch}; {now.holder} took over at epoch {now.epoch}; "
          f"the former leader's refused writes: {seen['fencedWrites'] or 'none (it stopped before writing)'}")
    token = env.api.token
    request = urllib.request.Request(f"http://127.0.0.1:{stale.port}/metrics?traffic=false",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert _metric(r.read().decode(), "ballast_leader_fenced_writes_total") == sum(seen["fencedWrites"].values())

    wait_release(env.api, "timed", "the release succeeds under the new leader", phase_is("Succeeded"), 120)
    now_items = wait_steady(env.api, "timed", 4, 2)
    assert env.set_revisions("timed", release["id"]) == Counter({i: 1 for i in now_items}), "no double action"
    for item in now_items.values():
        assert starts(env.platform, item) == [1, 2], (item["metadata"]["name"], starts(env.platform, item))
    acquired = [r["detail"]["epoch"] for r in env.audit() if r["action"] == "leader.acquired"]
    assert acquired == sorted(set(acquired)), f"each epoch acquired once, in order: {acquired}"


def _others(env: Env, port: int) -> HaApi:
    """An API reader that asks every replica but the one on `port` (stopped: it would only time out)."""
    api = HaApi(env.platform)
    api.ports = [p for p in api.ports if p != port]
    return api


def _require(value: Any) -> Any:
    assert value, "not yet"
    return value
