"""The control plane's HTTP API (`/v1`), assembled from the route modules.

Cross-cutting rules live here: every error becomes a JSON 4xx with the field
path, value and expectation; every mutating request that did not audit itself
inside its own transaction (refused, invalid, conflicting) gets an audit
record of its outcome, so no attempt to change anything goes unrecorded.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ballast.api.admission import Authenticate, BoundBody, Refusals
from ballast.api import (routes_access, routes_join, routes_metrics, routes_nodes, routes_orders, routes_registry,
                         routes_groups, routes_leader, routes_releases, routes_resources, routes_tasks, routes_traffic,
                         schemas)
from ballast.api.deps import principal, require_topology_read, retrying
from ballast.controllers.checkpoints import AuditAnchor
from ballast.core.archive import ArchiveLimits
from ballast.core.outbound import OutboundPolicy
from ballast.core.manifests import problems_from_validation
from ballast.errors import BallastError, FieldProblem, InvalidInput
from ballast.services.access import Principal, TokenPolicy
from ballast.store.engine import Store, StoreUnavailable, is_unavailable

log = logging.getLogger("ballast.api")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(store: Store, *, token_policy: TokenPolicy = TokenPolicy(),
               audit_anchor: AuditAnchor | None = None, refusals: Refusals | None = None,
               artifact_limits: ArchiveLimits = ArchiveLimits(), outbound: OutboundPolicy = OutboundPolicy(),
               replica: str = "") -> FastAPI:
    # No docs page: FastAPI's loads its scripts from a public CDN, which a bank's network does not reach. The API
    # description is /v1/openapi.json, and like every call but the health probe it needs a token.
    app = FastAPI(title="Ballast control plane", version="v1", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.token_policy = token_policy
    app.state.refusals = refusals = refusals or Refusals()
    app.state.audit_anchor = audit_anchor
    app.state.artifact_limits = artifact_limits
    app.state.outbound = outbound          # where calls made on users' behalf may go (core/outbound.py)
    app.state.replica = replica            # this server's name as a lease holder (api/server.py)
    app.openapi = schemas.describe(app)  # type: ignore[method-assign]

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Open to all (load balancers probe it): which store this replica serves, and its name."""
        return {"status": "ok", "store": store.store_id, "replica": replica}

    @app.get("/v1/openapi.json", include_in_schema=False)
    async def openapi(who: Principal = Depends(principal)) -> JSONResponse:
        require_topology_read(who)  # any role may read it
        return JSONResponse(app.openapi())

    app.include_router(routes_resources.router, prefix="/v1")
    app.include_router(routes_nodes.router, prefix="/v1")
    app.include_router(routes_access.router, prefix="/v1")
    app.include_router(routes_join.router, prefix="/v1")
    app.include_router(routes_releases.router, prefix="/v1")
    app.include_router(routes_registry.router, prefix="/v1")
    app.include_router(routes_orders.router, prefix="/v1")
    app.include_router(routes_traffic.router, prefix="/v1")
    app.include_router(routes_groups.router, prefix="/v1")
    app.include_router(routes_tasks.router, prefix="/v1")
    app.include_router(routes_leader.router, prefix="/v1")
    app.include_router(routes_metrics.router)  # /metrics, where Prometheus looks by default

    @app.exception_handler(BallastError)
    async def _ballast_error(_: Request, exc: BallastError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            if loc and loc[0] in ("body", "path", "query"):  # paths start inside the body, or at the URL's own name
                loc = loc[1:]
            path = ""
            for part in loc:  # the manifests' notation: items[0].spec.cells
                path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
            problems.append(FieldProblem(path or "(request)", err.get("input"), str(err.get("msg", ""))))
        return JSONResponse(InvalidInput("invalid request", problems=problems).to_dict(), status_code=422)

    @app.exception_handler(ValidationError)
    async def _invalid_model(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(InvalidInput("invalid request", problems=problems_from_validation(exc)).to_dict(),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route whose path matched; a path served by several
            # routes (GET and DELETE /v1/apps/{name}) has them all.
            headers["Allow"] = ", ".join(_methods_of(app, request))
        return JSONResponse({"error": "HTTPError", "message": message}, status_code=exc.status_code, headers=headers)

    # Outermost first: strangers are refused before anything else runs; bodies are bounded inside the audit of
    # attempts, so a known principal's oversized request is on the record.
    app.add_middleware(BoundBody, limits={("POST", "/v1/artifacts"): artifact_limits.max_bytes})
    app.add_middleware(AuditAttempts, store=store, refusals=refusals)
    app.add_middleware(Authenticate, store=store, refusals=refusals)
    app.add_middleware(StoreHeader, store=store, replica=replica)
    return app


STORE_HEADER = "X-Ballast-Store"      # every answer names the store it came from (clients pin it: client.py)
REPLICA_HEADER = "X-Ballast-Replica"


class StoreHeader:
    """ASGI middleware, outermost: every response, refusals included, says which store and replica answered; a
    store that cannot be reached (even to authenticate) is a 503 StoreUnavailable, on which clients try another
    replica."""

    def __init__(self, app: Any, store: Store, replica: str) -> None:
        self.app = app
        self.store = store
        self.replica = replica.encode("latin-1", "replace")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        started = False

        async def send_with_headers(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []),
                                      (STORE_HEADER.lower().encode(), self.store.store_id.encode()),
                                      (REPLICA_HEADER.lower().encode(), self.replica)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if started or not is_unavailable(exc):
                raise
            log.warning("store unavailable: %r", exc)
            await JSONResponse(StoreUnavailable(f"the store is unavailable: {exc}"[:500]).to_dict(),
                               status_code=503)(scope, receive, send_with_headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _methods_of(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path: asked of the routes themselves (included routers
    too), one method at a time."""
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in app.router.routes)]


def _printable(text: str) -> str:
    """What the audit log stores of a refused URL: escaped where the store could not hold it."""
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")[:255]


def _unstorable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\x00" in text


def _outcome(status: int) -> str:
    return f"HTTP {status}" if status < 400 else f"refused: HTTP {status}"


class AuditAttempts:
    """ASGI middleware: refuse unstorable URLs, turn a crash into a JSON 500, and audit every mutating request
    that did not audit itself (refused, invalid, conflicting). Plain ASGI: Starlette's BaseHTTPMiddleware
    costs every request a task and a stream."""

    def __init__(self, app: Any, store: Store, refusals: Refusals) -> None:
        self.app = app
        self.store = store
        self.refusals = refusals

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if _unstorable(request.url.path) or _unstorable(str(request.url.query)) or _unstorable(
                unquote(request.url.query)):
            # No name or filter may hold a NUL: refuse here, before any store sees it (PostgreSQL cannot).
            response = JSONResponse({"error": "InvalidInput", "message": "the request URL holds a NUL or "
                                     "non-text character; names are lower-case DNS labels"}, status_code=400)
            await response(scope, receive, send)
            status = 400
        else:
            status = 500
            started = False

            async def send_and_note(message: Any) -> None:
                nonlocal status, started
                if message["type"] == "http.response.start":
                    status, started = int(message["status"]), True
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            except Exception as exc:
                if started:
                    log.exception("unhandled error in %s %s", request.method, request.url.path)
                    raise
                if is_unavailable(exc):   # another replica may reach it: clients try the next URL on this 503
                    log.warning("store unavailable in %s %s: %r", request.method, request.url.path, exc)
                    status = 503
                    await JSONResponse(StoreUnavailable(f"the store is unavailable: {exc}"[:500]).to_dict(),
                                       status_code=503)(scope, receive, send)
                    return
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                status = 500
                await JSONResponse({"error": "InternalError", "message": "internal error; see the server log"},
                                   status_code=500)(scope, receive, send)
        state = request.state
        if status == 405 or (status == 404 and "route" not in scope):
            # No route acted: counted, not audited (the audit log records who did what, not every knock).
            self.refusals.note(scope["client"][0] if scope.get("client") else "unknown", "unroutable",
                               request.url.path)
        elif (request.method in MUTATING and request.url.path.startswith("/v1/")
                and not getattr(state, "audited", False) and not getattr(state, "audit_exempt", False)):
            await self._audit_refusal(request, status)

    async def _audit_refusal(self, request: Request, status: int) -> None:
        who = getattr(request.state, "principal", None)
        try:
            if who is None:  # refused before any route authenticated (unknown route, wrong verb): who sent it?
                try:
                    who = await principal(request)
                except BallastError:
                    who = None
            actor = who.user if who else "anonymous"

            async def record() -> None:
                async with self.store.write() as tx:
                    await tx.audit(actor=actor, action=f"{request.method} {_printable(request.url.path)}",
                                   resource=_printable(request.url.path), result=_outcome(status),
                                   detail={"status": status})

            await retrying(record)  # the record of a refusal must not be lost to a race on the chain head
        except Exception:
            log.exception("could not audit a refused request")
