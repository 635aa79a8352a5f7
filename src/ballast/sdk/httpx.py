"""httpx: request hooks that give calls through the mesh the current color.

    client = ballast.sdk.httpx.instrument(httpx.AsyncClient())
    # or: httpx.Client(event_hooks=ballast.sdk.httpx.event_hooks())

httpx runs request hooks for every request it sends, redirects included, in
the caller's thread or task: the color is the one current where the call is made.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ballast.sdk import apply_color

if TYPE_CHECKING:
    import httpx

Client = TypeVar("Client", "httpx.Client", "httpx.AsyncClient")


def event_hooks(mesh: str | None = None) -> dict[str, list[Callable[[httpx.Request], Any]]]:
    """Hooks for `httpx.Client(event_hooks=...)`; `mesh` defaults to $BALLAST_MESH_URL at each request."""
    def hook(request: httpx.Request) -> None:
        apply_color(request.headers, str(request.url), mesh=mesh)
    return {"request": [hook]}


def async_event_hooks(mesh: str | None = None) -> dict[str, list[Callable[[httpx.Request], Awaitable[None]]]]:
    """Hooks for `httpx.AsyncClient(event_hooks=...)`."""
    async def hook(request: httpx.Request) -> None:
        apply_color(request.headers, str(request.url), mesh=mesh)
    return {"request": [hook]}


def instrument(client: Client, mesh: str | None = None) -> Client:
    """Add the hook to an existing client (sync or async), after the hooks it has."""
    import httpx

    hooks: dict[str, list[Any]] = dict(async_event_hooks(mesh) if isinstance(client, httpx.AsyncClient)
                                       else event_hooks(mesh))
    current: dict[str, list[Any]] = dict(client.event_hooks)
    client.event_hooks = {**current, "request": [*current.get("request", []), *hooks["request"]]}
    return client
