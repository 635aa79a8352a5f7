"""OS processes Ballast runs (instances, sidecars, gateways): start, identify, watch and stop them.

Instances run in their own session (process group) so they outlive an agent
that crashes or restarts; an agent that comes back adopts them by pid plus
the kernel's start time (a reused pid has another start time). Adopted
processes are not our children, so their exit is noticed by polling /proc.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.2


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class ProcessHandle:
    pid: int
    started: int                       # kernel start time, for identity
    child: asyncio.subprocess.Process | None = None

    def alive(self) -> bool:
        if self.child is not None and self.child.returncode is not None:
            return False
        return start_time(self.pid) == self.started

    async def wait(self) -> int | None:
        """Wait for exit; the exit code is known only for our own children."""
        if self.child is not None:
            return await self.child.wait()
        while self.alive():
            await asyncio.sleep(POLL_SECONDS)
        return None

    def signal_group(self, sig: int) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace_seconds: float) -> str:
        """SIGTERM, wait up to the grace period, then SIGKILL. Returns how it ended."""
        if not self.alive():
            return "already exited"
        self.signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait(), timeout=grace_seconds)
            return "stopped gracefully"
        except TimeoutError:
            self.signal_group(signal.SIGKILL)
            await asyncio.wait_for(self.wait(), timeout=10)
            return f"killed after the {grace_seconds:g}s grace period"


async def launch(argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> ProcessHandle:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = await asyncio.create_subprocess_exec(*argv, cwd=str(cwd), env=env, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=log, stderr=log, start_new_session=True)
    started = start_time(child.pid)
    return ProcessHandle(pid=child.pid, started=started if started is not None else -1, child=child)


def renice(pid: int, nice: int) -> None:
    """Set the nice level of every thread of a process (Linux keeps it per thread; new threads inherit it)."""
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tasks:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass  # the thread ended, or the level is not ours to set


def adopt(pid: int, started: int) -> ProcessHandle | None:
    handle = ProcessHandle(pid=pid, started=started)
    return handle if handle.alive() else None
