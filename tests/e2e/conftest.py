"""End-to-end harness: the real `ballast up` as a subprocess, the real CLI, real sockets.

Each test module starts its own platform on its own loopback addresses
(127.0.2X.2 and up) and a free control-plane port, talks to it only through
the `ballast` command and plain HTTP to the instances, and on teardown stops
it the way a person would (SIGINT, i.e. Ctrl-C) and checks that nothing it
started is left running. Every wait is a bounded poll on an observable fact.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy.engine import make_url

from tests.conftest import _drop_database, _pg_admin, _require_pg

T = TypeVar("T")
DEADLINE = 60.0          # the bound for any single fact to become true
STOP_DEADLINE = 90.0     # SIGINT to exit: agents stop instances (grace 10 s), then the server
POLL = 0.2               # how often a fact is re-checked


def eventually(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Re-run `check` until it stops raising AssertionError; fail with its last complaint at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"not true within {timeout:g}s: {what}\nlast check: {exc}") from None
        time.sleep(POLL)


# Above the kernel's ephemeral range (32768-60999 here), so no outgoing connection of another
# process takes a port between our check and the platform binding it.
_TEST_PORTS = range(61000, 65500)
_handed_out: set[int] = set()


def _take(host: str, port: int) -> bool:
    """Hand `port` out if nobody was given it and it can be bound on `host` now."""
    if port in _handed_out:
        return False
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    _handed_out.add(port)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    for _ in range(200):
        port = random.choice(_TEST_PORTS)
        if _take(host, port):
            return port
    raise RuntimeError(f"no free port in {_TEST_PORTS.start}-{_TEST_PORTS.stop - 1}")


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p + 1 are free (`ballast up --metrics-port p` puts the gateway's on p + 1)."""
    for _ in range(50):
        port = free_port(host)
        if _take(host, port + 1):
            return port
    raise RuntimeError("no two adjacent free ports")


def _ballast_argv() -> list[str]:
    """The installed console script next to this interpreter (the real entry point), else `python -m ballast`."""
    script = Path(sys.executable).with_name("ballast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ballast"]


# --- processes ----------------------------------------------------------------------------
def proc_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, to tell a process from a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def processes_mentioning(marker: str) -> dict[int, str]:
    """Live processes whose command line, working directory or environment mention `marker`.

    Agents and the server carry the data dir on their command line; instances
    (`python3 app.py`) only in their working directory and BALLAST_DATA_DIR.
    """
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            argv = proc_argv(pid)
            if not argv or proc_start_time(pid) is None:  # kernel thread, zombie or gone
                continue
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(marker in a for a in argv) or cwd.startswith(marker) or marker.encode() in environ:
            found[pid] = " ".join(argv)
    return found


def find_agent(data_dir: Path, node: str) -> int | None:
    """The pid of the live agent process for `node` of the platform in `data_dir`."""
    for pid in processes_mentioning(str(data_dir)):
        argv = proc_argv(pid)
        named = any(a == "--name" and b == node for a, b in itertools.pairwise(argv))
        if "agent" in argv and named:
            return pid
    return None


# --- HTTP to instances --------------------------------------------------------------------
def http_get_json(ip: str, port: int, path: str = "/", timeout: float = 5.0) -> dict[str, Any]:
    """GET over a fresh connection; raise on anything but 200 with a JSON object."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise AssertionError(f"GET http://{ip}:{port}{path} answered {response.status}: {body[:200]!r}")
    value = json.loads(body)
    assert isinstance(value, dict), value
    return value


# --- the platform -------------------------------------------------------------------------
def _enterable_dir() -> Path:
    """A directory apps of another user can enter (not list): run as root, `ballast up` starts them as an
    unprivileged user, and pytest's own temporary directories (mode 0700) are closed to it."""
    path = Path(tempfile.mkdtemp(prefix="ballast-e2e-"))
    path.chmod(0o711)
    return path


class UpExited(Exception):
    """`ballast up` ended while a test expected it to run; not retried by `eventually`."""


@dataclass
class Platform:
    root: Path
    first_node_ip: str
    store: str | None = None
    port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port_pair)
    proc: subprocess.Popen[bytes] | None = None
    data_parent: Path = field(default_factory=_enterable_dir)
    settings: dict[str, str] = field(default_factory=dict)   # environment of `ballast up` (options read from it)
    args: tuple[str, ...] = ()    # more options of `ballast up` (e.g. --replicas 3)

    @property
    def data_dir(self) -> Path:
        return self.data_parent / "data"

    def discard(self) -> None:
        """Once stopped: keep the logs beside the test's other files, remove the data dir."""
        for logs in [self.data_dir / "logs", *self.data_dir.glob("agents/*/logs")]:
            shutil.copytree(logs, self.root / "logs" / logs.relative_to(self.data_dir), dirs_exist_ok=True)
        shutil.rmtree(self.data_parent, ignore_errors=True)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def log(self) -> Path:
        return self.root / "up.log"

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def gateway_metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port + 1}"

    def agent_metrics(self, node_ip: str) -> str:
        return f"http://{node_ip}:{self.metrics_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("BALLAST_TOKEN", "BALLAST_SERVER", "BALLAST_CONFIG")}
        env.update(HOME=str(self.home), BALLAST_CONFIG=str(self.data_dir / "client.yaml"))
        env.update(self.settings)
        env.update(extra)
        return env

    # lifecycle
    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [*_ballast_argv(), "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
                "--gateway-port", str(self.gateway_port), "--first-node-ip", self.first_node_ip, "--no-user-config",
                "--metrics-port", str(self.metrics_port)]
        if self.store:
            argv += ["--store", self.store]
        argv += list(self.args)
        offset = self.log.stat().st_size if self.log.exists() else 0   # a restart: only what this run says counts
        with open(self.log, "ab") as out:
            # Its own session, like a terminal job: signals meant for pytest do not reach it, and ours only reach it.
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={k: v for k, v in self.env().items() if k != "BALLAST_CONFIG"},
                                         cwd=self.root, start_new_session=True)

        def announced() -> None:
            if self.proc is not None and self.proc.poll() is not None:
                raise UpExited(f"ballast up exited with {self.proc.returncode} before it was up:\n{self.log_tail()}")
            with open(self.log, "rb") as log:
                log.seek(offset)
                assert b"Ballast is up" in log.read(), "no 'Ballast is up' in its output yet"

        eventually(announced, "ballast up announces 'Ballast is up'")

    def stop(self) -> int | None:
        """Ctrl-C, then SIGKILL if it does not finish within the bound. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def leftovers(self) -> dict[int, str]:
        return processes_mentioning(str(self.data_dir))

    # the CLI
    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*_ballast_argv(), *args], check=False, capture_output=True, text=True, timeout=timeout,
                                env=env if env is not None else self.env(), cwd=self.root, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"ballast {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def cli_json(self, *args: str) -> Any:
        """`ballast ARGS -o json`: the items (a list), or the one object a named get answers."""
        answer = json.loads(self.cli(*args, "-o", "json").stdout)
        return answer["items"] if isinstance(answer, dict) and set(answer) == {"items"} else answer

    def api(self, path: str) -> Any:
        """GET straight from the API with the admin token (a CLI call is slow to start on a loaded machine)."""
        token = yaml.safe_load((self.data_dir / "client.yaml").read_text())["token"]
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def get(self, kind: str, name: str | None = None) -> Any:
        return self.cli_json("get", kind, *([name] if name else []))

    def instances(self, app: str) -> list[dict[str, Any]]:
        return list(self.get("instances", app))

    def wait_ready(self, app: str, count: int, revision: int | None = None,
                   timeout: float = DEADLINE) -> list[dict[str, Any]]:
        """Wait until `app` has exactly `count` instances, all Running and ready (at `revision` if given)."""
        def check() -> list[dict[str, Any]]:
            items = self.instances(app)
            summary = [(i["metadata"]["name"], i["status"]["phase"], i["status"]["ready"], i["status"]["revision"],
                        i["status"]["message"]) for i in items]
            assert len(items) == count, f"{len(items)} instances: {summary}"
            assert all(i["status"]["phase"] == "Running" and i["status"]["ready"] for i in items), summary
            if revision is not None:
                assert all(i["status"]["revision"] == revision for i in items), summary
            return items
        return eventually(check, f"{count} instances of {app} Running and ready", timeout)


def postgres_database() -> Iterator[str]:
    """Body of a module's database fixture: a new, empty PostgreSQL database for its platform (`--store`), dropped
    afterwards. Skipped without BALLAST_TEST_PG_URL, a failure when BALLAST_REQUIRE_PG=1 (as `make test` sets)."""
    base = _require_pg()
    name = "ballast_e2e_" + secrets.token_hex(4)
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_drop_database(name))


def start_platform(root: Path, first_node_ip: str, store: str | None = None,
                   settings: dict[str, str] | None = None, **fields: Any) -> Iterator[Platform]:
    """Body of a platform fixture: start `ballast up`, yield it, then always stop it and check for orphans.
    `fields` set the Platform's own (fixed ports, a data dir's parent)."""
    platform = Platform(root=root, first_node_ip=first_node_ip, store=store, settings=settings or {}, **fields)
    try:
        platform.start()
        yield platform
    finally:
        code = platform.stop()
        try:
            eventually(lambda: _assert_none_left(platform), "no process of the platform is left", timeout=15)
            left: dict[int, str] = {}
        except AssertionError:
            left = platform.leftovers()
            for pid in left:  # processes this platform started; clean up before failing
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        platform.discard()
    assert not left, f"orphans after ballast up stopped: {left}\n{platform.log_tail()}"
    assert code == 0, f"ballast up exited with {code}:\n{platform.log_tail()}"


def _assert_none_left(platform: Platform) -> None:
    left = platform.leftovers()
    assert not left, left
