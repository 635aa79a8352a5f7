"""Alembic environment: runs migrations over the same async engine the server uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from ballast.store.schema import metadata

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


# The server hands in a sync connection (through run_sync); the alembic CLI gives a URL.
_handed_in = config.attributes.get("connection")
if _handed_in is not None:
    _run(_handed_in)
else:
    asyncio.run(_main())
