"""Killing parts of a running platform: a dead instance is restarted in place; a dead agent is
restarted by `ballast up` and adopts its instances, which keep serving throughout."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.conftest import (
    Platform,
    eventually,
    find_agent,
    http_get_json,
    proc_environ,
    start_platform,
)

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.22.2"
TRAFFIC_AFTER_RECOVERY = 2.0  # seconds of traffic after the agent is back: the length of the measurement window


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("resilience"), FIRST_IP)


@pytest.fixture(scope="module")
def shop(platform: Platform) -> None:
    platform.cli("demo", "--replicas", "10")
    platform.wait_ready("shop", 10)


def _by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["metadata"]["name"]: i["status"] for i in items}


def _kill_instance(status: dict[str, Any], instance_id: str) -> None:
    assert proc_environ(status["pid"]).get("BALLAST_INSTANCE_ID") == instance_id, "pid is not that instance"
    os.kill(status["pid"], signal.SIGKILL)


def _assert_restarted_in_place(platform: Platform, instance_id: str, before: dict[str, Any]) -> None:
    def check() -> None:
        now = _by_id(platform.instances("shop"))[instance_id]
        assert now["restarts"] == before["restarts"] + 1, now
        assert now["phase"] == "Running" and now["ready"], now
        assert now["pid"] not in (None, before["pid"]), now
        assert (now["node"], now["ip"], now["port"]) == (before["node"], before["ip"], before["port"]), now
        assert http_get_json(now["ip"], now["port"])["pid"] == now["pid"]
    eventually(check, f"{instance_id} restarted on the same address")


def test_a_killed_instance_is_restarted_on_the_same_address(platform: Platform, shop: None) -> None:
    instances = _by_id(platform.wait_ready("shop", 10))
    victim, before = next((i, s) for i, s in sorted(instances.items()) if s["node"] == "node-b1")
    _kill_instance(before, victim)
    _assert_restarted_in_place(platform, victim, before)
    others = {i: (s["pid"], s["restarts"]) for i, s in _by_id(platform.instances("shop")).items() if i != victim}
    assert others == {i: (s["pid"], s["restarts"]) for i, s in instances.items() if i != victim}


@dataclass
class Traffic:
    """Requests in a loop against fixed instances over fresh connections, until told to stop."""
    targets: dict[str, tuple[str, int]]
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for instance_id, (ip, port) in self.targets.items():
                try:
                    answer = http_get_json(ip, port, "/", timeout=2.0)
                    if answer["instance"] != instance_id:
                        raise AssertionError(f"answered as {answer['instance']}")
                    self.ok += 1
                except Exception as exc:  # noqa: BLE001  every failure counts, whatever its kind
                    self.failures.append(f"{instance_id} {ip}:{port}: {type(exc).__name__}: {exc}")


def _registrations(platform: Platform, node: str) -> int:
    records = platform.cli_json("audit", "list", "--limit", "10000")
    return sum(1 for r in records if r["action"] == "node.register" and r["resource"] == f"Node/{node}")


def test_a_killed_agent_is_restarted_and_its_instances_serve_throughout(platform: Platform, shop: None) -> None:
    before = {i: s for i, s in _by_id(platform.wait_ready("shop", 10)).items() if s["node"] == "node-a1"}
    assert before, "node-a1 runs some of the demo's instances"
    old_agent = find_agent(platform.data_dir, "node-a1")
    assert old_agent is not None
    registered = _registrations(platform, "node-a1")

    traffic = Traffic({i: (s["ip"], s["port"]) for i, s in before.items()})
    loop = threading.Thread(target=traffic.run, name="traffic")
    loop.start()
    try:
        eventually(lambda: _assert(traffic.ok >= len(before)), "traffic flows before the kill")
        os.kill(old_agent, signal.SIGKILL)
        killed_at, served_before_kill = time.time(), traffic.ok

        def agent_back() -> int:
            pid = find_agent(platform.data_dir, "node-a1")
            assert pid is not None and pid != old_agent, f"agent pid {pid}"
            assert _registrations(platform, "node-a1") == registered + 1, "the new agent has not re-registered yet"
            return pid
        new_agent = eventually(agent_back, "ballast up restarts the node-a1 agent and it registers again")
        served_while_agent_away = traffic.ok - served_before_kill

        def reported_ready() -> None:
            asked_at = time.time()
            node = platform.get("nodes", "node-a1")
            assert node["status"]["ready"], node
            # The server answered after asked_at, so its last heartbeat is no earlier than this (0.1 s rounding).
            heartbeat_no_earlier_than = asked_at - node["status"]["secondsSinceHeartbeat"] - 0.1
            assert heartbeat_no_earlier_than > killed_at, "no heartbeat since the kill yet"
            now = {i: s for i, s in _by_id(platform.instances("shop")).items() if s["node"] == "node-a1"}
            assert set(now) == set(before)
            assert all(s["phase"] == "Running" and s["ready"] for s in now.values()), now
        eventually(reported_ready, "node-a1 heartbeats again with its instances ready")
        traffic.stop.wait(TRAFFIC_AFTER_RECOVERY)
    finally:
        traffic.stop.set()
        loop.join(10)
    assert not loop.is_alive()
    assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.ok + len(traffic.failures)} failed: {traffic.failures[:5]}"
    assert served_while_agent_away > 0, "no request was answered between the kill and the agent's return"
    assert traffic.ok > 10 * len(before), f"only {traffic.ok} requests made it: the window did not carry traffic"

    after = {i: s for i, s in _by_id(platform.instances("shop")).items() if s["node"] == "node-a1"}
    assert {i: (s["pid"], s["port"], s["restarts"]) for i, s in after.items()} == \
        {i: (s["pid"], s["port"], s["restarts"]) for i, s in before.items()}, "adopted, not restarted"
    assert find_agent(platform.data_dir, "node-a1") == new_agent

    # Adopted means supervised: the new agent notices when an adopted process dies and restarts it.
    victim = min(after)
    _kill_instance(after[victim], victim)
    _assert_restarted_in_place(platform, victim, after[victim])


def _assert(fact: bool) -> None:
    assert fact
