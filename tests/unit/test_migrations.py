"""Spec of the store schema's migrations: they build exactly `schema.metadata`, re-opening changes nothing, and data
migrations rewrite stored values into the form the code now reads."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ballast.core.manifests import stored_strategy, strategy_json
from ballast.core.release_plan import PauseMode, Strategy, UpgradeMode
from ballast.core.verification import OnFailure, PromCheck, Verification, Webhook
from ballast.store.engine import Store, normalize_url
from ballast.store.migrate import alembic_config
from ballast.store.schema import audit, audit_head, counters, metadata, releases


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


# --- 0006: a release's strategy stored in the public spelling ------------------------------------------------------

# As the old `services.releases.strategy_to_json` stored them (output of that code at b068f96): snake_case names,
# `verify` in its public spelling. One verifying release with explicit group sizes, one plain scale.
OLD_VERIFYING = {"beta_size": 1, "groups": 3, "group_sizes": [1, 2, 3], "pause": "auto", "pause_seconds": 30.0,
                 "max_unavailable_per_cell": 2, "upgrade": "replace", "progress_deadline_seconds": 90.0,
                 "verify": {"windowSeconds": 45.0, "minRequests": 250, "maxErrorRate": None,
                            "maxErrorRateIncrease": 0.5, "maxP99Ms": 300.0, "maxP99Ratio": 1.5, "p99FloorMs": 5.0,
                            "onFailure": "rollback",
                            "webhooks": [{"url": "http://checks.local/a", "timeoutSeconds": 2.0}],
                            "prometheus": {"url": "http://prom:9090", "queries": [
                                {"name": "errors", "query": "sum(rate(e[$window]))", "max": 0.1, "min": None}]}}}
OLD_PLAIN = {"beta_size": 1, "groups": 3, "group_sizes": None, "pause": "manual", "pause_seconds": 0.0,
             "max_unavailable_per_cell": 1, "upgrade": "inPlace", "progress_deadline_seconds": 120.0, "verify": None}
VERIFYING = Strategy(beta_size=1, groups=3, group_sizes=(1, 2, 3), pause=PauseMode.AUTO, pause_seconds=30.0,
                     max_unavailable_per_cell=2, upgrade=UpgradeMode.REPLACE, progress_deadline_seconds=90.0,
                     verify=Verification(window_seconds=45.0, min_requests=250, max_error_rate=None,
                                         max_error_rate_increase=0.5, max_p99_ms=300.0, max_p99_ratio=1.5,
                                         p99_floor_ms=5.0, on_failure=OnFailure.ROLLBACK,
                                         webhooks=(Webhook("http://checks.local/a", 2.0),),
                                         prometheus_url="http://prom:9090",
                                         queries=(PromCheck("errors", "sum(rate(e[$window]))", max=0.1),)))


async def _migrate(url: str, target: str, *, down: bool = False) -> None:
    engine = create_async_engine(normalize_url(url))
    cfg = alembic_config()

    def run(sync_conn: Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        (command.downgrade if down else command.upgrade)(cfg, target)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


def _release(strategy: dict[str, Any]) -> dict[str, Any]:
    return dict(app="shop", kind="release", from_revision=1, to_revision=2, strategy=strategy, plan=[],
                phase="Running", direction="forward", completed_groups=0, pause_until=None, fast=False,
                reason="started", waiting="", created_by="admin", created_at=1.0, updated_at=1.0, finished_at=None,
                resource_version=1)


async def _strategies(url: str) -> list[Any]:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(select(releases.c.strategy).order_by(releases.c.id))).scalars())
    finally:
        await engine.dispose()


async def test_0006_stores_old_strategies_in_the_public_spelling_and_back(store_url: str) -> None:
    """Releases stored by 0005's code read back, after 0006, in the spelling users write and as the same Strategy;
    the downgrade restores exactly what was stored."""
    await _migrate(store_url, "0005")
    engine = create_async_engine(normalize_url(store_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(releases), [_release(OLD_VERIFYING), _release(OLD_PLAIN)])
    finally:
        await engine.dispose()

    upgraded = await Store.open(store_url)
    await upgraded.close()
    verifying, plain = await _strategies(store_url)
    # The spelling of that day: fields added since (with defaults) are not written by that migration.
    since = {"traffic"}
    assert verifying == {k: v for k, v in strategy_json(VERIFYING).items() if k not in since}
    assert plain == {k: v for k, v in strategy_json(Strategy()).items() if k not in since}
    assert (stored_strategy(verifying), stored_strategy(plain)) == (VERIFYING, Strategy())
    assert set(verifying) == {"betaSize", "groups", "groupSizes", "pause", "pauseSeconds", "maxUnavailablePerCell",
                              "upgrade", "progressDeadlineSeconds", "verify"}

    await _migrate(store_url, "0005", down=True)
    assert await _strategies(store_url) == [OLD_VERIFYING, OLD_PLAIN]


# --- 0007: when a role binding was made and by whom -----------------------------------------------------------------

async def _bindings(url: str) -> list[dict[str, Any]]:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM role_bindings ORDER BY id"))).mappings().all()
            return [dict(r) for r in rows]
    finally:
        await engine.dispose()


async def test_0007_gives_old_bindings_no_age_and_no_grantor_and_back(store_url: str) -> None:
    """Bindings stored before 0007 read back as made before records were kept (created_at 0, granted_by NULL), which
    maker-checker counts as older than any order and granted by nobody; the downgrade restores the old rows."""
    await _migrate(store_url, "0006")
    engine = create_async_engine(normalize_url(store_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO role_bindings (\"user\", role, apps) VALUES "
                                    "('bob', 'approver', NULL), ('erin', 'approver', '[\"a\"]')"))
    finally:
        await engine.dispose()
    old = await _bindings(store_url)

    upgraded = await Store.open(store_url)
    await upgraded.close()
    after = await _bindings(store_url)
    assert [(b["user"], b["role"], b["created_at"], b["granted_by"]) for b in after] == [
        ("bob", "approver", 0, None), ("erin", "approver", 0, None)]

    await _migrate(store_url, "0006", down=True)
    assert await _bindings(store_url) == old


# --- 0008: component credentials; the shared agent role ends ---------------------------------------------------------

async def test_0008_ends_the_shared_agent_role_and_revokes_its_tokens(store_url: str) -> None:
    """A platform upgraded to 0008 has no `agent` binding left and the tokens of its holders are revoked (its agents
    must join); other users' bindings and tokens are untouched, and the store opens and authenticates."""
    from ballast.errors import Unauthenticated
    from ballast.services.access import authenticate, hash_token

    await _migrate(store_url, "0007")
    engine = create_async_engine(normalize_url(store_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO users (name, created_at) VALUES ('node-agents', 1), ('vera', 1)"))
            await conn.execute(text("INSERT INTO role_bindings (\"user\", role, apps, created_at) VALUES "
                                    "('node-agents', 'agent', NULL, 1), ('vera', 'viewer', NULL, 1)"))
            await conn.execute(text("INSERT INTO tokens (id, \"user\", name, hash, created_at) VALUES "
                                    f"('tok_a', 'node-agents', 'up', '{hash_token('blt_shared')}', 1), "
                                    f"('tok_v', 'vera', 'v', '{hash_token('blt_vera')}', 1)"))
    finally:
        await engine.dispose()

    upgraded = await Store.open(store_url)
    try:
        assert [(b["user"], b["role"]) for b in await _bindings(store_url)] == [("vera", "viewer")]
        with pytest.raises(Unauthenticated, match="revoked"):
            await authenticate(upgraded, "blt_shared", upgraded.clock())
        assert (await authenticate(upgraded, "blt_vera", upgraded.clock())).user == "vera"
    finally:
        await upgraded.close()
