"""The gateway's scheduled-task executor: claims shards from the control plane and calls them through the mesh.

Each shard is one call through the gateway's own HAProxy (its `tasks` frontend, a UNIX socket in its data dir),
so TrafficRules whose caller is `gateway`, isolation groups and every data-plane guarantee apply to batch calls
exactly as to any call. The call carries the shard's index and count (headers and query), its color (`baggage`)
and an idempotency key (TASK/RUN/SHARD). Connection errors and 5xx are attempted again, up to the shard's
`retries`, never past its lease. The outcome (status, duration, the instance that served it) is reported until
the control plane answers, so a control plane that is down or restarting loses no outcome and, since an outcome
is recorded once, duplicates none.

Delivery to the app is AT LEAST ONCE: a gateway that dies mid-call leaves its shard to be claimed again when
the lease ends, under the same idempotency key (apps that must do a shard's work once key it by that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

import httpx

from ballast.client import ApiError, Client
from ballast.core.scheduled_tasks import RETRY_PAUSE_MAX, retryable
from ballast.wire.tasks import (IDEMPOTENCY_HEADER, SERVED_BY_HEADER, SHARD_HEADER, SHARDS_HEADER, ShardCall,
                                ShardClaim, ShardOutcome)

log = logging.getLogger("ballast.gateway.tasks")
CLAIM_INTERVAL = 0.5       # between claims while there is nothing to do
REPORT_BACKOFF_MAX = 5.0   # the longest pause between two attempts to report an outcome


@dataclass(frozen=True)
class ExecutorSettings:
    gateway: str
    socket: str                    # the HAProxy task frontend's UNIX socket
    concurrency: int = 64          # shards in flight at once


def shard_request(call: ShardCall) -> tuple[str, str, dict[str, str]]:
    """(method, URL, headers) of a shard's call. Pure."""
    query = urlencode({"shard": call.index, "shards": call.shards})
    headers = {"Host": call.service, SHARD_HEADER: str(call.index), SHARDS_HEADER: str(call.shards),
               IDEMPOTENCY_HEADER: call.idempotency_key, "Connection": "close"}
    if call.tags:
        headers["baggage"] = ",".join(f"{k}={v}" for k, v in sorted(call.tags.items()))
    return call.method, f"http://{call.service}{call.path}?{query}", headers


class TaskExecutor:
    def __init__(self, client: Client, settings: ExecutorSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        # One connection per call (no keep-alive): an old HAProxy worker after a reload never routes a call.
        self.http = httpx.AsyncClient(transport=transport or httpx.AsyncHTTPTransport(
            uds=settings.socket, limits=httpx.Limits(max_keepalive_connections=0)))
        self.in_hand: set[tuple[int, int]] = set()   # (run, shard) being called or reported by this process
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                claimed = await self._claim()
                if not claimed:
                    try:
                        await asyncio.wait_for(stop.wait(), CLAIM_INTERVAL)
                    except TimeoutError:
                        pass
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.http.aclose()

    async def _claim(self) -> int:
        free = self.settings.concurrency - len(self.in_hand)
        if free <= 0:
            return 0
        try:
            answer = await self.client.post(f"/v1/gateways/{self.settings.gateway}/task-shards/claim",
                                            ShardClaim(max=min(free, 100)).to_json())
        except Exception as exc:   # the control plane is down or restarting: claim again later
            log.debug("claiming task shards failed: %s", exc)
            return 0
        started = 0
        for item in answer.get("items", []):
            call = ShardCall.from_json(item)
            key = (call.run_id, call.index)
            if key in self.in_hand:   # our lease ran out while we still report it: that report will record it
                continue
            self.in_hand.add(key)
            task = asyncio.create_task(self._execute(call), name=f"shard {call.idempotency_key}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            started += 1
        return started

    async def _execute(self, call: ShardCall) -> None:
        try:
            async with self.slots:
                outcome = await self.call(call)
            await self.report(outcome)
        finally:
            self.in_hand.discard((call.run_id, call.index))

    async def call(self, call: ShardCall) -> ShardOutcome:
        """Attempt the call until it answers below 500 or its retries are spent, never starting an attempt that
        could outlast the lease (its deadline is measured from the claim, on this process's clock)."""
        method, url, headers = shard_request(call)
        began = self.clock()
        deadline = began + call.lease_seconds
        attempts, status, instance, error = 0, None, None, ""
        while True:
            attempts += 1
            try:
                response = await self.http.request(method, url, headers=headers, timeout=call.timeout_seconds)
                status, error = response.status_code, ""
                instance = response.headers.get(SERVED_BY_HEADER) or None
            except httpx.HTTPError as exc:
                status, instance, error = None, None, f"{type(exc).__name__}: {exc}"[:500]
            if not retryable(status) or attempts > call.retries:
                break
            pause = min(RETRY_PAUSE_MAX, 0.2 * 2 ** (attempts - 1))
            if self.clock() + pause + call.timeout_seconds > deadline:
                error = (error or f"HTTP {status}") + "; no time left in the lease for another attempt"
                break
            await asyncio.sleep(pause)
        succeeded = status is not None and not retryable(status)
        return ShardOutcome(run_id=call.run_id, index=call.index, outcome="succeeded" if succeeded else "failed",
                            status_code=status, duration_ms=round((self.clock() - began) * 1000, 3),
                            attempts=attempts, instance=instance, error=error or ("" if succeeded else f"HTTP {status}"))

    async def report(self, outcome: ShardOutcome) -> None:
        """Until the control plane answers: a crash or restart of it loses no outcome. A refusal (the shard was
        claimed by another gateway since, or is gone) is an answer too: nothing more to say."""
        pause = 0.2
        while True:
            try:
                await self.client.post(f"/v1/gateways/{self.settings.gateway}/task-shards/report", outcome.to_json())
                return
            except ApiError as exc:
                if exc.status < 500:
                    log.warning("outcome of shard %d of run %d refused: %s", outcome.index, outcome.run_id, exc.message)
                    return
            except Exception as exc:
                log.debug("reporting shard %d of run %d failed: %s", outcome.index, outcome.run_id, exc)
            await asyncio.sleep(pause)
            pause = min(REPORT_BACKOFF_MAX, pause * 2)
