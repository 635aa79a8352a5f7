"""A highly available control plane end to end: three `ballast server` replicas on one PostgreSQL store.

`ballast up --replicas 3` gives the agents, the gateway and the CLI all three URLs. One replica leads (runs
the controllers, fenced by the lease's epoch); all serve the API. Under continuous load through the gateway and
east-west: the leader is SIGKILLed in the middle of a grouped release, and again in the middle of a release
order's rollback; a new leader carries both on exactly where they were (the audit log shows every instance set
once per direction, none skipped; each instance's own start log agrees) and no request fails. Then the leader
is SIGSTOPped past its lease while one of its controllers' writes is in flight (the test holds the store's write
lock so that write waits inside PostgreSQL), another replica takes over, and on SIGCONT the stale write is
refused: counted on its /metrics and `ballast leader`, and on the audit record as `leader.fenced`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import threading
import time
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


class StoreLock:
    """The test's own PostgreSQL session, on a thread of its own: it holds the store's write lock (the `rv`
    counter row every write updates first) for as long as the test says."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.conn: Any = None

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> "StoreLock":
        import asyncpg
        from sqlalchemy.engine import make_url
        u = make_url(self.url)
        self.conn = self.run(asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432,
                                             database=u.database))
        return self

    def lock(self) -> None:
        self.run(self.conn.execute("BEGIN"))
        self.run(self.conn.execute("SELECT value FROM counters WHERE name = 'rv' FOR UPDATE"))

    def unlock(self) -> None:
        self.run(self.conn.execute("COMMIT"))

    def waiting(self, application_name: str) -> int:
        return int(self.run(self.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            application_name)))

    def holding(self, application_name: str) -> int:
        """Sessions of that process that hold a transaction open (and with it the write lock they took)."""
        return int(self.run(self.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle in transaction'",
            application_name)))

    def epoch(self) -> int:
        return int(self.run(self.conn.fetchval("SELECT epoch FROM leases WHERE name = 'controllers'")))

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.run(self.conn.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _metric(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_a_paused_leaders_stale_write_is_refused_after_another_took_over(env: Env, database: str) -> None:
    env.platform.cli("release", "start", "timed")
    release = wait_release(env.api, "timed", "the automatic pause after the first group",
                           lambda s: s["pauseUntil"] is not None and s["pauseUntil"] - time.time() > 2, timeout=90)
    stale = leader(env.api)
    with StoreLock(database) as store:
        # The pause's end is when the release engine writes next; hold every write from just before it.
        time.sleep(max(0.0, release["pauseUntil"] - 1.0 - time.time()))
        store.lock()
        session = f"ballast-server {stale.holder}"
        try:
            eventually(lambda: _more(time.time(), int(release["pauseUntil"] + 1)), "the pause is over", timeout=15)
            eventually(lambda: _more(store.waiting(session), 1),
                       "the leader's next write (the release engine's) waits for the lock inside PostgreSQL",
                       timeout=15)
            os.kill(stale.pid, signal.SIGSTOP)
            try:
                eventually(lambda: _more(store.epoch(), stale.epoch + 1), "another replica takes the lease over",
                           timeout=15)
            finally:
                store.unlock()
            # Other replicas' writes may have queued for the lock before it: the stale write's turn comes after
            # theirs. Once it has the lock (its session idle in its transaction), its process wakes to carry on.
            eventually(lambda: _more(store.holding(session), 1), "the stale write has the lock", timeout=15)
        finally:
            os.kill(stale.pid, signal.SIGCONT)
    now = leader(env.api)
    assert now.epoch > stale.epoch and now.holder != stale.holder, now

    def refused() -> Item:
        seen = env.api.get_from([stale.port], "/v1/leader")
        assert sum(seen["fencedWrites"].values()) >= 1, seen
        return seen
    seen = eventually(refused, "the former leader's stale write is refused", timeout=30)
    fenced = eventually(lambda: _require([r for r in env.audit() if r["action"] == "leader.fenced"]),
                        "the refusal is on the audit record")
    assert all(r["detail"]["epoch"] == stale.epoch and r["detail"]["holder"] == stale.holder for r in fenced), fenced
    print(f"\n  paused leader {stale.holder} epoch {stale.epoch}: refused {seen['fencedWrites']}; "
          f"{[(r['actor'], r['detail']['reason']) for r in fenced]}")
    shown = env.platform.cli("audit", "list").stdout
    assert "leader.fenced" in shown, shown
    token = env.api.token
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{stale.port}/metrics?traffic=false",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert _metric(r.read().decode(), "ballast_leader_fenced_writes_total") >= 1

    wait_release(env.api, "timed", "the release succeeds under the new leader", phase_is("Succeeded"), 120)
    now_items = wait_steady(env.api, "timed", 4, 2)
    assert env.set_revisions("timed", release["id"]) == Counter({i: 1 for i in now_items}), "no double action"
    for item in now_items.values():
        assert starts(env.platform, item) == [1, 2], (item["metadata"]["name"], starts(env.platform, item))


def _require(value: Any) -> Any:
    assert value, "not yet"
    return value
