"""The client hooks color calls through the mesh, and no other call, redirects included (real HTTP servers)."""
from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests

import ballast.sdk.httpx
import ballast.sdk.requests
import ballast.sdk.urllib
from ballast.sdk import use_color


class Echo(BaseHTTPRequestHandler):
    """Answers with the baggage it received; /redirect?to=URL redirects there."""

    def do_GET(self) -> None:
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"baggage": self.headers.get_all("baggage")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    """The mesh listener's URL and a third party's."""
    started = [ThreadingHTTPServer(("127.0.0.1", 0), Echo) for _ in range(2)]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in started)  # type: ignore[misc]
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


def check(get: Callable[[str], Any], mesh: str, third: str) -> None:
    """What `get(url)` (the JSON answer) sends: the color to the mesh only, a redirect out of it without."""
    assert get(mesh + "/a")["baggage"] is None  # no color, no header
    with use_color("env=gray,biz=replenish"):
        assert get(mesh + "/a")["baggage"] == ["env=gray,biz=replenish"]
        assert get(third + "/a")["baggage"] is None
        assert get(f"{mesh}/redirect?to={third}/b")["baggage"] is None
        assert get(f"{third}/redirect?to={mesh}/b")["baggage"] == ["env=gray,biz=replenish"]


def test_httpx_sync_hooks(servers: tuple[str, str]) -> None:
    mesh, third = servers
    with httpx.Client(event_hooks=ballast.sdk.httpx.event_hooks(mesh), follow_redirects=True, timeout=5) as client:
        check(lambda url: client.get(url).json(), mesh, third)


async def test_httpx_async_client_instrumented_reads_the_mesh_url_at_call_time(
        servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    mesh, third = servers
    monkeypatch.setenv("BALLAST_MESH_URL", mesh)
    seen: list[str] = []

    async def own_hook(request: httpx.Request) -> None:
        seen.append(str(request.url))

    client = ballast.sdk.httpx.instrument(httpx.AsyncClient(event_hooks={"request": [own_hook]},
                                                            follow_redirects=True, timeout=5))
    async with client:
        with use_color("env=gray"):
            assert (await client.get(mesh + "/a")).json()["baggage"] == ["env=gray"]
            assert (await client.get(third + "/a")).json()["baggage"] is None
            monkeypatch.delenv("BALLAST_MESH_URL")
            assert (await client.get(mesh + "/a")).json()["baggage"] is None
    assert len(seen) == 3  # the client's own hook still runs


def test_requests_session(servers: tuple[str, str]) -> None:
    mesh, third = servers
    with ballast.sdk.requests.instrument(requests.Session(), mesh) as session:
        check(lambda url: session.get(url, timeout=5).json(), mesh, third)


def test_urllib_opener(servers: tuple[str, str]) -> None:
    mesh, third = servers
    opener = ballast.sdk.urllib.build_opener(mesh=mesh)

    def get(url: str) -> Any:
        with opener.open(url, timeout=5) as answer:
            return json.load(answer)

    check(get, mesh, third)


def test_urllib_keeps_a_header_the_caller_set(servers: tuple[str, str]) -> None:
    mesh, _ = servers
    opener = ballast.sdk.urllib.build_opener(mesh=mesh)
    with use_color("env=gray"), opener.open(urllib.request.Request(mesh, headers={"Baggage": "own=1"}),
                                            timeout=5) as answer:
        assert json.load(answer)["baggage"] == ["own=1"]
