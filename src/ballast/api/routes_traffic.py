"""Routes for traffic rules: read and delete TrafficRules and ColoringRules, explain a call, analyze a file.

Rules are created and changed by `POST /v1/apply` like every declared resource.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field, StringConstraints

from ballast.api.deps import Name, RequestBody, audited_write, principal, require, store_of
from ballast.core.authz import Action, allowed
from ballast.core.manifests import NAME_PATTERN, parse_documents
from ballast.errors import BallastError, FieldProblem, InvalidInput, NotFound
from ballast.services import apply as apply_service
from ballast.services import traffic_analysis, traffic_rules
from ballast.services import endpoints as registry
from ballast.services.access import Principal
from ballast.store.engine import Tx
from ballast.wire.registry import Snapshot
from ballast.wire.traffic import GATEWAY_CALLER

router = APIRouter()
Pair = Annotated[str, StringConstraints(pattern=r"^[^=\x00]+=[^\x00]*$", max_length=1024)]   # NAME=VALUE
_KINDS = {"trafficrules": traffic_rules.TRAFFIC_RULE, "coloringrules": traffic_rules.COLORING_RULE}


def _readable(who: Principal, item: dict[str, Any]) -> bool:
    """A rule is visible to whoever may read every app it governs (the gateway's: unscoped readers)."""
    return all(allowed(who.bindings, Action.READ, app) for app in traffic_rules.governed_by(item["spec"]))


def _require_reader(who: Principal) -> None:
    """Some app's reader at least (a scoped one sees the rules of its apps); components read no rules."""
    if not any(allowed((b,), Action.READ, b.apps[0] if b.apps else None) for b in who.bindings):
        require(who, Action.READ)


async def _list(request: Request, who: Principal, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    _require_reader(who)
    async with store_of(request).read() as conn:
        items = await traffic_rules.listing(conn, kind, name)
    readable = [i for i in items if _readable(who, i)]
    if name is not None and not readable:
        raise NotFound(f"{kind} {name!r} not found")
    return readable


@router.get("/trafficrules", tags=["traffic"])
async def list_traffic_rules(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Every TrafficRule with its generation and which traffic components acknowledged it."""
    return {"items": await _list(request, who, traffic_rules.TRAFFIC_RULE)}


@router.get("/trafficrules/{name}", tags=["traffic"])
async def get_traffic_rule(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return (await _list(request, who, traffic_rules.TRAFFIC_RULE, name))[0]


@router.get("/coloringrules", tags=["traffic"])
async def list_coloring_rules(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _list(request, who, traffic_rules.COLORING_RULE)}


@router.get("/coloringrules/{name}", tags=["traffic"])
async def get_coloring_rule(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return (await _list(request, who, traffic_rules.COLORING_RULE, name))[0]


async def _delete(request: Request, who: Principal, kind: str, name: str) -> dict[str, Any]:
    async def change(tx: Tx) -> None:
        _, spec, _ = await traffic_rules.stored_kind_service(tx, kind, name)
        for app in traffic_rules.governed_by(spec):
            require(who, Action.APPLY_APP, app)
        await traffic_rules.delete_rule(tx, kind, name, who.user)
    await audited_write(request, change)
    return {"deleted": f"{kind}/{name}"}


@router.delete("/trafficrules/{name}", tags=["traffic"])
async def delete_traffic_rule(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Remove the rule: its routes leave every component with the registry generation this moves to."""
    return await _delete(request, who, traffic_rules.TRAFFIC_RULE, name)


@router.delete("/coloringrules/{name}", tags=["traffic"])
async def delete_coloring_rule(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _delete(request, who, traffic_rules.COLORING_RULE, name)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise InvalidInput(f"bad {what}", problems=[FieldProblem(what, value, "KEY=VALUE")])
        out[key] = rest
    return out


@router.get("/traffic/explain", tags=["traffic"])
async def explain(request: Request, service: str = Query(pattern=NAME_PATTERN, max_length=63),
                  caller: str = Query(GATEWAY_CALLER, alias="from", pattern=NAME_PATTERN, max_length=63),
                  header: list[Pair] = Query([], max_length=50), tag: list[Pair] = Query([], max_length=50),
                  cookie: list[Pair] = Query([], max_length=50),
                  path: str = Query("/", pattern=r"^/[^\x00]*$", max_length=2048),
                  unit: str = Query("", pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$", max_length=63,
                                    description="the caller is an instance of its isolation group of this code"),
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    """Which rule and route a call would take and which endpoints its subset holds: the same evaluation the
    data plane compiles, on the registry as components have it now."""
    require(who, Action.READ, service)
    store = store_of(request)
    snapshot = Snapshot.from_json(await registry.snapshot(store, None, 0.0))
    headers = {k.lower(): v for k, v in _pairs(header, "header").items()}
    return traffic_analysis.explain(snapshot, service, caller, path=path, headers=headers,
                                    tags=_pairs(tag, "tag"), cookies=_pairs(cookie, "cookie"), unit=unit)


class AnalyzeRequest(RequestBody):
    model_config = ConfigDict(populate_by_name=True)
    items: list[Any] = Field(min_length=1, max_length=500)


@router.post("/traffic/analyze", tags=["traffic"])
async def analyze(body: AnalyzeRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """What applying `items` would be refused for, and what it would warn about; nothing is stored."""
    require(who, Action.READ)
    request.state.audit_exempt = True  # a preview changes nothing
    refused: list[dict[str, Any]] = []
    try:
        manifests = parse_documents(body.items)
    except InvalidInput as exc:
        return {"ok": False, "refused": exc.to_dict().get("problems") or [{"message": exc.message}], "warnings": []}

    def authorize(action: Action, app: str | None) -> None:
        require(who, action, app)
    try:
        await apply_service.apply(store_of(request), manifests, actor=who.user, authorize=authorize, dry_run=True,
                                  outbound_policy=request.app.state.outbound)
    except BallastError as exc:
        refused = exc.to_dict().get("problems") or [{"message": exc.message}]
    store = store_of(request)
    snapshot = Snapshot.from_json(await registry.snapshot(store, None, 0.0))
    warnings = traffic_analysis.warnings(snapshot, manifests)
    return {"ok": not refused, "refused": refused, "warnings": warnings}
