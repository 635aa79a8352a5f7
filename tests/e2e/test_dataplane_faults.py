"""Faults of the data plane on the real platform: a dead sidecar, a silent traffic component.

A sidecar killed with SIGKILL is restarted by its agent; meanwhile its instance is not ready and its
endpoint is drained. A node agent frozen (SIGSTOP) in the middle of a release never acknowledges: the
release pauses naming that node's mesh, changes nothing more, shows the node's instances READY Unknown once the
node is silent past its timeout, and completes once the agent is back.
Draining a node under load moves its instances to the cell's other node without a failed request.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from tests.e2e.conftest import (Platform, eventually, find_agent, http_get_json, proc_argv, processes_mentioning,
                                start_platform)
from tests.e2e.test_releases import DEMO_APP, Api, phase_is, wait_release, wait_steady

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.81.2"
Item = dict[str, Any]


def manifest(name: str, greeting: str, ack_timeout: float = 30.0) -> Item:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name},
            "spec": {"cells": {"cell-a": 2, "cell-b": 2}, "expose": {"host": f"{name}.local", "path": "/"},
                     "strategy": {"pause": "none", "groups": 1},
                     "traffic": {"ackTimeoutSeconds": ack_timeout},
                     "template": {"artifact": "./", "command": ["python3", "app.py"], "env": {"GREETING": greeting},
                                  "healthCheck": {"path": "/healthz", "periodSeconds": 5, "timeoutSeconds": 1},
                                  "gracePeriodSeconds": 3}}}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("faults"), FIRST_IP)


@pytest.fixture(scope="module")
def api(platform: Platform) -> Api:
    directory = platform.root / "apps"
    directory.mkdir()
    shutil.copy(DEMO_APP, directory / "app.py")
    for name in ("sidecar", "silent"):
        apply(platform, manifest(name, "v1", ack_timeout=3.0))
    api = Api(platform)
    for name in ("sidecar", "silent"):
        wait_steady(api, name, 4, 1, timeout=120)
    return api


def apply(platform: Platform, doc: Item) -> None:
    path = platform.root / "apps" / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    platform.cli("apply", "-f", str(path))


def endpoint(api: Api, app: str, instance: str) -> Item:
    return {e["metadata"]["name"]: e for e in api.get(f"/v1/apps/{app}/endpoints")["items"]}[instance]


def sidecar_pid(platform: Platform, item: Item) -> int:
    """The HAProxy master serving this instance's endpoint (found by its configuration file)."""
    config = platform.data_dir / "agents" / item["status"]["node"] / "sidecars" / item["metadata"]["name"]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = proc_argv(int(entry.name))
            if argv and "haproxy" in argv[0] and "-W" in argv and str(config / "haproxy.cfg") in argv:
                return int(entry.name)
    raise AssertionError(f"no sidecar process for {item['metadata']['name']}")


def test_a_killed_sidecar_is_restarted_and_its_endpoint_drained_meanwhile(platform: Platform, api: Api) -> None:
    item = api.instances("sidecar")[0]
    name, s = item["metadata"]["name"], item["status"]
    assert http_get_json(s["ip"], s["port"], "/")["instance"] == name
    before = sidecar_pid(platform, item)
    os.killpg(before, signal.SIGKILL)

    def not_ready() -> Item:
        now = {i["metadata"]["name"]: i for i in api.instances("sidecar")}[name]
        assert now["status"]["ready"] is False and "sidecar" in now["status"]["message"], now["status"]
        return now
    seen = eventually(not_ready, "the instance is reported not ready while its sidecar is down", timeout=20)
    assert seen["status"]["pid"] == s["pid"], "the app itself keeps running"
    eventually(lambda: _state_is(api, "sidecar", name, "draining"), "its endpoint is drained", timeout=20)

    def back() -> None:
        now = {i["metadata"]["name"]: i for i in api.instances("sidecar")}[name]
        assert now["status"]["ready"] is True, now["status"]
        assert sidecar_pid(platform, now) != before
        ep = endpoint(api, "sidecar", name)
        assert ep["status"]["state"] == "ready" and not ep["status"]["pending"], ep["status"]
    eventually(back, "a new sidecar serves and the endpoint is ready and acknowledged again", timeout=60)
    assert http_get_json(s["ip"], s["port"], "/")["instance"] == name


def _state_is(api: Api, app: str, instance: str, state: str) -> None:
    ep = endpoint(api, app, instance)
    assert ep["status"]["state"] == state, ep["status"]


def test_a_frozen_agent_is_judged_dead_and_no_release_waits_for_its_mesh(platform: Platform, api: Api) -> None:
    """SIGSTOP node-b2's agent: its heartbeats stop and so does the thread that answers the leader's probe, so
    past nodeGraceSeconds the node is NotReady (a hung host looks the same). Its endpoints leave routing, removed,
    without anyone waiting for its own acknowledgement; its instance is replaced in its cell and still listed,
    READY Unknown, until its agent stops it. A release then goes through all four live instances while the node
    is still frozen: nothing waits for its mesh. SIGCONT: the node is Ready again and its stale instance fenced."""
    apply(platform, manifest("silent", "v2", ack_timeout=30.0))
    agent = find_agent(platform.data_dir, "node-b2")
    assert agent is not None
    on_b2 = [i["metadata"]["name"] for i in api.instances("silent") if i["status"]["node"] == "node-b2"]
    assert len(on_b2) == 1, on_b2
    os.kill(agent, signal.SIGSTOP)
    try:
        def judged() -> None:
            node = api.get("/v1/nodes/node-b2")
            assert node["status"]["state"] == "NotReady", node["status"]
        eventually(judged, "node-b2 is NotReady", timeout=40)
        eventually(lambda: _state_is(api, "silent", on_b2[0], "removed"), "its endpoint leaves routing", timeout=20)

        def replaced() -> None:
            live = [i for i in api.instances("silent") if i["spec"]["desired"] == "running"]
            assert len(live) == 4 and all(i["status"]["ready"] for i in live), live
            assert sorted(i["status"]["cell"] for i in live) == ["cell-a", "cell-a", "cell-b", "cell-b"], live
            assert on_b2[0] not in {i["metadata"]["name"] for i in live}
        eventually(replaced, "its instance is replaced in cell-b", timeout=60)
        eventually(lambda: _unknown_on(platform, "silent", "node-b2"), "node-b2's instance shows READY Unknown "
                   "in `ballast get instances`", timeout=20)
        platform.cli("release", "start", "silent")
        wait_release(api, "silent", "done while node-b2 is still frozen", phase_is("Succeeded"), timeout=120)
        assert api.get("/v1/nodes/node-b2")["status"]["state"] == "NotReady"
    finally:
        os.kill(agent, signal.SIGCONT)
    eventually(lambda: _assert_all_nodes_ready(api), "node-b2 is Ready again", timeout=40)
    fenced = [a for a in api.get("/v1/audit?limit=300")["items"]
              if a["action"] == "node.fence" and a["resource"] == "Node/node-b2"]
    assert fenced and on_b2[0] in str(fenced[-1]["detail"]), fenced
    now = wait_steady(api, "silent", 4, 2)
    assert on_b2[0] not in now


def _unknown_on(platform: Platform, app: str, node: str) -> list[str]:
    table = platform.cli("get", "instances", app).stdout.splitlines()
    rows = [line for line in table if node in line]
    assert rows and all("Unknown since" in line for line in rows), table
    return table


def _gateway_pid(platform: Platform) -> int:
    """The live `ballast gateway` process of the platform (not its HAProxy)."""
    for pid in processes_mentioning(str(platform.data_dir)):
        argv = proc_argv(pid)
        if "gateway" in argv and "agent" not in argv and argv and "haproxy" not in argv[0]:
            return pid
    raise AssertionError("no gateway process")


def test_a_frozen_gateway_cannot_be_acknowledged_for_with_a_node_credential(platform: Platform, api: Api) -> None:
    """While gateway edge is frozen (SIGSTOP), node-a1's own credential, read from its data dir, acknowledging the
    registry for the gateway is refused; the release pauses naming gateway/edge (it never finishes with a
    gateway that applied nothing), and finishes once the gateway is back."""
    credential = (platform.data_dir / "agents" / "node-a1" / "credential").read_text().strip()
    as_node = httpx.Client(base_url=platform.server, headers={"Authorization": f"Bearer {credential}"}, timeout=10)
    node_token = as_node.get("/v1/whoami").json()["token"]
    apply(platform, manifest("silent", "v3", ack_timeout=3.0))
    gateway = _gateway_pid(platform)
    os.kill(gateway, signal.SIGSTOP)
    try:
        platform.cli("release", "start", "silent")
        target = api.release("silent")["toRevision"]

        def draining() -> None:
            assert any(e["status"]["state"] == "draining" for e in api.get("/v1/apps/silent/endpoints")["items"])
        eventually(draining, "the release drains a first endpoint", timeout=30)
        generation = api.get("/v1/registry")["generation"]
        r = as_node.post("/v1/gateways/edge/ack", json={"generation": generation})
        assert r.status_code == 403 and "may not act as gateway 'edge'" in r.json()["message"], r.text
        status = wait_release(api, "silent", "paused for the frozen gateway", phase_is("Paused"), timeout=60)
        assert "gateway/edge" in status["reason"], status["reason"]
        edge = api.get("/v1/gateways/edge")["status"]
        assert edge["acknowledgedGeneration"] < generation and edge["acknowledgedWith"] != node_token, edge
        assert not [i for i in api.instances("silent") if i["status"]["grantedRevision"] == target]
    finally:
        os.kill(gateway, signal.SIGCONT)
        as_node.close()
    platform.cli("release", "resume", "silent")
    wait_release(api, "silent", "done once the gateway answers again", phase_is("Succeeded"), timeout=120)
    wait_steady(api, "silent", 4, target)


def test_draining_a_node_moves_its_instances_away_without_a_failed_request(platform: Platform, api: Api) -> None:
    """`ballast node drain` under load through the gateway: new instances start on the cell's other node,
    the old ones are drained (acknowledged everywhere) before they stop, and no request fails."""
    from ballast.loadgen import BackgroundLoad, Target
    on_a1 = [i["metadata"]["name"] for i in api.instances("sidecar") if i["status"]["node"] == "node-a1"]
    assert on_a1, "the fixture's app has an instance on node-a1"
    with BackgroundLoad([Target("gateway", "127.0.0.1", platform.gateway_port, "sidecar.local", ("/",), 8)]) as load:
        out = platform.cli("node", "drain", "node-a1").stdout
        assert "node-a1 cordoned" in out and "sidecar" in out, out
        wait_release(api, "sidecar", "the evacuation ends", phase_is("Succeeded"), timeout=120)
        wait_release(api, "silent", "the evacuation ends", phase_is("Succeeded"), timeout=120)
        alive = load.workers_alive
    assert alive == 8, f"{8 - alive} of 8 load workers ended early"
    assert load.failed == 0 and load.requests > 100, (load.requests, load.failed, dict(load.failures()))
    for app in ("sidecar", "silent"):
        now = wait_steady(api, app, 4, api.app(app)["status"]["deployedRevision"])
        assert not [i for i in now.values() if i["status"]["node"] == "node-a1"], "nothing runs on node-a1"
        assert sorted(i["status"]["cell"] for i in now.values()) == ["cell-a", "cell-a", "cell-b", "cell-b"]
    status = api.release("sidecar")
    assert status["kind"] == "evacuate" and status["phase"] == "Succeeded", status
    assert {e["action"] for e in api.history("sidecar")[-1]["events"]} >= {"start", "succeeded"}
    node = api.get("/v1/nodes/node-a1")
    assert node["status"]["cordoned"] is True
    audit = api.get("/v1/audit?limit=500")["items"]
    assert any(a["action"] == "node.drain" and a["resource"] == "Node/node-a1" for a in audit)
    refused = platform.cli("node", "drain", "node-nope", check=False)
    assert refused.returncode != 0 and "not found" in refused.stderr
    platform.cli("node", "uncordon", "node-a1")
    assert api.get("/v1/nodes/node-a1")["status"]["cordoned"] is False


def test_when_most_nodes_fall_silent_at_once_the_control_plane_suspects_itself_and_drains_nothing(
        platform: Platform, api: Api) -> None:
    """Three of four agents frozen at once (what a control plane that cannot hear its nodes sees): it stops
    judging them — their endpoints stay ready, no request fails — says so on the audit log and /metrics, and
    resumes its judgement when heartbeats flow again."""
    from ballast.loadgen import BackgroundLoad, Target
    frozen = [find_agent(platform.data_dir, n) for n in ("node-a2", "node-b1", "node-b2")]
    assert all(frozen), frozen
    ready_before = {e["metadata"]["name"] for e in api.get("/v1/apps/sidecar/endpoints")["items"]
                    if e["status"]["state"] == "ready"}
    assert len(ready_before) == 4
    with BackgroundLoad([Target("gateway", "127.0.0.1", platform.gateway_port, "sidecar.local", ("/",), 4)]) as load:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
        try:
            def suspended() -> Item:
                # One record per change of what is suspended: the three heartbeats lapse one after another, so a
                # cell may be suspended first and the platform with the next lapse; the newest says it all.
                found = [a for a in api.get("/v1/audit?limit=50")["items"] if a["action"] == "node-disruption.suspend"]
                assert found, "no node-disruption.suspend record yet"
                newest = max(found, key=lambda a: a["seq"])
                assert newest["detail"]["silentNodes"] == ["node-a2", "node-b1", "node-b2"], newest["detail"]
                assert "platform" in newest["detail"]["scopes"], newest["detail"]
                return newest
            eventually(suspended, "the control plane says it stops judging the silent nodes", timeout=40)
            metrics = httpx.get(f"http://127.0.0.1:{api.port}/metrics?traffic=false", timeout=10,
                                headers={"Authorization": f"Bearer {api.token}"}).text
            assert 'ballast_node_judgement_suspended{scope="platform"} 1.0' in metrics, metrics
            def silent_shown() -> None:   # the disruption is declared while they are quiet; silent at their grace
                silent = [n["metadata"]["name"] for n in api.get("/v1/nodes")["items"] if not n["status"]["ready"]]
                assert silent == ["node-a2", "node-b1", "node-b2"], silent
            eventually(silent_shown, "the API still says who is silent", timeout=20)
            for _ in range(10):   # two seconds of registry passes: nothing is drained
                states = {e["metadata"]["name"]: e["status"]["state"]
                          for e in api.get("/v1/apps/sidecar/endpoints")["items"]}
                assert {n for n, st in states.items() if st == "ready"} == ready_before, states
                time.sleep(0.2)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
        eventually(lambda: _assert_action(api, "node-disruption.resume"), "judgement resumes", timeout=40)
    assert load.failed == 0 and load.requests > 50, (load.requests, load.failed, dict(load.failures()),
                                                     load.evidence())
    eventually(lambda: _assert_all_nodes_ready(api), "every node is ready again", timeout=40)


def _assert_action(api: Api, action: str) -> None:
    assert any(a["action"] == action for a in api.get("/v1/audit?limit=50")["items"]), action


def _assert_all_nodes_ready(api: Api) -> None:
    assert all(n["status"]["ready"] for n in api.get("/v1/nodes")["items"])


def test_an_anonymous_flood_costs_no_write_and_drains_nothing(platform: Platform, api: Api) -> None:
    """20 s of junk requests without a token (POST /v1/junk/N, from many connections) while the gateway carries
    load: no request through the gateway fails, no node goes NotReady, the admin's calls are answered, and the
    audit log does not grow by a record per knock."""
    import asyncio
    import threading

    from ballast.loadgen import BackgroundLoad, Target
    sent = {"requests": 0, "answers": {}}   # type: dict[str, Any]

    async def knock(stop_at: float) -> None:
        async def one_connection(k: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", platform.port)
                    while time.monotonic() < stop_at:
                        writer.write(b"POST /v1/junk/%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" % n)
                        await writer.drain()
                        head = await reader.readuntil(b"\r\n\r\n")
                        status = head.split(b" ")[1].decode()
                        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                        await reader.readexactly(length)
                        sent["requests"] += 1
                        sent["answers"][status] = sent["answers"].get(status, 0) + 1
                        n += 1
                        if b"connection: close" in head.lower():
                            break
                    writer.close()
                except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                    await asyncio.sleep(0.01)
        await asyncio.gather(*(one_connection(k) for k in range(32)))

    records_before = api.get("/v1/audit/verify")["records"]
    not_ready_seen: set[str] = set()
    api_calls: list[float] = []
    with BackgroundLoad([Target("gateway", "127.0.0.1", platform.gateway_port, "sidecar.local", ("/",), 4)]) as load:
        stop_at = time.monotonic() + 20
        flood = threading.Thread(target=lambda: asyncio.run(knock(stop_at)), daemon=True)
        flood.start()
        while flood.is_alive():
            started = time.monotonic()
            nodes = api.get("/v1/nodes")["items"]     # the admin is answered meanwhile (10 s timeout each)
            api_calls.append(time.monotonic() - started)
            # Heartbeats may arrive late meanwhile (`ready` is "heard within its grace"); what must not happen is
            # the judgement that drains and replaces a node.
            not_ready_seen |= {n["metadata"]["name"] for n in nodes if n["status"]["state"] == "NotReady"}
            time.sleep(0.5)
        flood.join()
    assert sent["requests"] > 2000, sent          # a flood, not a trickle
    assert set(sent["answers"]) <= {"401", "429"}, sent["answers"]
    assert not_ready_seen == set(), f"nodes went NotReady during the flood: {not_ready_seen}"
    assert load.failed == 0 and load.requests > 50, (load.requests, load.failed, dict(load.failures()),
                                                     load.evidence())
    assert len(api_calls) >= 10, api_calls
    grown = api.get("/v1/audit/verify")["records"] - records_before
    assert grown < 10, f"{grown} audit records for {sent['requests']} refused requests"
