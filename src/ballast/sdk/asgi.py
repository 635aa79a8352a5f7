"""ASGI middleware: an HTTP request's inbound `baggage` is the current color while the app serves it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ballast.sdk import parse_baggage, use_color

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ColorMiddleware:
    """`app = ColorMiddleware(app)`. Lifespan and websocket scopes pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # ASGI header names are lower-case bytes; several lines are one list.
        values = [value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"baggage"]
        with use_color(parse_baggage(values)):
            await self.app(scope, receive, send)
