"""Cumulative request counts per series, read from the proxies of one component (a node's sidecars, a gateway).

Every `interval` each probe (one HAProxy) is read with `ballast stats`; what
changed since its last reading is added to the series (instance, revision)
it belongs to *now*. So totals survive what a proxy does not: a seamless
reload or a restart starts a new worker counting from zero (its epoch
changes; everything it counted since is new), and an in-place upgrade moves
the instance's later requests to the new revision — the agent reads the
probe once more right after the old revision's requests have drained
(`poll`), before the new revision starts. A worker that was already running
when this process started is taken as it is: what it counted before is not
attributed to anything.

A short history of totals answers windows (`window`): what each series
served in the last N seconds. Totals are held for `retention_seconds` after
their probe goes, so a retired instance's last numbers stay readable.

Known gap: what an old worker still serves after a reload, past its last
reading, is not counted (reloads happen when services or routes are added
or removed, not when endpoints change).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from ballast.core.request_metrics import ZERO, Counts, Series, window
from ballast.dataplane import runtime
from ballast.dataplane.request_stats import (SERVICE_PREFIX, SIDECAR_PREFIX, DumpError, gateway_counts, parse_dump,
                                             sidecar_counts, stat_servers)
from ballast.dataplane.runtime import RuntimeApiError
from ballast.dataplane.tables import parse_stat

log = logging.getLogger("ballast.requeststats")

Reader = Callable[[], Awaitable[tuple[str, Mapping[str, Counts]]]]   # (epoch, counts by the probe's own keys)
Labeler = Callable[[str], Series | None]                              # a probe key -> the series it counts now
SERVER_ROWS = "show stat -1 4 -1"     # every proxy's server rows (type 4), none of the frontends or backends


async def read_sidecar(admin_socket: Path | str) -> tuple[str, dict[str, Counts]]:
    """What an instance's endpoint has served, as its sidecar's running worker counted it (one key: "")."""
    dump = parse_dump(await runtime.command(admin_socket, f"ballast stats {SIDECAR_PREFIX}"))
    counts = sidecar_counts(dump)
    return dump.epoch, ({"": counts} if counts is not None else {})


async def read_gateway(admin_socket: Path | str) -> tuple[str, dict[str, Counts]]:
    """What a gateway sent to each instance, keyed "BACKEND SERVER". Its servers come and go at run time, where
    HAProxy's Lua does not see them: their counters are read from `show stat`."""
    dump = parse_dump(await runtime.command(admin_socket, f"ballast stats {SERVICE_PREFIX}"))
    servers = stat_servers(parse_stat(await runtime.command(admin_socket, SERVER_ROWS)))
    return dump.epoch, {f"{backend} {server}": c for (backend, server), c in gateway_counts(dump, servers).items()}


@dataclass
class _Probe:
    read: Reader
    label: Labeler
    epoch: str | None = None
    last: dict[str, Counts] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RequestStats:
    def __init__(self, source: str, *, interval: float = 1.0, history_seconds: float = 300.0,
                 retention_seconds: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.interval = interval
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.started_at = clock()
        # Consumers compare epochs of two readings: a different one means these totals restarted from zero.
        self.epoch = f"{self.started_at:.6f}"
        self._probes: dict[str, _Probe] = {}
        self._totals: dict[Series, Counts] = {}
        self._orphaned: dict[Series, float] = {}         # series whose probe went, and when
        self._history: deque[tuple[float, dict[Series, Counts]]] = deque(maxlen=max(2, int(history_seconds / interval) + 1))
        self.read_errors = 0
        self.last_errors: dict[str, str] = {}

    # --- probes ------------------------------------------------------------------------------
    def add(self, name: str, read: Reader, label: Labeler) -> None:
        if name not in self._probes:
            self._probes[name] = _Probe(read, label)

    def remove(self, name: str) -> None:
        """Stop reading `name`; its series keep their totals for the retention period."""
        probe = self._probes.pop(name, None)
        self.last_errors.pop(name, None)
        if probe is None:
            return
        now = self.clock()
        for key in probe.last:
            series = probe.label(key)
            if series is not None:
                self._orphaned[series] = now

    async def poll(self, name: str) -> None:
        """Read one probe now and add what it counted since its last reading."""
        probe = self._probes.get(name)
        if probe is None:
            return
        async with probe.lock:
            try:
                epoch, counts = await probe.read()
            except (RuntimeApiError, DumpError) as exc:
                self.read_errors += 1
                self.last_errors[name] = str(exc)[:300]
                return
            self.last_errors.pop(name, None)
            if probe.epoch is None and not self._counts_from_zero(epoch):
                probe.epoch, probe.last = epoch, dict(counts)   # running before we watched: start from here
                return
            restarted = epoch != probe.epoch
            for key, reading in counts.items():
                delta = window(reading, None if restarted else probe.last.get(key))
                if delta == ZERO:
                    continue
                series = probe.label(key)
                if series is not None:
                    self._totals[series] = self._totals.get(series, ZERO) + delta
                    self._orphaned.pop(series, None)
            probe.epoch, probe.last = epoch, dict(counts)

    def _counts_from_zero(self, epoch: str) -> bool:
        """Did this worker start after we did (then everything it counted is ours to add)?"""
        try:
            return float(epoch) >= self.started_at
        except ValueError:
            return False

    async def refresh(self) -> None:
        """Read every probe now (for a reader that needs the counts of this moment, not of the last interval)."""
        await asyncio.gather(*(self.poll(name) for name in list(self._probes)))

    async def poll_all(self) -> None:
        await self.refresh()
        now = self.clock()
        for series, since in list(self._orphaned.items()):
            if now - since > self.retention_seconds:
                self._orphaned.pop(series, None)
                self._totals.pop(series, None)
        self._history.append((now, dict(self._totals)))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = self.clock()
            try:
                await self.poll_all()
            except Exception:  # never let telemetry take the component down
                log.exception("reading request statistics failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.05, self.interval - (self.clock() - began)))
            except TimeoutError:
                pass

    # --- reading -------------------------------------------------------------------------------
    def totals(self) -> dict[Series, Counts]:
        return dict(self._totals)

    def window(self, seconds: float, app: str | None = None) -> tuple[float, dict[Series, Counts]]:
        """What each series (of `app`, or all) served in (about) the last `seconds`: (the seconds covered, counts)."""
        now = self.clock()
        base_at, base = self.started_at, {}   # type: tuple[float, dict[Series, Counts]]
        # (when this process started within the window, everything counted so far)
        older = [entry for entry in self._history if entry[0] <= now - seconds]
        if older:
            base_at, base = older[-1]
        elif self._history and now - self.started_at > seconds:
            base_at, base = self._history[0]   # asked for more than the history holds: as much as it holds
        return now - base_at, {s: window(c, base.get(s)) for s, c in self._totals.items()
                               if app is None or s.app == app}

    def to_json(self, app: str | None = None, window_seconds: float | None = None) -> dict[str, Any]:
        totals = {s: c for s, c in self._totals.items() if app is None or s.app == app}
        covered, recent = self.window(window_seconds, app) if window_seconds else (None, {})
        series = []
        for s in sorted(totals, key=lambda s: (s.app, s.instance, s.revision)):
            item: dict[str, Any] = {"app": s.app, "instance": s.instance, "revision": s.revision, "cell": s.cell,
                                    "total": totals[s].to_json()}
            if window_seconds:
                item["window"] = recent.get(s, ZERO).to_json()
            series.append(item)
        return {"source": self.source, "epoch": self.epoch, "at": self.clock(), "intervalSeconds": self.interval,
                "windowSeconds": round(covered, 3) if covered is not None else None, "series": series,
                "readErrors": [{"probe": k, "error": v} for k, v in sorted(self.last_errors.items())]}
