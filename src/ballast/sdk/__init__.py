"""Color propagation for apps on Ballast: carry a request's `baggage` onto the calls made serving it.

The gateway and the sidecars mark requests with tags (the color) in the W3C
`baggage` header, and the callers' sidecars route on them. An app needs no
code to be marked, only to pass the inbound header on: middleware
(`ballast.sdk.asgi`, `ballast.sdk.wsgi`) puts it in a context variable for the
request, and the client hooks (`ballast.sdk.httpx`, `.requests`, `.urllib`)
add it to outbound calls made through the sidecar's mesh listener
($BALLAST_MESH_URL), and to no other: the color must not leak to third parties.

Standard library only, so an app can vendor this package (the demo artifact does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
# By name: the submodule ballast.sdk.urllib, once imported, is this package's attribute `urllib`.
from urllib.parse import SplitResult, urlsplit

from ballast.sdk.baggage import EMPTY, MAX_BYTES, MAX_MEMBERS, Color, Member, check_tag, format_baggage, parse_baggage

__all__ = [
    "MAX_BYTES", "MAX_MEMBERS", "Color", "Member", "apply_color", "check_tag", "current_color", "format_baggage",
    "is_mesh_url",
    "mesh_url", "outbound_headers", "parse_baggage", "use_color", "with_tags",
]

MESH_URL_ENV = "BALLAST_MESH_URL"
HEADER = "baggage"

# Per task and per thread (asyncio copies the context into each task): concurrent requests never share it.
_color: ContextVar[Color] = ContextVar("ballast_color", default=EMPTY)


def mesh_url() -> str | None:
    """The sidecar's mesh listener, which Ballast's agent puts in the app's environment (None when absent)."""
    return os.environ.get(MESH_URL_ENV, "").strip() or None


def current_color() -> Color:
    return _color.get()


@contextmanager
def use_color(color: Color | str | Iterable[str]) -> Iterator[Color]:
    """Make `color` (a Color, or `baggage` header values) the current color inside the block."""
    value = color if isinstance(color, Color) else parse_baggage(color)
    token = _color.set(value)
    try:
        yield value
    finally:
        _color.reset(token)


@contextmanager
def with_tags(tags: Mapping[str, str] | None = None, /, **more: str) -> Iterator[Color]:
    """The current color plus these tags inside the block (ValueError for a tag Ballast's rules cannot match)."""
    with use_color(current_color().with_tags(tags, **more)) as color:
        yield color


def is_mesh_url(url: str, mesh: str) -> bool:
    """Whether `url` goes through the mesh listener at `mesh`: same scheme, host and port, under its path."""
    target, base = urlsplit(url), urlsplit(mesh)
    try:
        same_origin = ((target.scheme.lower(), target.hostname, _port(target))
                       == (base.scheme.lower(), base.hostname, _port(base)))
    except ValueError:  # a port that is no number
        return False
    prefix = base.path.rstrip("/")
    path = target.path or "/"
    return bool(base.hostname) and same_origin and (path == prefix or path.startswith(prefix + "/"))


def outbound_headers(url: str | None = None, *, mesh: str | None = None, color: Color | None = None) -> dict[str, str]:
    """{"baggage": ...} for a call to `url` when there is a color and the call goes through the mesh, else {}.

    `url=None` is the caller's word that the call goes through the mesh. `mesh` defaults to
    $BALLAST_MESH_URL, read now; `color` to the current one.
    """
    color = current_color() if color is None else color
    if not color:
        return {}
    if url is not None:
        mesh = mesh_url() if mesh is None else mesh
        if not mesh or not is_mesh_url(url, mesh):
            return {}
    return {HEADER: format_baggage(color)}


def apply_color(headers: MutableMapping[str, str], url: str, *, mesh: str | None = None) -> None:
    """Give an outbound request's headers (case-insensitive, as clients keep them) the color, if it goes through
    the mesh; what client hooks call, once per request sent (redirects included).

    A `baggage` header the caller set stays. A request not through the mesh loses a header that is the
    current color: a client following a redirect copies the headers of the call it was redirected from.
    """
    wanted = outbound_headers(url, mesh=mesh)
    if wanted:
        if HEADER not in headers:
            headers[HEADER] = wanted[HEADER]
    elif headers.get(HEADER) == format_baggage(current_color()) and current_color():
        del headers[HEADER]


def _port(parts: SplitResult) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
