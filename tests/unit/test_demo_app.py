"""Tests for the bundled demo service (src/ballast/demo/app.py), run as a real process."""
from __future__ import annotations

import ast
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "src" / "ballast" / "demo" / "app.py"
HOST = "127.0.0.1"
IDENTITY = {
    "BALLAST_INSTANCE_ID": "inst-7",
    "BALLAST_APP": "shop",
    "BALLAST_CELL": "cell-a",
    "BALLAST_ZONE": "zone-1",
    "BALLAST_REVISION": "rev-3",
    "BALLAST_NODE": "node-9",
    "BALLAST_NODE_IP": "10.0.0.9",
    "GREETING": "hi there",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BALLAST_", "DEMO_")) and k not in ("HOST", "PORT", "GREETING")}
    env.update(extra)
    return env


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class App:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port


@pytest.fixture
def start_app() -> Iterator[Callable[..., App]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> App:
        for _attempt in range(3):  # the free port can be taken before the app binds it
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, str(APP)], env=base_env(HOST=HOST, PORT=str(port), **env),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(proc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    get(port, "/healthz", timeout=0.5)  # any HTTP answer means it is serving
                    return App(proc, port)
                except OSError:
                    time.sleep(0.02)
            proc.kill()
            proc.wait(timeout=5)
        raise AssertionError(f"demo app did not come up: {proc.communicate(timeout=5)}")

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=5)  # reaps and closes the pipes


def test_app_imports_only_the_standard_library() -> None:
    tree = ast.parse(APP.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert modules <= sys.stdlib_module_names, modules - sys.stdlib_module_names


def test_identity_and_healthz(start_app: Callable[..., App]) -> None:
    app = start_app(**IDENTITY)
    assert get(app.port, "/healthz")[::2] == (200, b"ok")
    for path in ("/", "/some/other/path?x=1"):
        status, headers, body = get(app.port, path)
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert int(headers["Content-Length"]) == len(body)
        assert json.loads(body) == {
            "app": "shop", "instance": "inst-7", "revision": "rev-3", "cell": "cell-a",
            "zone": "zone-1", "node": "node-9", "greeting": "hi there", "path": path,
            "pid": app.proc.pid,
        }
    status, _, body = get(app.port, "/slow?ms=50")
    assert status == 200 and json.loads(body)["instance"] == "inst-7"
    assert get(app.port, "/slow?ms=abc")[0] == 400
    status, _, body = get(app.port, "/call")  # DEMO_CALL unset
    assert status == 404 and json.loads(body)["self"]["app"] == "shop"


def test_keep_alive_connection_is_reused(start_app: Callable[..., App]) -> None:
    app = start_app()
    conn = http.client.HTTPConnection(HOST, app.port, timeout=5)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read())["greeting"] == "hello"
        sock = conn.sock
        assert sock is not None and not first.will_close
        conn.request("GET", "/healthz")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"ok")
        assert conn.sock is sock  # same TCP connection, no reconnect
    finally:
        conn.close()


def test_fail_rate_one_answers_500(start_app: Callable[..., App]) -> None:
    app = start_app(DEMO_FAIL_RATE="1")
    for _ in range(3):
        assert get(app.port, "/")[0] == 500
    assert get(app.port, "/healthz")[0] == 200


def test_unhealthy_mode(start_app: Callable[..., App]) -> None:
    app = start_app(DEMO_UNHEALTHY="1")
    assert get(app.port, "/healthz")[0] == 503
    assert get(app.port, "/")[0] == 200


def test_call_downstream(start_app: Callable[..., App]) -> None:
    downstream = start_app(BALLAST_APP="db")
    app = start_app(BALLAST_APP="shop", DEMO_CALL=f"http://{HOST}:{downstream.port}/x",
                    DEMO_CALL_HOST="db.mesh")
    status, _, body = get(app.port, "/call")
    assert status == 200
    answer = json.loads(body)
    assert answer["self"]["app"] == "shop" and answer["downstream"]["app"] == "db"
    assert answer["downstream"]["path"] == "/x"

    broken = start_app(DEMO_CALL=f"http://{HOST}:{free_port()}/")
    status, _, body = get(broken.port, "/call")
    assert status == 502 and "error" in json.loads(body)


class AbortingDownstream:
    """A keep-alive HTTP server that, once `abort_old()` is called, closes every connection it already had on its
    next request without answering (what a proxy does to a reused connection whose upstream broke: the client
    may retry). Connections opened later are answered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.old: set[int] = set()
        self.connections: list[socket.socket] = []
        self.delay = 0.3
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                if id(conn) in self.old:
                    return  # closed without an answer
                time.sleep(self.delay)
                body = b'{"app": "db"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)

    def abort_old(self) -> None:
        self.old = {id(c) for c in self.connections}
        self.delay = 0.0

    def close(self) -> None:
        self.sock.close()


def test_a_call_retries_on_a_new_connection_when_pooled_ones_were_closed(start_app: Callable[..., App]) -> None:
    """Two pooled connections go stale at once: the retry must not take the other stale one."""
    downstream = AbortingDownstream()
    try:
        app = start_app(DEMO_CALL=f"http://{HOST}:{downstream.port}/")
        results: list[int] = []
        calls = [threading.Thread(target=lambda: results.append(get(app.port, "/call")[0])) for _ in range(2)]
        for t in calls:
            t.start()
        for t in calls:
            t.join(10)
        assert results == [200, 200] and len(downstream.connections) == 2, "two connections pooled"
        downstream.abort_old()
        status, _, body = get(app.port, "/call")
        assert status == 200, body
        assert len(downstream.connections) == 3, "the retry opened a new connection"
    finally:
        downstream.close()


@pytest.mark.parametrize("port", [None, "", "abc", "70000"])
def test_missing_or_invalid_port_exits_2(port: str | None) -> None:
    env = base_env() if port is None else base_env(PORT=port)
    result = subprocess.run([sys.executable, str(APP)], env=env, capture_output=True, timeout=10)
    assert result.returncode == 2
    assert b"PORT" in result.stderr


def test_sigterm_lets_in_flight_request_finish(start_app: Callable[..., App]) -> None:
    app = start_app(**IDENTITY)
    idle = http.client.HTTPConnection(HOST, app.port, timeout=5)  # idle keep-alive connection
    idle.request("GET", "/healthz")
    assert idle.getresponse().read() == b"ok"
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            status, headers, body = get(app.port, "/slow?ms=500")
            result.update(status=status, headers=headers, body=body)
        except Exception as e:  # surfaced by the assertions below
            result["error"] = e

    worker = threading.Thread(target=slow_request)
    worker.start()
    try:
        time.sleep(0.15)  # let the request reach the server; it sleeps for 500 ms there
        assert app.proc.poll() is None
        app.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=5)
        assert not worker.is_alive()
        assert result.get("status") == 200, result
        assert result["headers"]["Connection"] == "close"
        assert json.loads(result["body"])["instance"] == "inst-7"
        assert app.proc.wait(timeout=5) == 0
        assert b"stopped" in app.proc.communicate(timeout=5)[0]
        with pytest.raises(OSError):  # the idle connection was closed, nothing listens any more
            idle.request("GET", "/healthz")
            idle.getresponse()
    finally:
        idle.close()
        worker.join(timeout=5)


def test_sigterm_refuses_new_connections_while_draining(start_app: Callable[..., App]) -> None:
    app = start_app()
    worker = threading.Thread(target=get, args=(app.port, "/slow?ms=1000"))
    worker.start()
    try:
        time.sleep(0.15)
        app.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while True:  # the listening socket closes within one accept-loop poll
            try:
                socket.create_connection((HOST, app.port), timeout=0.5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections while draining"
            time.sleep(0.02)
        assert app.proc.poll() is None  # still draining the slow request
        assert app.proc.wait(timeout=5) == 0
    finally:
        worker.join(timeout=5)


def test_grace_period_expiry_exits_1(start_app: Callable[..., App]) -> None:
    app = start_app(DEMO_GRACE_SECONDS="0.3")
    errors: list[BaseException] = []

    def slow_request() -> None:
        try:
            get(app.port, "/slow?ms=5000")
        except OSError as e:
            errors.append(e)

    worker = threading.Thread(target=slow_request)
    worker.start()
    try:
        time.sleep(0.15)
        started = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(timeout=5) == 1
        assert time.monotonic() - started < 3
        assert b"grace period" in app.proc.communicate(timeout=5)[1]
        worker.join(timeout=5)
        assert errors  # the abandoned request saw its connection drop
    finally:
        worker.join(timeout=5)
