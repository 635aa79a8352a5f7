"""`ballast server`: the control-plane process — store, API and controllers in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import uvicorn

from ballast.api.app import create_app
from ballast.controllers import checkpoints, endpoints, orders, releases, scheduler, verification
from ballast.controllers.checkpoints import AuditAnchor
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


async def serve(store_url: str, host: str, port: int, bootstrap_token_file: Path | None,
                token_policy: TokenPolicy = TokenPolicy(), anchor: AuditAnchor | None = None) -> None:
    if anchor is None:
        log.warning("the audit log is NOT anchored: without --audit-key no checkpoint is signed, and whoever can "
                    "write the database can rewrite the audit chain undetected")
    else:
        anchor.file.open_for_append()   # before anything else: a second writer is refused at once
    store = await Store.open(store_url)
    token = await bootstrap_admin(store)
    if token is not None:
        if bootstrap_token_file is None:
            print(f"bootstrap admin token (shown once): {token}", flush=True)
        else:
            write_secret(bootstrap_token_file, token + "\n")
            log.warning("empty store: created user 'admin'; its token is in %s", bootstrap_token_file)
    app = create_app(store, token_policy=token_policy, audit_anchor=anchor)
    stop = asyncio.Event()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off")
    server = _Server(config, store)
    controllers = [asyncio.create_task(scheduler.run(store, stop), name="scheduler"),
                   asyncio.create_task(releases.run(store, stop), name="releases"),
                   asyncio.create_task(endpoints.run(store, stop), name="registry"),
                   asyncio.create_task(orders.run(store, stop), name="orders"),
                   asyncio.create_task(verification.run(store, stop), name="verification")]
    writer = asyncio.create_task(checkpoints.run(store, stop, anchor), name="checkpoints") if anchor else None
    try:
        await server.serve()
    finally:
        stop.set()
        for task in controllers:
            task.cancel()
        await asyncio.gather(*controllers, return_exceptions=True)
        if anchor is not None and writer is not None:   # not cancelled: it signs what came in last
            try:
                await asyncio.wait_for(writer, 10.0)
            except Exception:
                log.exception("the last audit checkpoint was not written")
            anchor.file.close()
        await store.close()
