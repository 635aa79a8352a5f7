"""Spec of the store schema's migrations: they build exactly `schema.metadata`, and re-opening changes nothing."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from ballast.store.engine import Store
from ballast.store.migrate import alembic_config
from ballast.store.schema import audit, audit_head, counters, metadata


def _diffs(sync_conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))


def _snapshot(sync_conn: Connection) -> dict[str, Any]:
    """Tables, columns, indexes and the Alembic revision, as the database reports them."""
    insp = inspect(sync_conn)
    tables = {}
    for name in sorted(insp.get_table_names()):
        tables[name] = (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)],
            sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(name)),
        )
    version = sync_conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return {"tables": tables, "version": version}


async def test_migrated_schema_equals_the_metadata(store: Store) -> None:
    """Autogenerate finds no difference between the migrated database and `schema.metadata`."""
    async with store.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []


async def test_the_comparison_would_see_a_drift(store: Store) -> None:
    """Guard against a blind check: a metadata with one extra column and one missing table shows both diffs."""
    drifted = MetaData()
    for table in metadata.sorted_tables:
        if table.name != "artifacts":
            table.to_metadata(drifted)
    Table("counters", drifted, Column("note", String(10)), extend_existing=True)
    Table("extra", drifted, Column("id", Integer, primary_key=True))

    def diffs(sync_conn: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(sync_conn), drifted))

    async with store.engine.connect() as conn:
        found = await conn.run_sync(diffs)
    kinds = sorted((d[0], getattr(d[1], "name", None) or getattr(d[3], "name", None)) for d in found)
    assert kinds == [("add_column", "note"), ("add_table", "extra"), ("remove_table", "artifacts")]


async def test_migrations_reach_the_single_head(store: Store) -> None:
    """The database is stamped with the newest migration, and the migrations have exactly one head."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1
    async with store.engine.connect() as conn:
        assert (await conn.run_sync(_snapshot))["version"] == heads


async def test_opening_a_migrated_store_again_is_a_no_op(store: Store, store_url: str) -> None:
    """A second Store.open on the same database keeps schema, counters, audit chain and data exactly as they were."""
    async with store.write() as tx:
        await tx.audit(actor="test", action="probe", resource="Test/x")
    async with store.engine.connect() as conn:
        schema_before = await conn.run_sync(_snapshot)
        rv_before = (await conn.execute(select(counters))).all()
        head_before = (await conn.execute(select(audit_head))).all()
        audit_before = (await conn.execute(select(audit).order_by(audit.c.seq))).all()

    again = await Store.open(store_url)
    try:
        async with again.engine.connect() as conn:
            assert await conn.run_sync(_snapshot) == schema_before
            assert (await conn.execute(select(counters))).all() == rv_before
            assert (await conn.execute(select(audit_head))).all() == head_before
            assert (await conn.execute(select(audit).order_by(audit.c.seq))).all() == audit_before
            assert await conn.run_sync(_diffs) == []
    finally:
        await again.close()
    assert len(audit_before) == 1 and audit_before[0].action == "probe"
