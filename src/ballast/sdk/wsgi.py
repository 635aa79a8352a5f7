"""WSGI middleware: a request's inbound `baggage` is the current color while the app serves it.

A WSGI response is an iterable the server consumes after the app returned, and
it may still call out while it yields. So the app and each step of its
iterable run in one copy of the server's context holding the color: nothing
is left set in the server's thread afterwards, even if the server never
closes the iterable.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ballast.sdk import _color, parse_baggage

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ColorMiddleware:
    """`app = ColorMiddleware(app)`: the color comes from HTTP_BAGGAGE in the environ."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        context = contextvars.copy_context()
        # A server joins repeated header lines with "," (one list, as the specification reads them).
        context.run(_color.set, parse_baggage(environ.get("HTTP_BAGGAGE", "")))
        return _InContext(context, context.run(self.app, environ, start_response))


class _InContext:
    """The app's response iterable, iterated and closed in the request's context."""

    def __init__(self, context: contextvars.Context, body: Iterable[bytes]) -> None:
        self.context, self.body = context, body
        self.iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.iterator is None:
            self.iterator = self.context.run(iter, self.body)
        return self.context.run(next, self.iterator)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            self.context.run(close)
