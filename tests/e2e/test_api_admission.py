"""The real control plane (`ballast server` on SQLite, real sockets) against what a stranger can send it.

A body is never read before its sender is known; a known sender's body is bounded in size and in time; a
connection that sends nothing or drips its request head is closed; none of it costs an audit write or stalls
`/healthz` for others.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Iterator

import httpx
import pytest

from ballast.api.server import HEAD_SECONDS
from tests.e2e.conftest import eventually, free_port

pytestmark = pytest.mark.e2e
HOST = "127.0.0.1"


class Server:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.url = f"http://{HOST}:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def connect(self) -> socket.socket:
        s = socket.create_connection((HOST, self.port), timeout=HEAD_SECONDS + 10)
        return s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("admission")
    port = free_port()
    token_file = root / "bootstrap-token"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ballast", "server", "--store", f"sqlite:///{root}/ballast.db",
                             "--listen", f"{HOST}:{port}", "--bootstrap-token-file", str(token_file)],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        eventually(lambda: _assert(token_file.exists() and httpx.get(f"http://{HOST}:{port}/healthz").is_success),
                   "the control plane answers")
        yield Server(port, token_file.read_text().strip())
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _assert(ok: bool) -> None:
    assert ok


def _audit_length(server: Server) -> int:
    return int(server.get("/v1/audit/verify").json()["records"])


def _status_of(s: socket.socket) -> int:
    s.settimeout(20)
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError(f"closed without an answer after {head!r}")
        head += chunk
    return int(head.split(b" ")[1])


def test_an_anonymous_body_is_never_read(server: Server) -> None:
    """A 300 MB body without a token: 401 after the head, while almost none of the body was sent."""
    before = _audit_length(server)
    s = server.connect()
    s.sendall(b"POST /v1/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 314572800\r\n\r\n" + b"[" * 65536)
    assert _status_of(s) == 401
    s.close()
    assert _audit_length(server) == before, "a stranger's knock costs no write"
    assert server.get("/healthz").status_code == 200


def test_a_known_senders_body_is_bounded_before_and_while_it_is_read(server: Server) -> None:
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    s = server.connect()
    s.sendall(b"POST /v1/apply HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 104857600\r\n\r\n")
    assert _status_of(s) == 413, "refused on its declared length"
    s.close()

    s = server.connect()
    s.sendall(b"POST /v1/apply HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    status = None
    try:
        for _ in range(200):   # 12.5 MiB at most, far past the 4 MiB limit
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass
    status = _status_of(s)
    assert status == 413, "refused while it streamed"
    s.close()

    r = httpx.post(server.url + "/v1/apply", headers={"Authorization": f"Bearer {server.token}"},
                   json={"items": [{"kind": "Cell", "apiVersion": "ballast.io/v1alpha1",
                                    "metadata": {"name": "x" * 1_000_000}, "spec": {"zone": "z"}}]}, timeout=20)
    assert r.status_code == 422 and len(r.content) < 10_000, "the refused value is echoed as a short excerpt"
    assert "more characters" in r.text


def test_silent_and_dripping_connections_are_closed_and_others_are_served(server: Server) -> None:
    silent = server.connect()
    dripping = server.connect()
    started = time.monotonic()
    closed: dict[str, float] = {}
    sent = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
    dripping.settimeout(0.5)
    silent.settimeout(0.5)
    k = 0
    while len(closed) < 2 and time.monotonic() - started < HEAD_SECONDS + 15:
        if "dripping" not in closed:
            try:
                dripping.sendall(sent[k:k + 1] if k < len(sent) else b"a")
                k += 1
            except (BrokenPipeError, ConnectionResetError):
                closed["dripping"] = time.monotonic() - started
        for name, s in (("silent", silent), ("dripping", dripping)):
            if name in closed:
                continue
            try:
                if s.recv(1024) == b"":
                    closed[name] = time.monotonic() - started
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed[name] = time.monotonic() - started
        assert server.get("/healthz").status_code == 200, "others are served meanwhile"
    assert set(closed) == {"silent", "dripping"}, closed
    assert all(t >= HEAD_SECONDS - 1 for t in closed.values()), ("closed by the head deadline, not before", closed)
    silent.close()
    dripping.close()
