"""Grouped releases on PostgreSQL: a test body of test_releases.py on a platform whose store is PostgreSQL.

One of them, where the SQLite run covers the breadth: a release of 6 instances over two cells with manual pauses,
rolled back from between groups (newest group first, one instance per cell at a time, the group never reached
untouched, RolledBack in the history and on the audit log).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.e2e import test_releases as spec
from tests.e2e.conftest import Platform, postgres_database, start_platform

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FIRST_IP = "127.0.142.2"
APPS = ("rb-between",)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("releases-pg"), FIRST_IP, store=database)


@pytest.fixture(scope="module")
def env(platform: Platform) -> spec.Deployed:
    return spec.deploy(platform, platform.root, {app: spec.APPS[app] for app in APPS})


def test_rollback_between_groups_on_postgresql(env: spec.Deployed) -> None:
    spec.test_rollback_returns_every_touched_instance_to_revision_1(env, "between")
