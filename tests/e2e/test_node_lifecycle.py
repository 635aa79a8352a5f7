"""Node failure on the real platform, under continuous load through the gateway and east-west.

A dead host (its agent, every instance and every sidecar SIGKILLed; `ballast up` is paused so nobody restarts
them): its endpoints leave routing, its instances are replaced in the same cell, and only calls in flight on it
may fail — each retried once succeeds. The host comes back with its old state: its stale instances are fenced
(stopped, never registered ready again), nothing serves twice. The control plane stopped for a minute: the data
plane serves with what it last had, nothing restarts, and when it returns nothing is restarted either.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.e2e.conftest import Platform, eventually, find_agent, processes_mentioning, start_platform
from tests.e2e.test_releases import DEMO_APP, Api, wait_steady

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.175.2"
Item = dict[str, Any]


def app_doc(name: str, cells: dict[str, int], **env: str) -> Item:
    spec: Item = {"cells": cells, "expose": {"host": f"{name}.local", "path": "/"},
                  "template": {"artifact": "./", "command": ["python3", "app.py"], "env": {"GREETING": "v1", **env},
                               "healthCheck": {"path": "/healthz", "periodSeconds": 1, "timeoutSeconds": 1},
                               "gracePeriodSeconds": 2}}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("nodes"), FIRST_IP)


@pytest.fixture(scope="module")
def api(platform: Platform) -> Api:
    return deploy(platform)


def deploy(platform: Platform) -> Api:
    """back (2 + 2) and front (2 + 2, calling back through its sidecar), all routed."""
    directory = platform.root / "apps"
    directory.mkdir()
    shutil.copy(DEMO_APP, directory / "app.py")
    docs = [app_doc("back", {"cell-a": 2, "cell-b": 2}),
            app_doc("front", {"cell-a": 2, "cell-b": 2}, DEMO_CALL_SERVICE="back")]
    path = directory / "apps.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    platform.cli("apply", "-f", str(path))
    api = Api(platform)
    wait_steady(api, "back", 4, 1, timeout=120)
    wait_steady(api, "front", 4, 1, timeout=120)
    eventually(lambda: _routed(platform), "every front and back instance is routed", timeout=60)
    return api


def _routed(platform: Platform) -> None:
    """Calls through the gateway reach all four back instances (every component has applied the routes)."""
    seen = set()
    for _ in range(40):
        conn = http.client.HTTPConnection("127.0.0.1", platform.gateway_port, timeout=10)
        try:
            conn.request("GET", "/call", headers={"Host": "front.local"})
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        assert r.status == 200, (r.status, body[:200])
        seen.add(json.loads(body)["downstream"]["instance"])
    assert len(seen) == 4, seen


def _proc_text(pid: int, what: str) -> str:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes().decode(errors="replace")
    except OSError:   # gone meanwhile
        return ""


def _answers(api: Api) -> None:
    try:
        api.get("/v1/nodes")
    except OSError as exc:
        raise AssertionError(f"the control plane does not answer: {exc}") from None


# --- load: north-south (gateway → front) and east-west (front → back through its sidecar) ------------------
@dataclass
class Load:
    """GET /call through the gateway until stopped: every call crosses the gateway and one sidecar hop. A failed
    call is retried once (the calls are idempotent); what failed first and what failed twice are both kept."""

    port: int
    threads: int = 4
    answered: int = 0
    backs: list[tuple[float, str]] = field(default_factory=list)   # (time, back instance that answered)
    first_failures: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)                  # failed again when retried
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Load":
        for _ in range(self.threads):
            self.workers.append(threading.Thread(target=self._run, daemon=True))
            self.workers[-1].start()
        return self

    def _once(self, conn: http.client.HTTPConnection) -> str:
        conn.request("GET", "/call", headers={"Host": "front.local"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise AssertionError(f"{r.status} {body[:200]!r}")
        return str(json.loads(body)["downstream"]["instance"])

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                back = self._once(conn)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                self.first_failures.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    back = self._once(conn)
                except Exception as again:  # noqa: BLE001
                    self.lost.append(f"{time.time():.3f} {type(again).__name__}: {again}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    continue
            self.answered += 1
            self.backs.append((time.time(), back))
        conn.close()

    def finish(self) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(30)


class EndpointWatch:
    """Samples an app's endpoints every 50 ms: every (time, instance, state) seen."""

    def __init__(self, api: Api, app: str) -> None:
        self.api, self.app = api, app
        self.seen: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for e in self.api.get(f"/v1/apps/{self.app}/endpoints")["items"]:
                    self.seen.append((time.time(), e["metadata"]["name"], e["status"]["state"]))
            except Exception:  # noqa: BLE001 - the control plane may be stopped on purpose
                pass
            self._stop.wait(0.05)

    def __enter__(self) -> "EndpointWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def audit(api: Api, resource: str | None = None) -> list[Item]:
    path = "/v1/audit?limit=10000" + (f"&resource={resource}" if resource else "")
    return api.get(path)["items"]


def epoch(ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def kill_host(platform: Platform, node: str) -> list[int]:
    """SIGKILL everything of one node: its agent, its instances and its sidecars (a dead host)."""
    marker = str(platform.data_dir / "agents" / node)
    victims = set(processes_mentioning(marker))
    agent = find_agent(platform.data_dir, node)
    assert agent is not None, f"no agent of {node}"
    victims.add(agent)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(victims)


# --- the tests -------------------------------------------------------------------------------------------
def test_a_dead_host_is_replaced_in_its_cell_and_fenced_when_it_returns(platform: Platform, api: Api) -> None:
    backs = {i["metadata"]["name"]: i["status"] for i in api.instances("back")}
    victim_node = sorted(s["node"] for s in backs.values() if s["cell"] == "cell-a")[0]
    doomed = sorted(i for i, s in backs.items() if s["node"] == victim_node)
    doomed_front = sorted(i["metadata"]["name"] for i in api.instances("front")
                          if i["status"]["node"] == victim_node)
    assert platform.proc is not None
    load = Load(platform.gateway_port).start()
    with EndpointWatch(api, "back") as watch:
        eventually(lambda: _answered(load, 200), "the load runs")
        os.kill(platform.proc.pid, signal.SIGSTOP)   # `ballast up` restarts nothing while the host is dead
        try:
            killed_at = time.time()
            kill_host(platform, victim_node)

            def replaced() -> dict[str, Item]:
                items = {i["metadata"]["name"]: i["status"] for i in api.instances("back")}
                fresh = {i: s for i, s in items.items() if i not in backs and s["ready"] is True}
                in_cell_a = [i for i, s in fresh.items() if s["cell"] == "cell-a" and s["node"] != victim_node]
                assert len(in_cell_a) == len(doomed), items
                return fresh
            fresh = eventually(replaced, f"replacements of {doomed} ready in cell-a", timeout=60)
            ready_at = time.time()
            answered_before = load.answered
            eventually(lambda: _answered(load, answered_before + 200), "the load runs on the replacements")
        finally:
            os.kill(platform.proc.pid, signal.SIGCONT)   # ... which restarts the node's agent with its old state

        def fenced() -> None:
            node = api.get(f"/v1/nodes/{victim_node}")
            assert node["status"]["state"] == "Ready", node["status"]
            left = [i["metadata"]["name"] for i in api.instances("back") if i["metadata"]["name"] in doomed]
            assert not left, f"stale instances still recorded: {left}"
        eventually(fenced, f"{victim_node} is back and its stale instances are gone", timeout=60)
        back_at = time.time()
        answered_before = load.answered
        eventually(lambda: _answered(load, answered_before + 200), "the load runs after the node returned")
    load.finish()

    # Only calls in flight on the dead host failed, and each succeeded when retried.
    assert not load.lost, f"calls failed even when retried: {load.lost[:5]}"
    # Its endpoints left routing and never came back: no stale instance answered after the node returned.
    removed = [t for t, i, s in watch.seen if i in doomed and s == "removed"]
    assert removed, "the dead host's endpoints were never seen removed"
    assert not [(t, i) for t, i, s in watch.seen if i in doomed and s == "ready" and t > min(removed)], \
        "a stale endpoint was registered ready again"
    assert not [b for t, b in load.backs if b in doomed and t > back_at], "a stale instance served after its node returned"
    assert not [p for p in processes_mentioning(str(platform.data_dir / "agents" / victim_node))
                if any(d in _proc_text(p, "environ") for d in doomed)], \
        "a stale instance's process runs again"
    # Nothing serves twice: exactly the declared count, the replacements among them.
    assert len(api.instances("back")) == 4 and set(fresh) <= {i["metadata"]["name"] for i in api.instances("back")}
    assert len(api.instances("front")) == 4

    # The decisions, in order, on the audit log (and so in `ballast describe node`).
    records = audit(api, f"Node/{victim_node}")
    actions = [r["action"] for r in records if epoch(r["ts"]) >= killed_at]
    for expected in ("node.not-ready", "node.replace-instances", "node.ready", "node.fence"):
        assert expected in actions, (expected, actions)
    order = [actions.index(a) for a in ("node.not-ready", "node.replace-instances", "node.ready", "node.fence")]
    assert order == sorted(order), actions
    not_ready = next(r for r in records if r["action"] == "node.not-ready" and epoch(r["ts"]) >= killed_at)
    retired = next(r for r in records if r["action"] == "node.replace-instances" and epoch(r["ts"]) >= killed_at)
    assert sorted(i["instance"] for i in retired["detail"]["instances"]) == sorted(doomed + doomed_front), retired
    fence = next(r for r in records if r["action"] == "node.fence" and epoch(r["ts"]) >= killed_at)
    assert sorted(i["instance"] for i in fence["detail"]["instances"]) == sorted(doomed + doomed_front), fence
    out = platform.cli("describe", "node", victim_node).stdout
    assert "node.not-ready" in out and "node.fence" in out, out
    first_removed = min(removed)
    print(f"\nnode death: killed at 0.00s; NotReady at {epoch(not_ready['ts']) - killed_at:.2f}s; endpoints "
          f"removed (seen) at {first_removed - killed_at:.2f}s; replacements ready (seen) at "
          f"{ready_at - killed_at:.2f}s; calls answered {load.answered}, failed first time "
          f"{len(load.first_failures)}, lost 0")
    assert killed_at < epoch(not_ready["ts"]) <= first_removed + 1.0 and first_removed < ready_at


def _answered(load: Load, count: int) -> None:
    assert not load.lost, load.lost[:3]
    assert load.answered >= count, f"{load.answered} of {count} calls answered"


def test_the_data_plane_keeps_serving_while_no_control_plane_answers(platform: Platform, api: Api) -> None:
    """Static stability: the control plane stopped for 60 s under load — no failed call, no restart; started
    again — it converges without restarting anything."""
    assert platform.proc is not None
    before = {i["metadata"]["name"]: (i["status"]["pid"], i["status"]["restarts"])
              for app in ("front", "back") for i in api.instances(app)}
    server = [p for p in processes_mentioning(str(platform.data_dir))
              if "server" in _proc_text(p, "cmdline").split("\0")]
    assert len(server) == 1, server
    load = Load(platform.gateway_port).start()
    eventually(lambda: _answered(load, 100), "the load runs")
    os.kill(platform.proc.pid, signal.SIGSTOP)   # nobody restarts the control plane
    try:
        os.kill(server[0], signal.SIGKILL)
        stopped_at = time.time()
        answered_before = load.answered
        time.sleep(60)
        assert load.answered > answered_before + 100, "the data plane stopped serving"
        assert not load.first_failures, f"calls failed while the control plane was away: {load.first_failures[:5]}"
    finally:
        os.kill(platform.proc.pid, signal.SIGCONT)   # `ballast up` starts the control plane again
    eventually(lambda: _answers(api), "the control plane answers again", timeout=60)
    time.sleep(8)   # past nodeGraceSeconds: a control plane judging by stale heartbeats would have acted by now
    load.finish()
    assert not load.first_failures and not load.lost, load.first_failures[:5]
    after = {i["metadata"]["name"]: (i["status"]["pid"], i["status"]["restarts"])
             for app in ("front", "back") for i in api.instances(app)}
    assert after == before, "an instance was restarted or replaced"
    records = [r for r in audit(api) if epoch(r["ts"]) >= stopped_at]
    assert not [r for r in records if r["action"] in ("node.not-ready", "node.replace-instances")], records
    print(f"\ncontrol plane away 60 s: {load.answered} calls answered, 0 failed, 0 restarts")
