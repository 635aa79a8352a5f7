"""The control plane's HTTP API (`/v1`), assembled from the route modules.

Cross-cutting rules live here: every error becomes a JSON 4xx with the field
path, value and expectation; every mutating request that did not audit itself
inside its own transaction (refused, invalid, conflicting) gets an audit
record of its outcome, so no attempt to change anything goes unrecorded.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ballast.api import routes_access, routes_nodes, routes_releases, routes_resources
from ballast.core.manifests import problems_from_validation
from ballast.errors import BallastError, FieldProblem, InvalidInput
from ballast.store.engine import Store

log = logging.getLogger("ballast.api")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(store: Store) -> FastAPI:
    app = FastAPI(title="Ballast control plane", version="v1", openapi_url="/v1/openapi.json", docs_url="/v1/docs",
                  redoc_url=None)
    app.state.store = store

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(routes_resources.router, prefix="/v1")
    app.include_router(routes_nodes.router, prefix="/v1")
    app.include_router(routes_access.router, prefix="/v1")
    app.include_router(routes_releases.router, prefix="/v1")

    @app.exception_handler(BallastError)
    async def _ballast_error(_: Request, exc: BallastError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            problems.append(FieldProblem(".".join(loc) or "(request)", err.get("input"), str(err.get("msg", ""))))
        return JSONResponse(InvalidInput("invalid request", problems=problems).to_dict(), status_code=422)

    @app.exception_handler(ValidationError)
    async def _invalid_model(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(InvalidInput("invalid request", problems=problems_from_validation(exc)).to_dict(),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": "HTTPError", "message": message}, status_code=exc.status_code)

    @app.middleware("http")
    async def _audit_attempts(request: Request, call_next: Any) -> Any:
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            response = JSONResponse({"error": "InternalError", "message": "internal error; see the server log"},
                                    status_code=500)
        state = request.state
        if (request.method in MUTATING and request.url.path.startswith("/v1/")
                and not getattr(state, "audited", False) and not getattr(state, "audit_exempt", False)):
            who = getattr(state, "principal", None)
            try:
                async with store.write() as tx:
                    await tx.audit(actor=who.user if who else "anonymous", action=f"{request.method} {request.url.path}",
                                   resource=request.url.path, result=_outcome(response.status_code),
                                   detail={"status": response.status_code})
            except Exception:
                log.exception("could not audit a refused request")
        return response

    return app


def _outcome(status: int) -> str:
    return f"HTTP {status}" if status < 400 else f"refused: HTTP {status}"
