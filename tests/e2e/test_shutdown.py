"""Ctrl-C on `ballast up` stops instances, agents and the control plane, exits 0 and leaves no process; a killed
`ballast up` leaves none either; a second one on a taken port or data dir says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Platform,
    eventually,
    find_agent,
    free_port,
    proc_argv,
    proc_start_time,
    start_platform,
)

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.25.2"


@pytest.fixture
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("shutdown"), FIRST_IP)


def test_ctrl_c_stops_everything_and_exits_zero(platform: Platform) -> None:
    platform.cli("demo", "--replicas", "4")
    instances = platform.wait_ready("shop", 4)

    agents = {node: find_agent(platform.data_dir, node) for node in ("node-a1", "node-a2", "node-b1", "node-b2")}
    assert all(agents.values()), agents
    server = [pid for pid in platform.leftovers() if "server" in proc_argv(pid)]
    assert len(server) == 1, platform.leftovers()
    running = {pid: proc_start_time(pid) for pid in [*agents.values(), *server, *(i["status"]["pid"] for i in instances)]}
    # The orphan scan must see every part while they run, or its "nothing left" would prove nothing.
    assert set(running) <= set(platform.leftovers()), platform.leftovers()

    assert platform.stop() == 0, platform.log_tail()
    # A process SIGKILLed by the last-resort sweep may take a moment to be reaped; nothing may stay alive.
    eventually(lambda: _assert_gone(platform, running), "every part of the platform has exited", timeout=5)
    log = platform.log.read_text()
    assert "stopping:" in log and log.rstrip().endswith("stopped"), platform.log_tail()


def _assert_gone(platform: Platform, running: dict[int, int | None]) -> None:
    assert platform.leftovers() == {}, platform.log_tail()
    assert [pid for pid, started in running.items() if proc_start_time(pid) == started] == []


def test_a_second_up_says_which_port_or_data_dir_is_taken_and_by_what(platform: Platform, tmp_path: Path) -> None:
    other = ["up", "--data-dir", str(tmp_path / "other"), "--port", str(platform.port), "--no-user-config",
             "--gateway-port", str(platform.gateway_port), "--first-node-ip", "127.0.25.40", "--metrics-port", "0"]
    taken = platform.cli(*other, check=False, timeout=60)
    said = taken.stdout + taken.stderr
    assert taken.returncode != 0, said
    assert f"port {platform.port} on 127.0.0.1 (the control plane's, --port) is taken by pid" in said, said
    assert "server" in said, "it names what holds the port"
    same_dir = platform.cli("up", "--data-dir", str(platform.data_dir), "--port", str(free_port()), "--no-user-config",
                            check=False, timeout=60)
    said = same_dir.stdout + same_dir.stderr
    assert same_dir.returncode != 0 and f"another `ballast up` (pid {platform.proc.pid if platform.proc else '?'})" \
        in said, said


def test_nothing_outlives_a_killed_up_and_the_next_up_stops_what_an_earlier_one_left(tmp_path: Path) -> None:
    platform = Platform(root=tmp_path, first_node_ip="127.0.25.20")
    stray: subprocess.Popen[bytes] | None = None
    try:
        platform.start()
        platform.cli("demo", "--replicas", "2")
        instances = platform.wait_ready("shop", 2)
        running = {pid: proc_start_time(pid) for pid in [*platform.leftovers(), *(i["status"]["pid"] for i in instances)]}
        assert platform.proc is not None
        os.kill(platform.proc.pid, signal.SIGKILL)
        platform.proc.wait(10)
        eventually(lambda: _assert_gone(platform, running), "every part of a killed `ballast up` has exited",
                   timeout=60)

        # A part an earlier `ballast up` started and that somehow survived it: the next one stops it.
        stray = subprocess.Popen(["sleep", "600"], start_new_session=True)
        (platform.data_dir / "up-children.json").write_text(json.dumps(
            [{"name": "stray", "pid": stray.pid, "started": proc_start_time(stray.pid)}]))
        platform.start()
        said = " ".join(platform.log.read_text().split())   # the console wraps long lines
        assert "stopped 1 process(es) an earlier `ballast up`" in said, platform.log_tail()
        assert stray.wait(10) is not None
        assert platform.stop() == 0, platform.log_tail()
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
        platform.stop()
        for pid in platform.leftovers():
            os.kill(pid, signal.SIGKILL)
        platform.discard()
