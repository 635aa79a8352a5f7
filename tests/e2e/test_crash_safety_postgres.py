"""The crash-safety test on PostgreSQL: the control plane SIGKILLed across a release and a rollback loses nothing.

The same test body as test_crash_safety.py (imported, so both stores run one spec), on a platform whose store is
a fresh PostgreSQL database: 4 instances per cell and six kill points, one of each kind the SQLite run covers at
twelve (inside a group, while paused, right after a user's action, during and right after a rollback).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.e2e.conftest import Platform, postgres_database, start_platform
from tests.e2e.test_crash_safety import Scenario
from tests.e2e.test_crash_safety import test_killing_the_control_plane_anywhere_in_a_release_loses_nothing  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FIRST_IP = "127.0.141.2"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("crash-pg"), FIRST_IP, store=database)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    # Four per cell keeps group-2 at two instances one at a time (>= 6 s): time to roll back inside the second
    # release after the kill in its group-1.
    return Scenario(per_cell=4, distinct_kills=5, kill_at=frozenset({
        "mid-beta", "paused after beta", "inside group-1", "inside group-1 of the second release",
        "right after rollback", "during the rollback"}))
