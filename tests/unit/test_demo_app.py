"""Tests for the bundled demo service (src/ballast/demo/app.py), run as a real process."""
from __future__ import annotations

import ast
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ballast.cli import packaging

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


def get(port: int, path: str, timeout: float = 5.0,
        headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.putrequest("GET", path)
        for name, value in headers:  # a name may repeat
            conn.putheader(name, value)
        conn.endheaders()
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

    def start(command: tuple[str, ...] = (sys.executable, str(APP)), **env: str) -> App:
        for _attempt in range(3):  # the free port can be taken before the app binds it
            port = free_port()
            proc = subprocess.Popen(
                command, env=base_env(HOST=HOST, PORT=str(port), **env),
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


def test_app_imports_only_the_standard_library_and_the_sdk() -> None:
    """ballast.sdk is standard library only too (tests/unit/test_sdk_core.py), and the artifact carries it."""
    tree = ast.parse(APP.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {f"{node.module}.{alias.name}" if node.module == "ballast" else node.module
                for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level
                for alias in node.names}
    assert {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names} == {"ballast.sdk"}


def test_identity_and_healthz(start_app: Callable[..., App]) -> None:
    app = start_app(**IDENTITY)
    assert get(app.port, "/healthz")[::2] == (200, b"ok")
    for path in ("/", "/some/other/path?x=1"):
        status, headers, body = get(app.port, path)
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert int(headers["Content-Length"]) == len(body)
        assert json.loads(body) == {
            "app": "shop", "instance": "inst-7", "group": "", "revision": "rev-3", "cell": "cell-a",
            "zone": "zone-1", "node": "node-9", "greeting": "hi there", "path": path,
            "pid": app.proc.pid, "baggage": "",
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


def test_a_chain_forwards_the_path_of_its_call_paths_and_says_what_failed_below(start_app: Callable[..., App]) -> None:
    last = start_app(BALLAST_APP="b", DEMO_FAIL_RATE="0")
    middle = start_app(BALLAST_APP="a", DEMO_CALL=f"http://{HOST}:{last.port}/", DEMO_CALL_PATHS="/replenish, /pay")
    first = start_app(BALLAST_APP="u", DEMO_CALL=f"http://{HOST}:{middle.port}/", DEMO_CALL_PATHS="/replenish")
    status, _, body = get(first.port, "/replenish/batch?n=3")
    answer = json.loads(body)
    assert status == 200, answer
    assert [answer["self"]["app"], answer["downstream"]["self"]["app"], answer["downstream"]["downstream"]["app"]] \
        == ["u", "a", "b"]
    assert answer["downstream"]["downstream"]["path"] == "/replenish/batch?n=3"
    assert json.loads(get(first.port, "/replenishment")[2])["app"] == "u", "a prefix by segments"
    failing = start_app(BALLAST_APP="f", DEMO_FAIL_RATE="1")
    caller = start_app(BALLAST_APP="c", DEMO_CALL=f"http://{HOST}:{failing.port}/", DEMO_CALL_PATHS="/pay")
    status, _, body = get(caller.port, "/pay")
    assert status == 502 and "injected failure" in json.loads(body)["downstreamAnswer"]


COLOR = (("baggage", "env = gray ,"), ("baggage", "biz=replenish;p=1, bad key=x"))


def call_with_color(start_app: Callable[..., App], command: tuple[str, ...], through_mesh: bool,
                    cwd: Path | None = None) -> dict[str, Any]:
    """The caller's /call answer, with the callee's (a real process each) in it."""
    callee = start_app(BALLAST_APP="db", BALLAST_REVISION="db-2")
    callee_url = f"http://{HOST}:{callee.port}"
    env = ({"BALLAST_MESH_URL": callee_url, "DEMO_CALL_SERVICE": "db"} if through_mesh
           else {"BALLAST_MESH_URL": f"http://{HOST}:{free_port()}", "DEMO_CALL": callee_url + "/"})
    caller = start_app(command, BALLAST_APP="shop", **env)
    status, _, body = get(caller.port, "/call", headers=COLOR)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    assert answer["self"]["baggage"] == "env = gray ,,biz=replenish;p=1, bad key=x"  # the lines, as received
    assert (answer["downstream"]["app"], answer["downstream"]["revision"]) == ("db", "db-2")
    return answer


def test_call_propagates_the_color_through_the_mesh_with_the_sdk(start_app: Callable[..., App]) -> None:
    """The downstream sees the caller's inbound baggage, formatted by ballast.sdk (the malformed member dropped)."""
    answer = call_with_color(start_app, (sys.executable, str(APP)), through_mesh=True)
    assert answer["downstream"]["baggage"] == "env=gray,biz=replenish;p=1"


def test_a_call_not_through_the_mesh_carries_no_color(start_app: Callable[..., App]) -> None:
    answer = call_with_color(start_app, (sys.executable, str(APP)), through_mesh=False)
    assert answer["downstream"]["baggage"] == ""


def test_the_sample_artifact_carries_the_sdk(start_app: Callable[..., App], tmp_path: Path) -> None:
    """What `ballast demo` packs runs without an installed Ballast (-S: no site-packages; -E: no PYTHONPATH) and propagates with the
    SDK; app.py copied alone copies the header as it came."""
    packaging.stage_demo(tmp_path / "artifact")
    answer = call_with_color(start_app, (sys.executable, "-E", "-S", str(tmp_path / "artifact" / "app.py")),
                             through_mesh=True)
    assert answer["downstream"]["baggage"] == "env=gray,biz=replenish;p=1"

    (tmp_path / "alone").mkdir()
    shutil.copy(APP, tmp_path / "alone" / "app.py")
    alone = (sys.executable, "-E", "-S", str(tmp_path / "alone" / "app.py"))
    answer = call_with_color(start_app, alone, through_mesh=True)
    assert answer["downstream"]["baggage"] == "env = gray ,,biz=replenish;p=1, bad key=x"
    assert call_with_color(start_app, alone, through_mesh=False)["downstream"]["baggage"] == ""


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
