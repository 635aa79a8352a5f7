"""`ballast up --store postgresql://...`: the same platform and demo on a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.conftest import Platform, postgres_database, start_platform

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FIRST_IP = "127.0.26.2"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("postgres"), FIRST_IP, store=database)


async def _count_instances(url: str) -> Any:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432,
                                 database=u.database)
    try:
        return await conn.fetchval("SELECT count(*) FROM instances WHERE app = 'shop'")
    finally:
        await conn.close()


def test_demo_on_postgresql_runs_ten_ready_instances_five_per_cell(platform: Platform, database: str) -> None:
    nodes = platform.get("nodes")
    assert sorted((n["metadata"]["name"], n["spec"]["cell"], n["status"]["ready"]) for n in nodes) == [
        ("node-a1", "cell-a", True), ("node-a2", "cell-a", True), ("node-b1", "cell-b", True), ("node-b2", "cell-b", True)]

    platform.cli("demo", "--replicas", "10")
    ready = platform.wait_ready("shop", 10)
    per_cell: dict[str, int] = {}
    for inst in ready:
        per_cell[inst["status"]["cell"]] = per_cell.get(inst["status"]["cell"], 0) + 1
    assert per_cell == {"cell-a": 5, "cell-b": 5}

    assert asyncio.run(_count_instances(database)) == 10, "the state lives in the PostgreSQL database"
    assert not (platform.data_dir / "ballast.db").exists(), "no SQLite store was used"
