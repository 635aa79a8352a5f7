"""One HAProxy process in master-worker mode: validate, start, reload seamlessly, apply, stop.

Every configuration is checked with `haproxy -c` before it replaces the file;
a rejected one leaves the running process and the file as they were and
raises `ConfigRejected` with HAProxy's own words. Reloads go through the
master CLI: the master re-executes itself and hands the listening sockets to
the new worker, so no connection is refused while it happens; the old worker
finishes its requests. The master runs in its own process group, so it
outlives the component that started it and is adopted by the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Mapping
from pathlib import Path

from ballast.dataplane import runtime
from ballast.dataplane.haproxy_config import Backend, structure_digest
from ballast.dataplane.request_stats import StatsHooks, render_bucket_map, render_script, script_digest
from ballast.dataplane.rule_config import render_weights_map
from ballast.dataplane.tables import (LiveServer, map_commands, parse_map, parse_servers_state, parse_stat,
                                     runtime_commands)
from ballast.errors import BallastError
from ballast.processes import ProcessHandle, adopt, launch

SEARCH_PATH = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/usr/bin/haproxy")
_MASTER_LINE = re.compile(r"^\s*(\d+)\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", re.MULTILINE)
_SOCKET_PATH_MAX = 90    # HAProxy refuses socket paths over 97 bytes (it binds a temporary name beside them)


class HAProxyMissing(BallastError):
    status = 503


class ConfigRejected(BallastError):
    status = 422


class ProxyFailed(BallastError):
    status = 503


def find_binary(explicit: str | None = None) -> str:
    """The haproxy binary: an explicit path, else PATH, else Debian's /usr/sbin (not on a user's PATH)."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise HAProxyMissing(f"HAProxy binary {explicit!r} is not an executable file")
        return explicit
    found = shutil.which("haproxy") or next((p for p in SEARCH_PATH if os.access(p, os.X_OK)), None)
    if found is None:
        raise HAProxyMissing("missing binary: haproxy (HAProxy is not installed; install it with "
                             "'sudo apt-get install haproxy' or run 'make setup')")
    return found


def socket_dir(state_dir: Path) -> Path:
    """Where a proxy's UNIX sockets live: beside its state when the path is short enough, else under /tmp."""
    candidate = state_dir / "run"
    if len(str(candidate)) + len("/master.sock") <= _SOCKET_PATH_MAX:
        return candidate
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"ballast-{os.getuid()}" / digest


def install_stats_script(directory: Path, table_size: int = 100_000) -> StatsHooks:
    """Write the request-statistics script and bucket map where proxies load them from (only when changed)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    texts = (render_script(), render_bucket_map())
    for name, text in zip(("request-stats.lua", "request-buckets.map"), texts):
        path = directory / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        paths.append(str(path))
    return StatsHooks(paths[0], paths[1], script_digest(*texts), table_size)


# How long what HAProxy confirmed stands in for a read of its servers and maps: nothing but `converge` changes them,
# and a change by hand on its runtime API is seen within this long.
KNOWN_SECONDS = 10.0


@dataclass(frozen=True)
class KnownState:
    servers: Mapping[str, Mapping[str, LiveServer]]   # backend -> server -> state
    maps: Mapping[str, Mapping[str, str]]              # map file -> key -> value
    read_at: float                                     # monotonic time of the read it started from


@dataclass(frozen=True)
class ProxyFiles:
    state_dir: Path

    @property
    def config(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def log(self) -> Path:
        return self.state_dir / "haproxy.log"

    @property
    def sockets(self) -> Path:
        return socket_dir(self.state_dir)

    @property
    def admin_socket(self) -> Path:
        return self.sockets / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.sockets / "master.sock"


class HAProxy:
    def __init__(self, binary: str, files: ProxyFiles, *, label: str) -> None:
        self.binary = binary
        self.files = files
        self.label = label
        self.handle: ProcessHandle | None = None
        self._structure: str | None = None   # structure digest of the configuration the process runs
        self._known: KnownState | None = None   # its servers and maps, as HAProxy last confirmed them

    # --- process -------------------------------------------------------------------
    def alive(self) -> bool:
        return self.handle is not None and self.handle.alive()

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    def adopt(self, pid: int, started: int) -> bool:
        self.handle = adopt(pid, started)
        self._structure = None
        self._known = None
        return self.handle is not None

    async def answers(self) -> bool:
        """Is a worker serving? (The master can outlive a worker that crashed.)"""
        try:
            return "Name: HAProxy" in await runtime.command(self.files.admin_socket, "show info", timeout=2.0)
        except runtime.RuntimeApiError:
            return False

    async def validate(self, text: str) -> None:
        self.files.state_dir.mkdir(parents=True, exist_ok=True)
        candidate = self.files.state_dir / "haproxy.cfg.candidate"
        candidate.write_text(text)
        proc = await asyncio.create_subprocess_exec(self.binary, "-c", "-f", str(candidate),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    stdin=asyncio.subprocess.DEVNULL)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            text = (err or out).decode(errors="replace")
            alerts = [line for line in text.splitlines() if "[ALERT]" in line or "[WARNING]" in line]
            words = "\n".join(alerts or text.splitlines())[-2000:]
            raise ConfigRejected(f"{self.label}: HAProxy rejected the rendered configuration; the running one "
                                 f"stays in place: {words}")

    def _install(self, text: str) -> str | None:
        """Swap the file in atomically; return the previous text, to put back if HAProxy refuses it."""
        previous = self.files.config.read_text() if self.files.config.exists() else None
        tmp = self.files.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.files.config)
        return previous

    async def start(self, text: str, *, timeout: float = 15.0) -> None:
        await self.validate(text)
        self.files.sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in (self.files.admin_socket, self.files.master_socket):
            stale.unlink(missing_ok=True)
        self._install(text)
        self._known = None
        argv = [self.binary, "-W", "-S", f"{self.files.master_socket},mode,600", "-f", str(self.files.config)]
        self.handle = await launch(argv, cwd=self.files.state_dir, env={"PATH": os.environ.get("PATH", "")},
                                   log_path=self.files.log)
        self._structure = structure_digest(text)
        await self._wait_worker(timeout)

    async def _wait_worker(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.alive():
                raise ProxyFailed(f"{self.label}: HAProxy exited while starting; see {self.files.log}")
            try:
                if "Name: HAProxy" in await runtime.command(self.files.admin_socket, "show info", timeout=1.0):
                    return
            except runtime.RuntimeApiError:
                pass
            if loop.time() >= deadline:
                raise ProxyFailed(f"{self.label}: HAProxy did not answer on {self.files.admin_socket} "
                                  f"within {timeout:g}s; see {self.files.log}")
            await asyncio.sleep(0.02)

    async def _master_counts(self) -> tuple[int, int]:
        answer = await runtime.command(self.files.master_socket, "show proc")
        match = _MASTER_LINE.search(answer)
        if match is None:
            raise ProxyFailed(f"{self.label}: unexpected answer from the master CLI: {answer[:200]!r}")
        return int(match.group(2)), int(match.group(3))

    async def reload(self, text: str, *, timeout: float = 15.0) -> None:
        """Seamless reload onto `text`; on any failure the previous configuration keeps running."""
        await self.validate(text)
        before, failed_before = await self._master_counts()
        previous = self._install(text)
        self._known = None   # the new worker runs the file's servers
        try:
            try:
                await runtime.command(self.files.master_socket, "reload")
            except runtime.RuntimeApiError:
                pass  # the master closes the CLI connection when it re-executes
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                try:
                    reloads, failed = await self._master_counts()
                except (runtime.RuntimeApiError, ProxyFailed):
                    reloads, failed = before, failed_before   # the master is re-executing
                if failed > failed_before:
                    raise ProxyFailed(f"{self.label}: HAProxy refused the reload; the previous configuration "
                                      f"keeps running (see {self.files.log})")
                if reloads > before:
                    break
                if loop.time() >= deadline or not self.alive():
                    raise ProxyFailed(f"{self.label}: reload did not complete within {timeout:g}s")
                await asyncio.sleep(0.02)
            await self._wait_worker(timeout)
            self._structure = structure_digest(text)
        except BaseException:
            if previous is not None:
                self._install(previous)
            raise

    async def stop(self, grace: float = 5.0) -> None:
        """Soft stop (finish what is in flight, up to `grace`), then hard."""
        if self.handle is None or not self.handle.alive():
            return
        self.handle.signal_group(signal.SIGUSR1)
        try:
            await asyncio.wait_for(self.handle.wait(), timeout=grace)
        except TimeoutError:
            await self.handle.stop(1.0)

    def write_maps(self, maps: Mapping[str, Mapping[str, int]]) -> None:
        """Map files as the next start or reload reads them (a running process is told by `set map`)."""
        for path, entries in maps.items():
            text = render_weights_map(dict(entries))
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_text() != text:
                tmp = target.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, target)

    async def converge(self, rendered: str, backends: tuple[Backend, ...],
                       maps: Mapping[str, Mapping[str, int]] | None = None) -> list[str]:
        """Make the proxy run `rendered`: start it, reload it when the structure changed, else only
        runtime commands for the servers and the maps. Returns the commands HAProxy refused (retried next time)."""
        self.write_maps(maps or {})
        if not self.alive():
            await self.start(rendered)
        else:
            if self._structure is None:  # adopted: what it runs is what its file says
                on_disk = self.files.config.read_text() if self.files.config.exists() else ""
                self._structure = structure_digest(on_disk)
            if self._structure != structure_digest(rendered):
                await self.reload(rendered)
            # Same structure: only servers differ, and the runtime API changes them. The file is rewritten at
            # the next reload or start, always from a fresh rendering, so it need not follow every change.
        wanted_maps = {path: entries for path, entries in (maps or {}).items() if entries}   # empty: nobody reads it
        known = await self._known_state(list(wanted_maps))
        commands = runtime_commands(backends, known.servers)
        for path, entries in wanted_maps.items():
            commands += map_commands(path, entries, known.maps.get(path, {}))
        if not commands:
            return []
        self._known = None   # until HAProxy said yes to every command
        refused = await self.run(commands)
        if not refused:
            servers = {**known.servers, **{b.name: {s.name: LiveServer(s.name, s.address, s.enabled)
                                                    for s in b.servers} for b in backends}}
            self._known = KnownState(servers, {**known.maps, **{path: {k: str(int(v)) for k, v in entries.items()}
                                                                for path, entries in wanted_maps.items()}},
                                     known.read_at)
        return refused

    async def _known_state(self, map_paths: list[str]) -> "KnownState":
        """The servers and maps the worker runs: as HAProxy last confirmed them (every command it accepted since a
        read), read again over one connection after a start or reload, a refusal, or KNOWN_SECONDS."""
        known = self._known
        now = time.monotonic()
        if known is not None and now - known.read_at < KNOWN_SECONDS and all(p in known.maps for p in map_paths):
            return known
        answers = await runtime.session(self.files.admin_socket,
                                        ["show servers state", *(f"show map {path}" for path in map_paths)])
        self._known = KnownState(parse_servers_state(answers[0]),
                                 {path: parse_map(answer) for path, answer in zip(map_paths, answers[1:])}, now)
        return self._known

    # --- runtime API -----------------------------------------------------------------
    async def servers(self) -> dict[str, dict[str, LiveServer]]:
        return parse_servers_state(await runtime.command(self.files.admin_socket, "show servers state"))

    async def stat_rows(self) -> list[dict[str, str]]:
        return parse_stat(await runtime.command(self.files.admin_socket, "show stat"))

    async def run(self, commands: list[str]) -> list[str]:
        """Run commands in order, over one connection; return the ones HAProxy refused, with its answer."""
        answers = await runtime.session(self.files.admin_socket, commands)
        refused = [(line, answer) for line, answer in zip(commands, answers) if not runtime.succeeded(line, answer)]
        # A server put in maintenance in this session still holds its idle connections until HAProxy's next
        # pass closes them: its deletion is tried once more, after the session.
        again = [line for line, _ in refused if line.startswith("del server ")]
        if again:
            retried = dict(zip(again, await runtime.session(self.files.admin_socket, again)))
            refused = [(line, retried.get(line, answer)) for line, answer in refused
                       if not (line in retried and runtime.succeeded(line, retried[line]))]
        return [f"{line}: {answer.strip()[:200]}" for line, answer in refused]
