"""The release-order flow on PostgreSQL: the test body of test_orders.py on a platform whose store is PostgreSQL.

Maker-checker, a freeze refusing the start, an emergency start, a failed health check pausing the order, the
control plane killed while the order runs and while it rolls back, the report's audit hashes verified: all of it,
with the order's state in PostgreSQL (its four apps are small already: two instances each).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.e2e.conftest import Platform, postgres_database, start_platform
from tests.e2e.test_orders import (  # noqa: F401
    test_an_order_approved_started_in_an_emergency_paused_by_a_failure_and_rolled_back,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FIRST_IP = "127.0.143.2"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("orders-pg"), FIRST_IP, store=database)
