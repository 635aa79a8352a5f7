"""urllib.request: a handler that gives calls through the mesh the current color.

    opener = ballast.sdk.urllib.build_opener()
    opener.open("http://...")   # or urllib.request.install_opener(opener)

The header is added as an unredirected header: urllib does not copy those
onto a redirect, whose target the handler sees and colors again if it is the mesh.
"""

from __future__ import annotations

import urllib.request

from ballast.sdk import HEADER, outbound_headers


class ColorHandler(urllib.request.BaseHandler):
    def __init__(self, mesh: str | None = None) -> None:
        self.mesh = mesh  # None: $BALLAST_MESH_URL at each request

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        wanted = outbound_headers(request.full_url, mesh=self.mesh)
        if wanted and not request.has_header(HEADER.capitalize()):
            request.add_unredirected_header(HEADER.capitalize(), wanted[HEADER])
        return request

    https_request = http_request


def build_opener(*handlers: urllib.request.BaseHandler | type[urllib.request.BaseHandler],
                 mesh: str | None = None) -> urllib.request.OpenerDirector:
    """`urllib.request.build_opener(*handlers)` with a ColorHandler."""
    return urllib.request.build_opener(ColorHandler(mesh), *handlers)
