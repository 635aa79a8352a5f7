"""Admission: what a request may cost before anyone knows who sent it.

The control plane's store has one writer; agents' heartbeats and acknowledgements go through it. A stranger's
request must therefore cost neither a write nor a body read: the outermost middleware authenticates from the
headers alone, answers 401 at once, and counts the refusal in memory (per source, rate-limited: a source that
keeps knocking with unknown tokens gets 429 before they are looked up). Refusals reach the audit log aggregated — one
record per flush that says who knocked how often — because the audit log records who did what, not every
stranger's knock. Known principals' bodies are then bounded in size (413) and in time between chunks (408).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ballast.errors import Unauthenticated
from ballast.services.access import Principal, authenticate, hash_token
from ballast.store.engine import Store

log = logging.getLogger("ballast.api")

MAX_BODY_BYTES = 4 * 2**20                 # every request but an artifact push
BODY_IDLE_SECONDS = 15.0                   # longest wait for the next chunk of a body
REFUSALS_PER_SOURCE = 20.0                 # refused requests a second a source may send before it is throttled
REFUSAL_BURST = 200.0
MAX_SOURCES = 10_000                       # distinct sources (and valid tokens) remembered
VALID_LATELY_SECONDS = 600.0               # a token valid this recently is looked up even from a throttled source

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Source:
    tokens: float = REFUSAL_BURST
    stamp: float = 0.0
    refused: dict[str, int] = field(default_factory=dict)    # reason -> count since the last flush
    paths: list[str] = field(default_factory=list)           # a few samples, for the record


class Refusals:
    """In-memory tally of refused requests per source: totals for /metrics, a token bucket per source, and
    what the next aggregated audit record will say."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.totals: dict[str, int] = {}
        self.sources: dict[str, _Source] = {}
        self.dropped_sources = 0

    def allow(self, source: str) -> bool:
        """False once `source` has been refused faster than its bucket refills."""
        entry = self.sources.get(source)
        if entry is None:
            return True
        now = self.clock()
        entry.tokens = min(REFUSAL_BURST, entry.tokens + (now - entry.stamp) * REFUSALS_PER_SOURCE)
        entry.stamp = now
        return entry.tokens >= 1.0

    def note(self, source: str, reason: str, path: str) -> None:
        self.totals[reason] = self.totals.get(reason, 0) + 1
        entry = self.sources.get(source)
        if entry is None:
            if len(self.sources) >= MAX_SOURCES:
                self.dropped_sources += 1
                return
            entry = self.sources[source] = _Source(stamp=self.clock())
        entry.tokens = max(0.0, entry.tokens - 1.0)
        entry.refused[reason] = entry.refused.get(reason, 0) + 1
        if len(entry.paths) < 5 and path not in entry.paths:
            entry.paths.append(path[:120])

    def drain(self) -> dict[str, Any] | None:
        """What has been refused since the last drain (None if nothing), and forget it."""
        if not self.sources and not self.dropped_sources:
            return None
        counted = {s: e for s, e in self.sources.items() if e.refused}
        busiest = sorted(counted.items(), key=lambda kv: -sum(kv[1].refused.values()))[:50]
        summary = {"sources": {s: {"refused": e.refused, "paths": e.paths} for s, e in busiest},
                   "sourceCount": len(counted), "unlistedSources": self.dropped_sources,
                   "refused": sum(sum(e.refused.values()) for e in counted.values())}
        self.sources.clear()
        self.dropped_sources = 0
        return summary if counted else None


async def _answer(send: Send, status: int, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


def _source(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Authenticate:
    """Outermost: every /v1 call and /metrics is authenticated from its headers before its body is read."""

    OPEN = ("/healthz",)

    def __init__(self, app: Any, store: Store, refusals: Refusals) -> None:
        self.app = app
        self.store = store
        self.refusals = refusals
        self.valid_lately: dict[str, float] = {}     # token hash -> when it last authenticated

    def _vouch(self, token: str) -> None:
        if len(self.valid_lately) >= MAX_SOURCES:
            self.valid_lately.clear()
        self.valid_lately[hash_token(token)] = self.refusals.clock()

    def _vouched(self, token: str) -> bool:
        seen = self.valid_lately.get(hash_token(token))
        return seen is not None and self.refusals.clock() - seen < VALID_LATELY_SECONDS

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            return await self.app(scope, receive, send)
        source = _source(scope)
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else None
        # Only looking up an unknown token costs a store read: a source refused too often gets no more lookups,
        # but tokens that were valid lately (agents, people behind the same address) are still looked up.
        if token and not self.refusals.allow(source) and not self._vouched(token):
            self.refusals.note(source, "throttled", scope["path"])
            return await _answer(send, 429, {"error": "TooManyRequests", "message": "too many refused requests "
                                             "from this address; slow down"}, ((b"retry-after", b"5"),))
        try:
            who = await authenticate(self.store, token, self.store.clock())
        except Unauthenticated as exc:
            self.refusals.note(source, "unauthenticated", scope["path"])
            return await _answer(send, 401, exc.to_dict(), ((b"www-authenticate", b"Bearer"),))
        if token:
            self._vouch(token)
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)


class BoundBody:
    """A known principal's body: at most `limit` bytes (413 before it is read when Content-Length says so, else
    while it streams) and no chunk later than BODY_IDLE_SECONDS after the one before (408). The route sees a
    disconnected client and its answer is replaced by the refusal."""

    def __init__(self, app: Any, limits: dict[tuple[str, str], int]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.limits.get((scope["method"], scope["path"]), MAX_BODY_BYTES)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _answer(send, 413, _too_large(limit), ((b"connection", b"close"),))
        seen = 0
        refusal: tuple[int, dict[str, Any]] | None = None
        started = False

        async def bounded_receive() -> dict[str, Any]:
            nonlocal seen, refusal
            if refusal is not None:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), BODY_IDLE_SECONDS)
            except asyncio.TimeoutError:
                refusal = (408, {"error": "RequestTimeout", "message": "no part of the request body arrived for "
                                 f"{BODY_IDLE_SECONDS:g} s"})
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refusal = (413, _too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if refusal is not None and not started:
                return  # the route's answer to a body it never got whole
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None and not started:
            await _answer(send, *refusal, ((b"connection", b"close"),))


def _too_large(limit: int) -> dict[str, Any]:
    return {"error": "PayloadTooLarge", "message": f"the request body exceeds this route's limit of {limit:,} bytes"}


async def record_refusals(store: Store, refusals: Refusals, stop: asyncio.Event, every: float = 60.0) -> None:
    """Write what was refused since the last time as one audit record, every `every` seconds and at the end."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass
        summary = refusals.drain()
        if summary is not None:
            try:
                async with store.write() as tx:
                    await tx.audit(actor="anonymous", action="refused-requests", resource="api",
                                   result=f"refused: {summary['refused']} request(s) from {summary['sourceCount']} "
                                          "source(s)", detail=summary)
            except Exception:
                log.exception("could not record refused requests")
        if stop.is_set():
            return


def principal_of(scope_state: dict[str, Any]) -> Principal | None:
    """The principal `Authenticate` found for this request, if it ran."""
    who = scope_state.get("principal")
    return who if isinstance(who, Principal) else None
