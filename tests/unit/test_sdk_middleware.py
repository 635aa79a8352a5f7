"""The middleware makes a request's inbound baggage the current color while the app serves it, and only then."""
from __future__ import annotations

import io
import wsgiref.util
from collections.abc import Iterator
from typing import Any

import httpx

from ballast.sdk import current_color, format_baggage, use_color
from ballast.sdk.asgi import ColorMiddleware as AsgiColor
from ballast.sdk.wsgi import ColorMiddleware as WsgiColor


async def echo_color(scope: Any, receive: Any, send: Any) -> None:
    """A tiny ASGI app answering with the color it sees."""
    if scope["type"] != "http":
        scope["seen"] = format_baggage(current_color())
        return
    body = format_baggage(current_color()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def test_asgi_takes_the_inbound_baggage_for_the_request() -> None:
    transport = httpx.ASGITransport(app=AsgiColor(echo_color))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        lines = [("baggage", "env=gray, bad key=1"), ("baggage", "biz=replenish;p")]
        assert (await client.get("/", headers=lines)).text == "env=gray,biz=replenish;p"
        assert (await client.get("/")).text == ""
    assert not current_color()


async def test_asgi_replaces_the_color_around_it_and_restores_it() -> None:
    app = AsgiColor(echo_color)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    with use_color("outer=1"):
        await app({"type": "http", "headers": [(b"baggage", b"inner=2")]}, receive, send)
        assert format_baggage(current_color()) == "outer=1"
    assert sent[-1]["body"] == b"inner=2"


async def test_asgi_lifespan_and_websocket_pass_through_untouched() -> None:
    for kind in ("lifespan", "websocket"):
        scope: dict[str, Any] = {"type": kind, "headers": [(b"baggage", b"env=gray")]}
        with use_color("outer=1"):
            await AsgiColor(echo_color)(scope, None, None)  # type: ignore[arg-type]
        assert scope["seen"] == "outer=1"


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A WSGI app whose body is produced while the server iterates it, as a streaming app's is."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield format_baggage(current_color()).encode()
    yield b"|" + format_baggage(current_color()).encode()


def environ(**extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {"wsgi.input": io.BytesIO(), **extra}
    wsgiref.util.setup_testing_defaults(env)
    return env


def test_wsgi_takes_http_baggage_while_the_body_is_produced_and_leaves_nothing_behind() -> None:
    statuses: list[str] = []
    with use_color("server=1"):
        body = WsgiColor(wsgi_app)(environ(HTTP_BAGGAGE="env=gray,biz=a%20b"), lambda s, h: statuses.append(s))
        assert format_baggage(current_color()) == "server=1"
        assert b"".join(body) == b"env=gray,biz=a%20b|env=gray,biz=a%20b"
        body.close()  # type: ignore[attr-defined]
        assert format_baggage(current_color()) == "server=1"
    assert statuses == ["200 OK"]
    assert b"".join(WsgiColor(wsgi_app)(environ(), lambda s, h: None)) == b"|"


def test_wsgi_closes_the_apps_iterable() -> None:
    closed: list[str] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"x"])

        def close(self) -> None:
            closed.append(format_baggage(current_color()))

    result = WsgiColor(lambda env, start: Body())(environ(HTTP_BAGGAGE="k=v"), lambda s, h: None)
    assert list(result) == [b"x"]
    result.close()  # type: ignore[attr-defined]
    assert closed == ["k=v"]
