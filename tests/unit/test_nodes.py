"""Spec of node readiness: ready while heartbeats keep coming; schedulable when ready and not cordoned; its
instances' readiness Unknown (since the last heartbeat) once it is not ready."""

from __future__ import annotations

import pytest

from ballast.core.nodes import (NODE_TIMEOUT_SECONDS, InstanceReadiness, Readiness, instance_readiness, node_ready,
                                schedulable)

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
