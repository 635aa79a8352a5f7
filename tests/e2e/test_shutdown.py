"""Ctrl-C on `ballast up` stops instances, agents and the control plane, exits 0 and leaves no process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import (
    Platform,
    eventually,
    find_agent,
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
