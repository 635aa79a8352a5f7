"""Lossless releases on PostgreSQL: the test body of test_lossless.py on a platform whose store is PostgreSQL.

Smaller than the SQLite run, which covers every upgrade mode: 3 instances per cell of front and back, front
released in place (through the gateway, and east-west from the client's sidecars) and then a replacement of
front rolled back after its beta group — under continuous load, with not one failed request.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.e2e.conftest import Platform, postgres_database, start_platform
from tests.e2e.test_lossless import Scale, apps  # noqa: F401 - the module's fixture, over this module's platform
from tests.e2e.test_lossless import test_releases_and_rollbacks_under_load_lose_no_request  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FIRST_IP = "127.0.144.2"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("lossless-pg"), FIRST_IP, store=database)


@pytest.fixture(scope="module")
def scale() -> Scale:
    return Scale(per_cell=3, steps=("front in place", "front rolled back after beta"), min_requests=25_000)
