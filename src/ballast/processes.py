"""OS processes Ballast runs (instances, sidecars, gateways): start, identify, watch and stop them.

Instances run in their own process group so they outlive an agent that
crashes or restarts, and are signalled as a group; an agent that comes back
adopts them by pid plus the kernel's start time (a reused pid has another
start time). Adopted processes are not our children, so their exit is noticed
by polling /proc. They stay in the agent's session: where the kernel groups
CPU time by session (autogroup), a session each would give every one of a
node's apps and proxies the CPU share of the whole control plane, and 400 of
them starting at once starved it for a minute.
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


async def launch(argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                 user: tuple[int, int] | None = None) -> ProcessHandle:
    """Start `argv` in its own process group, its output appended to `log_path`; as (uid, gid) `user` if given.

    The log is opened here and inherited: a child of another user writes a file it could not open itself."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    uid, gid = user if user is not None else (None, None)
    with open(log_path, "ab") as log:
        child = await asyncio.create_subprocess_exec(*argv, cwd=str(cwd), env=env, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=log, stderr=log, process_group=0,
                                                     user=uid, group=gid, extra_groups=None if user is None else [])
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


def port_holder(ip: str, port: int) -> str | None:
    """Which process listens on ip:port (TCP, IPv4), as "pid N (command line)", read from /proc; None if unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":   # 0A: LISTEN
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and address in (_proc_ip(ip), "00000000", "0" * 32):
                inodes.add(fields[9])
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        links = set()
        for fd in fds:
            try:
                links.add(os.readlink(fd))
            except OSError:
                pass   # closed meanwhile
        if any(f"socket:[{inode}]" in links for inode in inodes):
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            return f"pid {entry.name} ({argv[:200]})"
    return "a process this user cannot see"


def _proc_ip(ip: str) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the four bytes in host (little-endian) order, in hex."""
    return "".join(f"{int(part):02X}" for part in reversed(ip.split(".")))


def exit_with_parent() -> None:
    """For a child's preexec_fn: the kernel sends it SIGTERM when the process that started it dies (Linux), so
    nothing a `ballast up` started outlives it, even when it is killed with SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
