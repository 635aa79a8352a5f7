"""The store: one async SQLAlchemy engine, read and write transactions.

Writes are serialized in-process (SQLite has one writer anyway) and every
write transaction bumps the global resource version. Watchers (controllers,
long-polls) wake on *topics*: a frequent write says how little it touched
(`Tx.only`), every other write touches everything. So the heartbeats and acknowledgements
that arrive every few seconds wake only those who care about them. Writes
of another replica are noticed by polling the resource version. Audit records
are appended inside the same transaction as the change they describe, so a
change without its record can never be committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ballast.errors import BallastError
from ballast.store import audit_log, lease, migrate
from ballast.store.schema import counters

log = logging.getLogger("ballast.store")
STORE_ID = "store-id"   # counters row: a random number made once per store, shown as the store's id
# A PostgreSQL session that sits in an open transaction this long (its process paused or cut off) is ended by the
# server, so it cannot hold the store's write lock (or the lease row a takeover must update) for long: a leader
# paused inside a write delays its successor by at most this.
IDLE_IN_TRANSACTION_MS = 4_000


class StoreUnavailable(BallastError):
    status = 503


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error means the store cannot be reached (not that a statement was wrong): the API answers 503
    StoreUnavailable, and a client with several replicas' URLs tries another."""
    return isinstance(exc, (StoreUnavailable, OperationalError, InterfaceError, OSError, ConnectionError))


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


EVERYTHING = "*"
# Topics of the frequent writes; everything else touches EVERYTHING.
HEARTBEAT = "heartbeat"              # a node is alive; nothing else changed
INSTANCE_STATUS = "instance-status"  # an agent reported a change of an instance's phase, readiness or revision
ACKS = "acks"                        # a traffic component acknowledged a registry generation
REGISTRY = "registry"                # endpoints changed: what traffic components apply
GRANTS = "grants"                    # agents were granted a change of their instances
ENDPOINT_NOTES = "endpoint-notes"    # an acknowledgement timed out, or a note no longer holds
ACCESS = "access"                    # users, role bindings or tokens changed (also touches everything)
INTENT = "intent"                    # the release engine changed what instances should run
VERIFICATION = "verification"        # a release group's verification window opened, closed or was abandoned


@dataclass
class Tx:
    """A write transaction: `rv` is this transaction's resource version."""

    conn: AsyncConnection
    rv: int
    now: float
    topics: set[str] = field(default_factory=lambda: {EVERYTHING})
    node_grace_seconds: float = 4.0

    def only(self, *topics: str) -> None:
        """This write changes no more than `topics` (and what it `touch`es later): wake only their watchers."""
        self.topics = set(topics)

    def touch(self, *topics: str) -> None:
        self.topics.update(topics)

    async def audit(self, *, actor: str, action: str, resource: str, result: str = "ok",
                    before: str = "", after: str = "", detail: dict[str, Any] | None = None) -> int:
        return await audit_log.append(self.conn, actor=actor, action=action, resource=resource, result=result,
                                      before=before, after=after, detail=detail or {})


class WriterTurns:
    """The store's one writer, taken in turns: urgent writers (the data plane's facts: heartbeats, status reports,
    acknowledgements) go before every other writer waiting, so no other traffic can starve them. FIFO within
    each class; a waiter cancelled after it was handed the turn passes it on."""

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    async def acquire(self, urgent: bool) -> None:
        if not self._held and not self._urgent and not self._normal:
            self._held = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # it was ours already: hand it on
            elif turn in queue:
                queue.remove(turn)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)   # still held: passed straight to the next writer
                    return
        self._held = False

    @asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        await self.acquire(urgent)
        try:
            yield
        finally:
            self.release()


class Store:
    def __init__(self, engine: AsyncEngine, *, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.clock = clock
        self._writer = WriterTurns()
        self._changed = asyncio.Condition()
        self.closing = False
        self.dialect = engine.dialect.name
        self._seq = 0                            # local writes, in order
        self._topic_seq: dict[str, int] = {}     # topic -> seq of the last local write touching it
        self._local_rv = 0                       # rv of the newest local write (a newer one is another replica's)
        self.memo: dict[str, Any] = {}           # values derived from the store, each keyed by what it derives from
        self.node_grace_seconds = 4.0            # nodeGraceSeconds: the platform's setting (core/nodes.py)
        self.hearing_since = 0.0                 # silence counts from here (controllers/hearing.py)
        self.agent_answered: dict[str, float] = {}   # node -> when its agent last answered a probe (hearing.py)
        self.store_id = ""                       # set by `open`: this store's persistent random id
        self.fenced_writes: dict[str, int] = {}  # reason -> writes of a former leader refused (lease.Fenced)
        self._fence_reported: set[tuple[int, str]] = set()   # (epoch, controller) already on the audit record
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, *, migrate_schema: bool = True, name: str = "ballast") -> "Store":
        """`name`: how this process shows in PostgreSQL's pg_stat_activity (application_name)."""
        async_url = normalize_url(url)
        kwargs: dict[str, Any] = {}
        if async_url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True,
                          connect_args={"server_settings": {
                              "application_name": name[:63],
                              "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)}})
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
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.engine.dispose()

    async def _seed(self) -> None:
        async with self.engine.begin() as conn:
            if (await conn.execute(select(counters.c.value).where(counters.c.name == "rv"))).first() is None:
                await conn.execute(insert(counters).values(name="rv", value=0))
            if (await conn.execute(select(counters.c.value).where(counters.c.name == STORE_ID))).first() is None:
                await conn.execute(insert(counters).values(name=STORE_ID, value=secrets.randbits(62) + 1))
            await audit_log.ensure_head(conn)
            value = (await conn.execute(select(counters.c.value).where(counters.c.name == STORE_ID))).scalar_one()
        self.store_id = f"{int(value):016x}"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self, *, urgent: bool = False) -> AsyncIterator[Tx]:
        """One write transaction; `urgent` for the data plane's facts, which wait for no other writer.

        In a leader's controllers (`lease.LEADERSHIP` set), the write first makes sure the lease is still theirs
        at their epoch, holding the lease row until it commits; else it raises `lease.Fenced` and changes nothing.
        """
        lead = lease.LEADERSHIP.get()
        try:
            async with self._writer.turn(urgent):
                async with self.engine.begin() as conn:
                    # Row lock on PostgreSQL (FOR UPDATE via UPDATE) serializes writers across replicas.
                    rv = (await conn.execute(update(counters).where(counters.c.name == "rv")
                                             .values(value=counters.c.value + 1)
                                             .returning(counters.c.value))).scalar_one()
                    tx = Tx(conn=conn, rv=int(rv), now=self.clock(), node_grace_seconds=self.node_grace_seconds)
                    if lead is not None:
                        await lease.check_fence(conn, lead, tx.now)
                    yield tx
                # Writers commit in rv order (the counter row is held to the commit), so a gap below this rv is
                # another replica's writes: they touched topics nobody here knows, so every watcher wakes. Without
                # this, a replica busy with its own writes (heartbeats, acks) would never see another's change.
                foreign = tx.rv > self._local_rv + 1
                self._seq += 1
                self._local_rv = max(self._local_rv, tx.rv)
                for topic in (*tx.topics, EVERYTHING) if foreign else tx.topics:
                    self._topic_seq[topic] = self._seq
                if REGISTRY in tx.topics:
                    # Committed: the registry generation is now tx.rv (services/endpoints.bump_registry). The wall
                    # clock, for lining up with the components' `registry-apply` lines (benchmarks/propagation.py).
                    log.info("registry-commit generation=%d at=%.6f", tx.rv, time.time())
        except lease.Fenced as exc:
            if lead is not None:
                self._note_fenced(lead, exc)
            raise
        except asyncio.CancelledError:
            if lead is not None:   # the leadership ended while this write was under way: nothing of it committed
                task = asyncio.current_task()
                log.info("a write of controller %s was abandoned: its leadership (epoch %d) ended",
                         task.get_name() if task else "?", lead.epoch)
            raise
        async with self._changed:
            self._changed.notify_all()

    def _note_fenced(self, lead: lease.Leadership, exc: lease.Fenced) -> None:
        """Count a refused write of a former leader; put it on the audit record once per controller and epoch, in
        a write of its own that no lease conditions and no cancellation of the controllers stops."""
        self.fenced_writes[exc.reason] = self.fenced_writes.get(exc.reason, 0) + 1
        task = asyncio.current_task()
        controller = task.get_name() if task is not None else "unknown"
        log.warning("refused a write of controller %s: %s", controller, exc.message)
        if (lead.epoch, controller) in self._fence_reported:
            return
        self._fence_reported.add((lead.epoch, controller))
        current = exc.current

        async def record() -> None:
            try:
                async with self.write() as tx:
                    await tx.audit(actor=f"controller/{controller}", action="leader.fenced",
                                   resource=f"lease/{lead.name}", result="refused",
                                   detail={"holder": lead.holder, "epoch": lead.epoch, "reason": exc.reason,
                                           "message": exc.message, "controller": controller,
                                           "currentHolder": current.holder if current else None,
                                           "currentEpoch": current.epoch if current else None})
            except Exception:
                log.exception("could not audit a refused write of a former leader")

        background = asyncio.create_task(record(), name="audit-fenced", context=contextvars.Context())
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    async def release_watchers(self) -> None:
        """Shutting down: every long-poll answers now instead of holding the server open."""
        self.closing = True
        async with self._changed:
            self._changed.notify_all()

    async def resource_version(self) -> int:
        async with self.read() as conn:
            return int((await conn.execute(select(counters.c.value).where(counters.c.name == "rv"))).scalar_one())

    def topic_stamp(self, topic: str) -> int:
        """Moves only when a local write touched exactly this topic (not when one touched everything)."""
        return self._topic_seq.get(topic, 0)

    async def content_mark(self, ignoring: frozenset[str]) -> int | None:
        """A number that moves with every local write touching anything but `ignoring`, and with every write of
        another replica noticed so far; None while another replica has written unnoticed (one query). A
        controller whose inputs only such writes change may skip re-reading them while the mark stands still."""
        mark = max([seq for topic, seq in self._topic_seq.items() if topic not in ignoring], default=0)
        return mark if await self.resource_version() <= self._local_rv else None

    def topic_version(self, topics: Iterable[str]) -> int:
        """A number that grows whenever a write touched one of `topics` (or everything)."""
        return max([self._topic_seq.get(t, 0) for t in topics] + [self._topic_seq.get(EVERYTHING, 0)])

    async def wait_for_topics(self, topics: frozenset[str], after: int, timeout: float) -> int:
        """Return the topics' version once it exceeds `after`, or at `timeout`.

        Local writes wake at once; a write of another replica (its rv is newer than any local one) is
        noticed within a second and wakes every watcher, whatever it touched.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            current = self.topic_version(topics)
            remaining = deadline - loop.time()
            if current > after or remaining <= 0 or self.closing:
                return current
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
                    continue
                except TimeoutError:
                    pass
            if await self.resource_version() > self._local_rv:
                self._local_rv = await self.resource_version()
                self._seq += 1
                self._topic_seq[EVERYTHING] = self._seq
