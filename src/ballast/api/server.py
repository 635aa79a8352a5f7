"""`ballast server`: the control-plane process — store, API and controllers in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ballast.api.admission import record_refusals
from ballast.api.app import create_app
from ballast.controllers import (checkpoints, endpoints, hearing, node_lifecycle, orders, releases, scheduler, tasks,
                                 verification)
from ballast.controllers.checkpoints import AuditAnchor
from ballast.controllers.leadership import LeaseSettings, lead
from ballast.core.archive import ArchiveLimits
from ballast.core.nodes import DisruptionPolicy
from ballast.core.outbound import OutboundPolicy
from ballast.services.access import TokenPolicy, bootstrap_admin
from ballast.store.engine import Store

log = logging.getLogger("ballast.server")


def write_secret(path: Path, content: str) -> None:
    """Write a file only its owner can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.replace(tmp, path)


HEAD_SECONDS = 10.0   # from a connection's first byte (or its opening) to a request's complete head


class _HeadTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's head: a client that opens a connection and
    sends nothing, or drips its headers (slowloris), is closed instead of holding a connection open for ever."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(HEAD_SECONDS, self._head_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the body has its own bound (BoundBody)
            self._cancel_head_timer()
        elif self._head_timer is None and data:
            self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server that first lets agents' long-polls answer, so shutdown is prompt."""

    def __init__(self, config: uvicorn.Config, store: Store) -> None:
        super().__init__(config)
        self.store = store

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, minus re-raising SIGTERM/SIGINT once it has shut down: that would kill the process before
        `serve` finishes (the last audit checkpoint, closing the store)."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await self.store.release_watchers()
        await super().shutdown(sockets)


def replica_name(host: str, port: int) -> str:
    """How this replica names itself as a lease holder: where it listens, and its process."""
    where = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    return f"{where}:{port}/{os.getpid()}"


async def serve(store_url: str, host: str, port: int, bootstrap_token_file: Path | None,
                token_policy: TokenPolicy = TokenPolicy(), anchor: AuditAnchor | None = None,
                disruption: DisruptionPolicy = DisruptionPolicy(), *, artifact_limits: ArchiveLimits = ArchiveLimits(),
                outbound: OutboundPolicy = OutboundPolicy(), lease_settings: LeaseSettings = LeaseSettings()) -> None:
    """Serve the API until a signal; run the controllers only while this replica holds the controllers lease
    (controllers/leadership.py): any number of replicas may share one PostgreSQL store."""
    if anchor is None:
        log.warning("the audit log is NOT anchored: without --audit-key no checkpoint is signed, and whoever can "
                    "write the database can rewrite the audit chain undetected")
    else:
        anchor.file.open_for_append()   # before anything else: a second writer is refused at once
    holder = replica_name(host, port)
    store = await Store.open(store_url, name=f"ballast-server {holder}")
    log.info("replica %s of store %s", holder, store.store_id)
    store.node_grace_seconds = disruption.grace_seconds
    token = await bootstrap_admin(store)
    if token is not None:
        if bootstrap_token_file is None:
            print(f"bootstrap admin token (shown once): {token}", flush=True)
        else:
            write_secret(bootstrap_token_file, token + "\n")
            log.warning("empty store: created user 'admin'; its token is in %s", bootstrap_token_file)
    if outbound.allowed:
        log.warning("calls on users' behalf (webhooks, PromQL) may aim at %s", ", ".join(map(str, outbound.allowed)))
    app = create_app(store, token_policy=token_policy, audit_anchor=anchor, artifact_limits=artifact_limits,
                     outbound=outbound, replica=holder)
    stop = asyncio.Event()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off", http=_HeadTimeoutH11)
    server = _Server(config, store)

    def start_controllers(halt: asyncio.Event) -> list[asyncio.Task[None]]:
        store.hearing_since = max(store.hearing_since, store.clock())   # a new leader judges no silence it did not hear
        return [asyncio.create_task(scheduler.run(store, halt), name="scheduler"),
                asyncio.create_task(releases.run(store, halt), name="releases"),
                asyncio.create_task(endpoints.run(store, halt, policy=disruption), name="registry"),
                asyncio.create_task(orders.run(store, halt), name="orders"),
                asyncio.create_task(verification.run(store, halt, policy=outbound), name="verification"),
                asyncio.create_task(tasks.run(store, halt), name="tasks"),
                asyncio.create_task(node_lifecycle.run(store, halt, policy=disruption), name="node-lifecycle"),
                asyncio.create_task(hearing.probe_quiet_agents(store, halt), name="agent-probe")]

    controllers = [asyncio.create_task(lead(store, stop, holder, start_controllers, lease_settings),
                                       name="leadership"),
                   asyncio.create_task(hearing.run(store, stop), name="hearing")]
    refusals = asyncio.create_task(record_refusals(store, app.state.refusals, stop), name="refusals")
    signing = asyncio.Event()   # set last: the final checkpoint signs every record written before it
    writer = asyncio.create_task(checkpoints.run(store, signing, anchor), name="checkpoints") if anchor else None
    try:
        await server.serve()
    finally:
        stop.set()   # the leadership stops its controllers, then lets its lease expire for a standby to take
        await asyncio.wait(controllers, timeout=10)
        for task in controllers:
            task.cancel()
        await asyncio.gather(*controllers, return_exceptions=True)
        await asyncio.wait([refusals], timeout=5)  # its last record: what was refused since the one before
        refusals.cancel()
        signing.set()
        if anchor is not None and writer is not None:   # not cancelled: it signs what came in last
            try:
                await asyncio.wait_for(writer, 10.0)
            except Exception:
                log.exception("the last audit checkpoint was not written")
            anchor.file.close()
        await store.close()
