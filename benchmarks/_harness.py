"""Shared plumbing for the benchmarks: child processes, leftover checks, percentiles.

Every benchmark starts real Ballast processes; this module makes sure they
are started in their own process group, stopped by pid/group (never by name)
and that nothing referencing the benchmark's temp directory survives.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import IO
import shutil
import tempfile


class BenchFailed(Exception):
    """A benchmark could not produce its figures; the message says why."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks stop the processes we started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def work_dir(prefix: str) -> Path:
    """A fresh temp directory the apps' unprivileged user may pass through (mkdtemp makes it 0700): a platform
    started below it keeps its nodes' files there, where a benchmark finds its processes."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o711)
    return work


def run_in_workdir(prefix: str, body: Callable[[Path], None]) -> int:
    """A benchmark's entry: `body` in a fresh temp directory (removed after); a `BenchFailed` is exit code 1."""
    exit_on_sigterm()
    work = work_dir(prefix)
    try:
        body(work)
    except BenchFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_listening(ip: str, port: int, timeout: float = 15.0) -> None:
    """Until something accepts connections on ip:port (a started app), or `BenchFailed` at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(ip, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise BenchFailed(f"nothing listens on {ip}:{port}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, never interpolated."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    """A subprocess in its own session (process group), logging to a file."""

    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "ab")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env}, start_new_session=True)

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, first: signal.Signals, grace: float) -> str:
        """Send `first` to the group, wait `grace` s, then SIGKILL the group. Returns how it ended."""
        if self.proc is None:
            return "never started"
        try:
            if self.proc.poll() is not None:
                return f"already exited ({self.proc.returncode})"
            _signal_group(self.proc.pid, first)
            try:
                self.proc.wait(grace)
                return f"stopped by {first.name} (exit {self.proc.returncode})"
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                return f"KILLED after {grace:g} s without exiting on {first.name}"
        finally:
            _signal_group(self.proc.pid, signal.SIGKILL)  # anything else left in its group
            if self._out is not None:
                self._out.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def processes_referencing(path: Path) -> list[tuple[int, str]]:
    """Live processes whose command line or working directory lies under `path` (zombies excluded)."""
    root = str(path.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = ""
        except (OSError, ValueError):
            continue
        if root in cmdline or cwd == root or cwd.startswith(root + "/"):
            found.append((pid, cmdline or f"(cwd {cwd})"))
    return found


def kill_leftovers(path: Path) -> list[tuple[int, str]]:
    """SIGKILL (by pid) every process still referencing `path`; returns what was found."""
    left = processes_referencing(path)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        time.sleep(0.5)
    return left


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def code_version() -> str:
    """The commit being measured, and whether src/ has uncommitted changes (read-only git commands)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git unavailable)"
    return f"{head or 'unknown'}{' + uncommitted changes in src/' if dirty else ''}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def process_start_wall(pid: int) -> float | None:
    """Wall-clock time the process was forked (kernel start time, 1/CLK_TCK resolution), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None
    started_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
    return time.time() - uptime + started_ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of the process and of its children it has reaped, or None if it is gone.

    Reaped children matter for wrappers: a pyenv shim runs helper processes before exec'ing python.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
