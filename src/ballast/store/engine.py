"""The store: one async SQLAlchemy engine, read and write transactions.

Writes are serialized in-process (SQLite has one writer anyway) and every
write transaction bumps the global resource version, which watches use to
wake up. Audit records are appended inside the same transaction as the change
they describe, so a change without its record can never be committed.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ballast.errors import BallastError
from ballast.store import audit_log, migrate
from ballast.store.schema import counters


class StoreUnavailable(BallastError):
    status = 503


def normalize_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreUnavailable(f"store URL {url!r} is not a database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False))
    if backend in ("postgresql", "postgres"):
        return str(parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False))
    raise StoreUnavailable(f"store URL {url!r}: expected sqlite:///PATH or postgresql://...")


@dataclass
class Tx:
    """A write transaction: `rv` is this transaction's resource version."""

    conn: AsyncConnection
    rv: int
    now: float

    async def audit(self, *, actor: str, action: str, resource: str, result: str = "ok",
                    before: str = "", after: str = "", detail: dict[str, Any] | None = None) -> int:
        return await audit_log.append(self.conn, actor=actor, action=action, resource=resource, result=result,
                                      before=before, after=after, detail=detail or {})


class Store:
    def __init__(self, engine: AsyncEngine, *, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.clock = clock
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.closing = False
        self.dialect = engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, migrate_schema: bool = True) -> "Store":
        async_url = normalize_url(url)
        kwargs: dict[str, Any] = {}
        if async_url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        engine = create_async_engine(async_url, **kwargs)
        if async_url.startswith("sqlite"):
            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        store = cls(engine)
        try:
            if migrate_schema:
                await migrate.upgrade(engine)
            await store._seed()
        except (OperationalError, OSError) as exc:
            await engine.dispose()
            raise StoreUnavailable(f"cannot open store {make_url(async_url).render_as_string()}: {exc}") from exc
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def _seed(self) -> None:
        async with self.engine.begin() as conn:
            if (await conn.execute(select(counters.c.value).where(counters.c.name == "rv"))).first() is None:
                await conn.execute(insert(counters).values(name="rv", value=0))
            await audit_log.ensure_head(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        async with self._write_lock:
            async with self.engine.begin() as conn:
                # Row lock on PostgreSQL (FOR UPDATE via UPDATE) serializes writers across replicas.
                await conn.execute(update(counters).where(counters.c.name == "rv").values(value=counters.c.value + 1))
                rv = (await conn.execute(select(counters.c.value).where(counters.c.name == "rv"))).scalar_one()
                yield Tx(conn=conn, rv=int(rv), now=self.clock())
        async with self._changed:
            self._changed.notify_all()

    async def release_watchers(self) -> None:
        """Shutting down: every long-poll answers now instead of holding the server open."""
        self.closing = True
        async with self._changed:
            self._changed.notify_all()

    async def resource_version(self) -> int:
        async with self.read() as conn:
            return int((await conn.execute(select(counters.c.value).where(counters.c.name == "rv"))).scalar_one())

    async def wait_for_change(self, after: int, timeout: float) -> int:
        """Return the resource version once it exceeds `after`, or at `timeout`.

        Woken at once by writes of this process; polls for writes of other replicas.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            current = await self.resource_version()
            remaining = deadline - asyncio.get_running_loop().time()
            if current > after or remaining <= 0 or self.closing:
                return current
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass
