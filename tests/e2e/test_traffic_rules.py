"""Traffic rules end to end: the real `ballast up`, real HAProxy sidecars and gateway, the demo app with the SDK.

`back` runs revision 1 and 2 at once (its release to 2 paused after the beta group); `front` calls `back`
through its sidecar (the mesh) and answers with what `back` answered, so every call says which revision
served it, north-south (the gateway to back.local) and east-west (front's sidecar to back). The rules are
applied with the CLI, and each test waits until every component acknowledged its generation (`inEffect`)
before it sends a call: that is the protocol's promise, not a sleep.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ballast.cli.packaging import stage_demo
from ballast.dataplane.haproxy import socket_dir
from tests.e2e.conftest import Platform, eventually, start_platform
from tests.e2e.test_releases import HEALTH, Api, phase_is, wait_release, wait_steady

pytestmark = pytest.mark.e2e
FIRST_IP = "127.0.171.2"
BACK, FRONT = 4, 2
Item = dict[str, Any]


GATE_STRATEGY = {"pause": "manual", "traffic": {"betaWeight": 20},
                 "verify": {"windowSeconds": 4, "minRequests": 50, "maxErrorRate": 1}}


def app(name: str, replicas: int, greeting: str = "v1", host: str | None = None, strategy: Item | None = None,
        **env: str) -> Item:
    spec: Item = {"replicas": replicas,
                  "template": {"artifact": "./", "command": ["python3", "app.py"],
                               "env": {"GREETING": greeting, **env}, "healthCheck": HEALTH, "gracePeriodSeconds": 3}}
    if host:
        spec["expose"] = [{"host": host, "path": "/"}]
    if strategy:
        spec["strategy"] = strategy
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name}, "spec": spec}


def traffic_rule(name: str, service: str, routes: list[Item], callers: list[str] | None = None) -> Item:
    spec: Item = {"service": service, "routes": routes}
    if callers:
        spec["from"] = {"apps": callers}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "TrafficRule", "metadata": {"name": name}, "spec": spec}


class Deployed:
    def __init__(self, platform: Platform, directory: Path) -> None:
        self.platform = platform
        self.directory = directory
        self.api = Api(platform)
        self.applied = 0

    def apply(self, *docs: Item) -> str:
        self.applied += 1
        path = self.directory / f"rules-{self.applied}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
        return self.platform.cli("apply", "-f", str(path)).stdout

    def delete(self, kind: str, name: str) -> None:
        self.platform.cli("delete", kind, name)

    def in_effect(self, kind: str, name: str) -> Item:
        """Every traffic component acknowledged the rule's generation."""
        def check() -> Item:
            state = self.api.get(f"/v1/{kind}/{name}")
            assert state["inEffect"], f"pending: {state['pending']}"
            return dict(state)
        return eventually(check, f"{kind}/{name} in effect on every component")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("traffic-rules"), FIRST_IP)


@pytest.fixture(scope="module")
def deployed(platform: Platform) -> Deployed:
    """back at revision 1 and 2 (its release paused after beta), front calling it through the mesh."""
    directory = stage_demo(platform.root / "apps")
    d = Deployed(platform, directory)
    d.apply(app("back", BACK, host="back.local"), app("front", FRONT, host="front.local", DEMO_CALL_SERVICE="back"),
            app("gate", BACK, host="gate.local", strategy=GATE_STRATEGY))
    wait_steady(d.api, "back", BACK, 1, timeout=90)
    wait_steady(d.api, "front", FRONT, 1, timeout=90)
    wait_steady(d.api, "gate", BACK, 1, timeout=90)
    d.apply(app("back", BACK, greeting="v2", host="back.local"))
    platform.cli("release", "start", "back")
    wait_release(d.api, "back", "paused after the beta group", phase_is("Paused"), timeout=90)

    def both_revisions_ready() -> None:
        items = d.api.instances("back")
        ready = Counter(i["status"]["revision"] for i in items if i["status"]["ready"])
        assert ready[1] >= 1 and ready[2] >= 1 and sum(ready.values()) == BACK, ready
    eventually(both_revisions_ready, "back serves revision 1 and 2", timeout=60)
    return d


# --- sending calls ----------------------------------------------------------------------------------------
def _send(port: int, host: str, path: str, count: int, headers: dict[str, str], out: list[tuple[int, Item]],
          lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    mine: list[tuple[int, Item]] = []
    try:
        for _ in range(count):
            for attempt in (1, 2):
                try:
                    conn.request("GET", path, headers={"Host": host, **headers})
                    r = conn.getresponse()
                    body = r.read()
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    # an idle keep-alive connection the gateway closed (a reload): what every client does once
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    if attempt == 2:
                        raise
            try:
                answer = json.loads(body)
            except ValueError:
                answer = {"raw": body[:200].decode(errors="replace"), "headers": dict(r.getheaders())}
            mine.append((r.status, answer))
    finally:
        conn.close()
        with lock:
            out.extend(mine)


def calls(platform: Platform, host: str, path: str = "/", count: int = 1000, headers: dict[str, str] | None = None,
          threads: int = 4) -> list[tuple[int, Item]]:
    out: list[tuple[int, Item]] = []
    lock = threading.Lock()
    workers = [threading.Thread(target=_send, args=(platform.gateway_port, host, path,
                                                    count // threads + (i < count % threads), headers or {}, out, lock))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert len(out) == count, f"{len(out)} of {count} calls answered"
    return out


def revisions(answers: list[tuple[int, Item]], east_west: bool) -> Counter[int]:
    bad = [(s, a) for s, a in answers if s != 200]
    assert not bad, f"{len(bad)} failed calls, e.g. {bad[:3]}"
    return Counter(int((a["downstream"] if east_west else a)["revision"]) for _, a in answers)


def north_south(platform: Platform, count: int, **headers: str) -> Counter[int]:
    return revisions(calls(platform, "back.local", "/", count, headers), east_west=False)


def east_west(platform: Platform, count: int, **headers: str) -> Counter[int]:
    return revisions(calls(platform, "front.local", "/call", count, headers), east_west=True)


def gateway_worker(platform: Platform) -> int:
    """The pid of the gateway's HAProxy worker (a reload starts a new one)."""
    sock = socket_dir(platform.data_dir / "gateway" / "haproxy") / "admin.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b"show info\n")
        answer = b"".join(iter(lambda: s.recv(65536), b""))
    return int(next(line.split(":")[1] for line in answer.decode().splitlines() if line.startswith("Pid:")))


def binomial_interval(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """The central interval of Binomial(n, p) holding `confidence` of its mass (exact, by summing the pmf)."""
    tail = (1 - confidence) / 2
    def pmf_at(k: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log1p(-p))
    pmf = [pmf_at(k) for k in range(0, min(n, int(n * p * 10) + 50) + 1)]
    low_mass, low = 0.0, 0
    while low_mass + pmf[low] < tail:
        low_mass += pmf[low]
        low += 1
    high_mass, high = sum(pmf), len(pmf) - 1
    while high_mass - pmf[high] > 1 - tail:
        high_mass -= pmf[high]
        high -= 1
    return low, high


# --- the tests --------------------------------------------------------------------------------------------
def test_a_weighted_split_sends_each_revision_its_share(deployed: Deployed) -> None:
    p = deployed.platform
    deployed.apply(traffic_rule("back-split", "back", [
        {"name": "split", "to": [{"revision": 1, "weight": 70}, {"revision": 2, "weight": 30}]}]))
    deployed.in_effect("trafficrules", "back-split")
    for name, measured in (("north-south", north_south(p, 10_000)), ("east-west", east_west(p, 10_000))):
        share = measured[2] / sum(measured.values())
        assert abs(share - 0.30) <= 0.015, f"{name}: revision 2 got {share:.4f} of {dict(measured)}, weight 30%"

    worker = gateway_worker(p)
    deployed.apply(traffic_rule("back-split", "back", [
        {"name": "split", "to": [{"revision": 1, "weight": 999}, {"revision": 2, "weight": 1}]}]))
    deployed.in_effect("trafficrules", "back-split")
    assert gateway_worker(p) == worker, "a change of weights alone is made live (set map), without a reload"
    low, high = binomial_interval(10_000, 0.001)
    for name, measured in (("north-south", north_south(p, 10_000)), ("east-west", east_west(p, 10_000))):
        assert sum(measured.values()) == 10_000
        assert low <= measured[2] <= high, f"{name}: revision 2 got {measured[2]} of 10000 at 1/1000, " \
                                           f"expected {low}..{high} (99.9%)"
    deployed.delete("trafficrule", "back-split")


def test_header_matches_send_every_matching_call_and_no_other(deployed: Deployed) -> None:
    p = deployed.platform
    deployed.apply(traffic_rule("back-testers", "back", [
        {"name": "testers", "match": {"headers": {"x-user-group": {"exact": "testers"}}}, "to": [{"revision": 2}]},
        {"name": "api", "match": {"pathPrefix": "/api", "headers": {"x-beta": {"present": True}}},
         "to": [{"revision": 2}]},
        {"name": "rest", "to": [{"revision": 1}]}]))
    deployed.in_effect("trafficrules", "back-testers")
    assert north_south(p, 2000, **{"x-user-group": "testers"}) == Counter({2: 2000})
    assert north_south(p, 2000, **{"x-user-group": "testers-not"}) == Counter({1: 2000})
    assert east_west(p, 1000, **{"x-user-group": "testers"}) == Counter({1: 1000}), \
        "front does not pass the header on: its call to back is not a tester's"
    assert revisions(calls(p, "back.local", "/api/x", 500, {"x-beta": "1"}), False) == Counter({2: 500})
    assert revisions(calls(p, "back.local", "/apix", 500, {"x-beta": "1"}), False) == Counter({1: 500})
    deployed.delete("trafficrule", "back-testers")


def test_a_color_set_at_the_gateway_routes_the_second_hop_and_outsiders_cannot_set_it(deployed: Deployed) -> None:
    p = deployed.platform
    deployed.apply(
        {"apiVersion": "ballast.io/v1alpha1", "kind": "ColoringRule", "metadata": {"name": "batch"},
         "spec": {"at": {"apps": ["gateway"]}, "match": {"headers": {"x-channel": {"exact": "batch"}}},
                  "tags": {"env": "gray"}}},
        traffic_rule("back-gray", "back", [{"name": "gray", "match": {"tags": {"env": "gray"}}, "to": [{"revision": 2}]},
                                           {"name": "rest", "to": [{"revision": 1}]}], callers=["front"]))
    deployed.in_effect("coloringrules", "batch")
    deployed.in_effect("trafficrules", "back-gray")
    marked = calls(p, "front.local", "/call", 1000, {"x-channel": "batch"})
    assert revisions(marked, east_west=True) == Counter({2: 1000})
    assert {a["self"]["baggage"] for _, a in marked} == {"env=gray"}, "front received the gateway's color"
    assert {a["downstream"]["baggage"] for _, a in marked} == {"env=gray"}, "front passed it on (the SDK)"
    # An outside client sending the color itself does not get it through the gateway.
    forged = calls(p, "front.local", "/call", 1000, {"baggage": "env=gray"})
    assert revisions(forged, east_west=True) == Counter({1: 1000})
    assert {a["self"]["baggage"] for _, a in forged} == {""}
    # ... nor by sending a different value of the key the gateway sets.
    both = calls(p, "front.local", "/call", 200, {"baggage": "env=prod,team=x", "x-channel": "batch"})
    assert {a["self"]["baggage"] for _, a in both} == {"env=gray"}
    deployed.delete("trafficrule", "back-gray")
    deployed.delete("coloringrule", "batch")


def test_a_subset_without_ready_endpoints_falls_back_or_fails_as_the_route_says(deployed: Deployed) -> None:
    p = deployed.platform
    # front's revision 2 is recorded, never released: its subset has no endpoint.
    deployed.apply(app("front", FRONT, greeting="v2", host="front.local", DEMO_CALL_SERVICE="back"))
    deployed.apply(traffic_rule("front-next", "front", [
        {"name": "next", "match": {"headers": {"x-next": {"exact": "1"}}}, "to": [{"revision": 2}],
         "fallback": "fail"},
        {"name": "rest", "to": [{"revision": 2}]}]))
    state = deployed.in_effect("trafficrules", "front-next")
    assert [d["fallback"] for r in state["routes"] for d in r["to"]] == [True, True], state["routes"]
    fallen = calls(p, "front.local", "/", 300)
    assert {(s, a["revision"]) for s, a in fallen} == {(200, "1")}, "the whole pool serves the route's calls"
    failed = calls(p, "front.local", "/", 50, {"x-next": "1"})
    assert {s for s, _ in failed} == {503}
    assert {a["headers"].get("x-ballast-route") for _, a in failed} == {"front-next/next"}
    deployed.delete("trafficrule", "front-next")


def test_explain_agrees_with_what_the_data_plane_did(deployed: Deployed) -> None:
    p = deployed.platform
    deployed.apply(traffic_rule("back-sticky", "back", [
        {"name": "half", "to": [{"revision": 1, "weight": 50}, {"revision": 2, "weight": 50}],
         "stickyKey": {"header": "x-user"}}]))
    deployed.in_effect("trafficrules", "back-sticky")
    predicted: dict[str, int] = {}
    for k in range(24):
        user = f"user-{k}"
        answer = deployed.api.get(f"/v1/traffic/explain?service=back&from=gateway&header=x-user%3D{user}")
        [chosen] = [d for d in answer["destinations"] if d["chosen"]]
        predicted[user] = int(chosen["revision"])
        assert north_south(p, 20, **{"x-user": user}) == Counter({predicted[user]: 20}), user
    assert set(predicted.values()) == {1, 2}, f"both sides among 24 keys: {predicted}"
    out = p.cli("traffic", "explain", "--service", "back", "--header", "x-user=user-0").stdout
    assert "back-sticky" in out and "half" in out, out
    table = p.cli("get", "trafficrules").stdout
    assert "back-sticky" in table and "yes" in table, table
    deployed.delete("trafficrule", "back-sticky")


class Load:
    """Keep-alive GETs to one host through the gateway until stopped; every failure is kept."""

    def __init__(self, platform: Platform, host: str, path: str = "/", connections: int = 2) -> None:
        self.platform, self.host, self.path = platform, host, path
        self.stop = threading.Event()
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run) for _ in range(connections)]

    def __enter__(self) -> "Load":
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(30)

    def _run(self) -> None:
        port = self.platform.gateway_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request("GET", self.path, headers={"Host": self.host})
                r = conn.getresponse()
                r.read()
                with self.lock:
                    self.results[str(r.status)] += 1
                    if r.status != 200:
                        self.failures.append(f"{r.status}")
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            except Exception as exc:  # noqa: BLE001 - every kind of failure counts
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()


def test_a_release_with_a_beta_weight_sends_that_share_is_judged_on_it_and_rolls_back_cleanly(
        deployed: Deployed) -> None:
    p, api = deployed.platform, deployed.api
    deployed.apply(app("gate", BACK, greeting="v2", host="gate.local", strategy=GATE_STRATEGY))
    with Load(p, "gate.local") as load:
        p.cli("release", "start", "gate")
        status = wait_release(api, "gate", "the beta group verified, then paused",
                              lambda s: s["phase"] == "Paused" and s["reason"].startswith("beta done"), timeout=90)
        owned = deployed.in_effect("trafficrules", "release-gate")
        assert owned["owner"] == f"release/{status['id']}", owned
        assert [(d["revision"], d["weight"]) for d in owned["spec"]["routes"][0]["to"]] == [(1, 800_000), (2, 200_000)]
        beta = next(g for g in status["groups"] if g["instances"])
        verification = beta["verification"]
        assert verification["state"] == "passed", verification
        canary, baseline = verification["canary"]["requests"], verification["baseline"]["requests"]
        assert abs(canary / (canary + baseline) - 0.20) <= 0.05, (canary, baseline)
    assert not load.failures, load.failures[:5]
    measured = revisions(calls(p, "gate.local", "/", 10_000), east_west=False)
    assert abs(measured[2] / 10_000 - 0.20) <= 0.015, f"revision 2 got {dict(measured)}, betaWeight 20%"
    with Load(p, "gate.local") as load:
        p.cli("release", "rollback", "gate")
        wait_release(api, "gate", "rolled back", phase_is("RolledBack"), timeout=120)
    assert not load.failures, load.failures[:5]
    assert sum(load.results.values()) > 0
    assert "release-gate" not in [r["name"] for r in api.get("/v1/trafficrules")["items"]], "its routing is gone"
    assert north_south_host(p, "gate.local", 500) == Counter({1: 500})
    # The routing came back first: the rule's removal is on record before any instance went back.
    records = p.api("/v1/audit?limit=2000")["items"]
    rollback = next(r["seq"] for r in records if r["action"] == "release.rollback" and r["resource"] == "AppService/gate")
    removed = next(r["seq"] for r in records if r["action"] == "delete" and r["resource"] == "TrafficRule/release-gate")
    steps = [r["seq"] for r in records if r["action"] == "release.step" and r["resource"] == "AppService/gate"
             and r["seq"] > rollback]
    assert steps and removed < min(steps), (rollback, removed, steps[:3])


def north_south_host(platform: Platform, host: str, count: int) -> Counter[int]:
    return revisions(calls(platform, host, "/", count), east_west=False)


def _more(loads: list[Load], at_least: int) -> None:
    served = sum(sum(load.results.values()) for load in loads)
    assert served >= at_least, served


def test_twenty_rule_changes_under_keep_alive_load_lose_no_call(deployed: Deployed) -> None:
    p = deployed.platform
    with Load(p, "back.local") as north_south_load, Load(p, "front.local", "/call") as east_west_load:
        loads = [north_south_load, east_west_load]
        for change in range(20):
            routes: list[Item] = [{"name": "split", "to": [{"revision": 1, "weight": 100 - 5 * change},
                                                            {"revision": 2, "weight": 5 * change + 1}]}]
            if change % 2:   # every other change is one of structure: a route comes and goes
                routes.insert(0, {"name": f"probe-{change}", "match": {"headers": {"x-probe": {"exact": str(change)}}},
                                  "to": [{"revision": 2}]})
            deployed.apply(traffic_rule("back-churn", "back", routes))
            deployed.in_effect("trafficrules", "back-churn")
        deployed.delete("trafficrule", "back-churn")
        served = sum(sum(load.results.values()) for load in loads)
        eventually(lambda: _more(loads, served + 400), "load goes on past the rule's removal")
    failures = [f for load in loads for f in load.failures]
    answered = sum(sum(load.results.values()) for load in loads)
    assert not failures, f"{len(failures)} failed calls of {answered}: {failures[:5]}"
    assert answered > 1000, answered
