"""Spec of node readiness: ready while heartbeats keep coming; schedulable when ready and not cordoned; its
instances' readiness Unknown (since the last heartbeat) once it is not ready."""

from __future__ import annotations

from typing import Any

import pytest

from ballast.core.nodes import (NODE_TIMEOUT_SECONDS, DisruptionPolicy, InstanceReadiness, NodeHeartbeat, Readiness,
                                hearing, instance_readiness, node_ready, schedulable)

NOW = 1_000.0


@pytest.mark.parametrize(("seconds_silent", "ready"), [
    (0.0, True),
    (NODE_TIMEOUT_SECONDS - 0.1, True),
    (NODE_TIMEOUT_SECONDS, False),   # exactly the timeout: gone
    (NODE_TIMEOUT_SECONDS + 60, False),
    (-5.0, True),                    # a heartbeat stamped by a clock slightly ahead still counts
])
def test_a_node_is_ready_while_its_heartbeats_keep_coming(seconds_silent: float, ready: bool) -> None:
    assert node_ready(NOW - seconds_silent, NOW) is ready


@pytest.mark.parametrize(("seconds_silent", "cordoned", "expected"), [
    (1.0, False, True),
    (1.0, True, False),
    (NODE_TIMEOUT_SECONDS + 1, False, False),
    (NODE_TIMEOUT_SECONDS + 1, True, False),
])
def test_only_a_ready_node_that_is_not_cordoned_gets_new_instances(seconds_silent: float, cordoned: bool,
                                                                    expected: bool) -> None:
    assert schedulable(NOW - seconds_silent, cordoned, NOW) is expected


# --- the zone-disruption rule ------------------------------------------------------------------------------------
def _nodes(silent: set[str], per_cell: dict[str, int]) -> list[NodeHeartbeat]:
    now = 1000.0
    return [NodeHeartbeat(f"{cell}-{k}", cell, now - (60.0 if f"{cell}-{k}" in silent else 1.0))
            for cell, n in per_cell.items() for k in range(n)]


@pytest.mark.parametrize("silent, per_cell, disrupted", [
    (set(), {"a": 2, "b": 2}, ()),
    ({"a-0"}, {"a": 2, "b": 2}, ()),                                    # one node of two: judged, drained
    ({"a-0", "a-1"}, {"a": 2, "b": 2}, ("cell/a",)),                   # a whole cell at once: suspended there
    ({"a-0", "b-0"}, {"a": 2, "b": 2}, ()),                            # half, spread: judged
    ({"a-0", "a-1", "b-0"}, {"a": 2, "b": 2}, ("cell/a", "platform")),
    ({"a-0", "a-1", "b-0", "b-1"}, {"a": 2, "b": 2}, ("cell/a", "cell/b", "platform")),
    ({"a-0", "a-1"}, {"a": 5, "b": 5}, ()),                            # 2 of 5: a cell can lose two nodes
    ({"a-0", "a-1", "a-2"}, {"a": 5, "b": 5}, ("cell/a",)),
    ({"a-0"}, {"a": 1, "b": 1}, ()),                                   # a lone node is judged like any other
])
def test_so_much_silence_at_once_suspends_judgement_where_it_happens(silent: set[str], per_cell: dict[str, int],
                                                                     disrupted: tuple[str, ...]) -> None:
    heard = hearing(_nodes(silent, per_cell), 1000.0)
    assert heard.silent == frozenset(silent)
    assert heard.disrupted == disrupted
    for cell, n in per_cell.items():
        for k in range(n):
            name = f"{cell}-{k}"
            suspended = any(s in ("platform", f"cell/{cell}") for s in disrupted)
            assert heard.routable(name) == (name not in silent or suspended), name
    assert not heard.routable("never-registered")


def test_the_share_and_count_are_the_platforms_to_set() -> None:
    heard = hearing(_nodes({"a-0"}, {"a": 2, "b": 2}), 1000.0, DisruptionPolicy(max_silent_share=0.2, min_silent=1))
    assert heard.disrupted == ("cell/a", "platform") and heard.routable("a-0")
@pytest.mark.parametrize(("reported", "seconds_silent", "expected"), [
    (True, 1.0, InstanceReadiness(Readiness.TRUE)),
    (False, 1.0, InstanceReadiness(Readiness.FALSE)),
    (True, NODE_TIMEOUT_SECONDS, InstanceReadiness(Readiness.UNKNOWN, since=NOW - NODE_TIMEOUT_SECONDS)),
    (False, NODE_TIMEOUT_SECONDS + 60, InstanceReadiness(Readiness.UNKNOWN, since=NOW - NODE_TIMEOUT_SECONDS - 60)),
    (False, None, InstanceReadiness(Readiness.FALSE)),   # not placed on a registered node: what was reported
])
def test_an_instance_on_a_silent_node_is_ready_unknown_since_its_last_heartbeat(
        reported: bool, seconds_silent: float | None, expected: InstanceReadiness) -> None:
    heartbeat = None if seconds_silent is None else NOW - seconds_silent
    assert instance_readiness(reported, heartbeat, NOW) == expected


def test_a_silent_node_whose_agent_answers_is_alive_routable_and_not_judged() -> None:
    heard = hearing(_nodes({"a-0", "b-0"}, {"a": 2, "b": 2}), 1000.0, answering=frozenset({"a-0", "a-1"}))
    assert heard.silent == {"a-0", "b-0"} and not heard.disrupted
    assert heard.answering == {"a-0"}, "an answer counts only for a silent node"
    assert heard.routable("a-0") and not heard.judged_dead("a-0")
    assert not heard.routable("b-0") and heard.judged_dead("b-0")
    assert not heard.judged_dead("a-1")


def test_a_disruption_counts_and_names_the_nodes_quiet_for_half_their_grace() -> None:
    now, grace = 1000.0, 4.0
    beats = [NodeHeartbeat("a-0", "a", now - 5.0), NodeHeartbeat("a-1", "a", now - 2.5),   # silent, quiet
             NodeHeartbeat("b-0", "b", now - 2.5), NodeHeartbeat("b-1", "b", now - 0.5)]   # quiet, heard
    heard = hearing(beats, now, DisruptionPolicy(grace_seconds=grace))
    assert heard.disrupted == ("cell/a", "platform")
    assert heard.counted == {"a-0", "a-1", "b-0"}
    assert heard.suspended == {"a-0"}, "only a silent node has a judgement to suspend"


async def test_the_leader_probes_quiet_agents_and_only_a_turning_agent_answers(tmp_path: Any) -> None:
    """Real loopback sockets: a quiet node whose agent's liveness thread answers is alive; one whose port is closed
    (dead), or accepts but says nothing (a frozen process: the kernel completes the connection), is not; a node
    heard from recently is not probed at all."""
    import socket

    from ballast.agent.liveness import Liveness
    from ballast.controllers import hearing as hearing_controller
    from ballast.store.engine import Store
    from ballast.store.schema import nodes

    busy = Liveness("127.0.0.1")
    busy.start()
    frozen = socket.create_server(("127.0.0.1", 0))   # listens, never accepts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        now = store.clock()
        async with store.write() as tx:
            for name, beat, port in (("busy", now - 3, busy.port), ("frozen", now - 3, frozen.getsockname()[1]),
                                     ("dead", now - 3, closed), ("heard", now, busy.port), ("old-agent", now - 3, None)):
                await tx.conn.execute(nodes.insert().values(
                    name=name, cell="a", zone="z", ip="127.0.0.1", cpu_millis=1000, memory_bytes=2**30, labels={},
                    agent_version="t", last_heartbeat=beat, registered_at=now, resource_version=tx.rv,
                    conditions={"livenessPort": port}))
        await hearing_controller.probe_once(store)   # returns once every probe answered or timed out
        assert hearing_controller.agent_answering(store, store.clock()) == {"busy"}
    finally:
        busy.close()
        frozen.close()
        await store.close()


def test_an_agent_whose_event_loop_stopped_turning_says_so() -> None:
    import time

    from ballast.agent.liveness import STALLED_SECONDS, Liveness
    live = Liveness("127.0.0.1")
    assert live.answer() == b"ok\n"
    live._last_tick = time.monotonic() - STALLED_SECONDS - 1
    assert live.answer().startswith(b"stalled")
