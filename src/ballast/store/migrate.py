"""Bring a store's schema to the newest migration (same migrations for SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def upgrade(engine: AsyncEngine) -> None:
    cfg = alembic_config()

    def _upgrade(sync_conn) -> None:  # type: ignore[no-untyped-def]
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # The store's sessions end a transaction left idle for seconds (a paused leader's); a migration on a
            # loaded machine may pause that long between statements, and must not be cut off half way.
            await conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        await conn.run_sync(_upgrade)
