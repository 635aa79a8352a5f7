"""requests: a transport adapter that gives calls through the mesh the current color.

    session = ballast.sdk.requests.instrument(requests.Session())

requests has no request hook, so the header is added where each request is
sent, redirects included: in the adapter. It adds it to a copy of the
prepared request, because requests builds a redirect from the original one
and the color must not follow a redirect out of the mesh.
"""

from __future__ import annotations

import functools
from typing import Any

from ballast.sdk import apply_color


def instrument(session: Any, mesh: str | None = None, **adapter_options: Any) -> Any:
    """Mount the coloring adapter for http:// and https:// on `session` (it replaces the adapters mounted there;
    `adapter_options` such as `max_retries` go to it, an HTTPAdapter)."""
    for prefix in ("http://", "https://"):
        session.mount(prefix, color_adapter(mesh, **adapter_options))
    return session


def color_adapter(mesh: str | None = None, **adapter_options: Any) -> Any:
    """An HTTPAdapter that colors what it sends to the mesh (`mesh` defaults to $BALLAST_MESH_URL at each request)."""
    return _adapter_class()(mesh, **adapter_options)


@functools.cache
def _adapter_class() -> type:
    from requests.adapters import HTTPAdapter

    class ColorAdapter(HTTPAdapter):
        def __init__(self, mesh: str | None = None, **options: Any) -> None:
            super().__init__(**options)
            self.mesh = mesh

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            request = request.copy()
            apply_color(request.headers, request.url, mesh=self.mesh)
            return super().send(request, *args, **kwargs)

    return ColorAdapter
