"""A load generator that counts every failure: `ballast load`, the lossless tests and the benchmarks.

Each worker holds one keep-alive HTTP/1.1 connection and sends requests back
to back; every request is recorded with its start time, latency and outcome.
A failure is anything but a 2xx: another status, a reset or closed
connection, a timeout, a refused connection, an answer it cannot parse (an
oversized header, a malformed Content-Length), or any exception at all: that
request counts as failed and the worker goes on with a new connection, so no
worker can end silently. Nothing is retried and nothing is hidden: a request
that failed is counted once, as what it was, at the time it was sent.

Plain asyncio streams rather than an HTTP library: the point is to see
exactly what happened on the wire, at a rate a Python client can reach.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Target:
    name: str
    ip: str
    port: int
    host_header: str
    paths: tuple[str, ...] = ("/",)    # taken in turn, so a mix of paths is sent in a fixed ratio
    connections: int = 8
    headers: tuple[tuple[str, str], ...] = ()   # sent with every request (e.g. a color: baggage)


@dataclass
class Sample:
    at: float           # monotonic start time
    seconds: float      # latency
    ok: bool
    failure: str = ""   # what went wrong, when not ok


@dataclass
class Tally:
    target: str
    samples: list[Sample] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    evidence: list[tuple[float, str, str]] = field(default_factory=list)   # (wall time, kind, what was said)
    workers: int = 0            # started
    workers_ended: int = 0      # returned before the load was stopped (never, unless something is wrong)

    def fail(self, began: float, now: float, kind: str, evidence: str = "") -> None:
        self.failures[kind] += 1
        self.samples.append(Sample(began, now - began, False, kind))
        if evidence and len(self.evidence) < 20:
            self.evidence.append((time.time(), kind, evidence))

    @property
    def requests(self) -> int:
        return len(self.samples)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class _Failed(Exception):
    def __init__(self, kind: str, evidence: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.evidence = evidence


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                    timeout: float) -> bool:
    """Send one request, read one response; return whether the server keeps the connection open."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise _Failed("junk response", lines[0][:200])
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip().lower()
    declared = headers.get("content-length", "0") or "0"
    if not declared.isdigit():
        raise _Failed("malformed Content-Length", declared[:100])
    length = int(declared)
    if length > MAX_BODY:
        raise _Failed("oversized response")
    body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    if not 200 <= status < 300:
        raise _Failed(f"HTTP {status}", body[:300].decode(errors="replace"))
    return headers.get("connection") != "close"


async def _worker(target: Target, tally: Tally, stop: asyncio.Event, offset: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    extra = "".join(f"{name}: {value}\r\n" for name, value in target.headers)
    requests = [f"GET {p} HTTP/1.1\r\nHost: {target.host_header}\r\nUser-Agent: ballast-load\r\n{extra}\r\n".encode()
                for p in target.paths]
    turn = offset
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    tally.workers += 1
    try:
        while not stop.is_set():
            began = loop.time()
            request = requests[turn % len(requests)]
            turn += 1
            kept = False
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(target.ip, target.port), timeout)
                kept = await _exchange(conn[0], conn[1], request, timeout)
                tally.samples.append(Sample(began, loop.time() - began, True))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every exception is this request's failure; the worker goes on
                kind, evidence, pause = _failure(exc, timeout)
                tally.fail(began, loop.time(), kind, evidence)
                if pause:
                    await asyncio.sleep(0.01)
            if not kept and conn is not None:
                conn[1].close()
                conn = None
    finally:
        if conn is not None:
            conn[1].close()
        if not stop.is_set():
            tally.workers_ended += 1


def _failure(exc: Exception, timeout: float) -> tuple[str, str, bool]:
    """(what to count it as, what the server said, whether to pause before the next try)."""
    if isinstance(exc, _Failed):
        return exc.kind, exc.evidence, False
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-response", "", False
    if isinstance(exc, TimeoutError):
        return f"timeout ({timeout:g}s)", "", False
    if isinstance(exc, asyncio.LimitOverrunError):
        return "oversized response header", "", False
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", "", True
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection reset", "", False
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}", "", True
    return f"unexpected {type(exc).__name__}", str(exc)[:200], True


class Load:
    """Load against several targets at once, until `stop()`; the tallies fill as it runs."""

    def __init__(self, targets: Sequence[Target], *, timeout: float = 10.0) -> None:
        self.targets = list(targets)
        self.timeout = timeout
        self.tallies = {t.name: Tally(t.name) for t in targets}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for t in self.targets:
            for k in range(t.connections):
                self._tasks.append(asyncio.create_task(_worker(t, self.tallies[t.name], self._stop, k, self.timeout)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.tallies.values())

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.tallies.values())

    def failures(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for t in self.tallies.values():
            out.update({f"{t.target}: {k}": v for k, v in t.failures.items()})
        return out

    @property
    def workers_alive(self) -> int:
        """Workers still sending: every worker started, until `stop()`."""
        return sum(t.workers - t.workers_ended for t in self.tallies.values())

    @property
    def workers_started(self) -> int:
        return sum(t.workers for t in self.tallies.values())

    def window(self, since: float | None = None, until: float | None = None) -> "Window":
        """What was sent in [since, until) (monotonic clock): requests, failures and what they were."""
        low = since if since is not None else float("-inf")
        high = until if until is not None else float("inf")
        inside = [s for t in self.tallies.values() for s in t.samples if low <= s.at < high]
        return Window(len(inside), Counter(s.failure for s in inside if not s.ok))

    def evidence(self) -> list[tuple[float, str, str]]:
        """Up to 20 failed answers per target, with the time and what the server said."""
        return sorted(e for t in self.tallies.values() for e in t.evidence)

    def latencies(self, since: float | None = None, until: float | None = None) -> list[float]:
        """Latencies (seconds) of requests that started in [since, until) (monotonic clock)."""
        low = since if since is not None else float("-inf")
        high = until if until is not None else float("inf")
        return [s.seconds for t in self.tallies.values() for s in t.samples if low <= s.at < high]


@dataclass(frozen=True)
class Window:
    requests: int
    failures: Counter[str]

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[rank]


class BackgroundLoad:
    """A `Load` on its own event loop in a thread, for synchronous callers (tests, benchmarks)."""

    def __init__(self, targets: Sequence[Target], *, timeout: float = 10.0) -> None:
        import threading

        self.load = Load(targets, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self.load.start)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    def __enter__(self) -> Load:
        self._thread.start()
        self._ready.wait(10)
        return self.load

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.load.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
