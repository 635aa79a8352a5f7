"""What the API answers, described for `/v1/openapi.json`: a model per success body, and every error status.

The routes build their answers as plain JSON (api/objects.py and the services); these models only describe
that JSON — they are never used to serialize it, so describing it cannot change it. A field a body always has
is required here; one it has only sometimes is optional; free-form parts (a manifest's spec, an event's detail)
are objects. Every error, whatever the status, has the one shape `BallastError.to_dict` gives it (`Error`).
`describe()` writes all of this into the schema FastAPI generates; tests/unit/test_api_schema.py runs
schemathesis against a real server to hold the description to what the server does.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from ballast.wire.assignments import Assignments
from ballast.wire.registry import Snapshot

Object = dict[str, Any]


class _Body(BaseModel):
    # Bodies may gain fields; a client reads those it knows.
    model_config = ConfigDict(extra="allow")


# --- errors ------------------------------------------------------------------------------------------------------------

class Problem(_Body):
    path: str = Field(description="the field, in the manifests' notation: items[0].spec.cells")
    value: Any = Field(description="what was sent")
    expected: str


class Error(_Body):
    error: str = Field(description="the kind: InvalidInput, NotFound, Conflict, Unauthenticated, Forbidden, ...")
    message: str
    problems: list[Problem] | None = Field(None, description="one entry per invalid field")


ERRORS: dict[int, str] = {
    400: "the URL holds a NUL or non-text character, or a `continue` token that does not decode or was made for "
         "another list or other filters",
    401: "no token, or an unknown, expired or revoked one",
    403: "the token's user may not do this",
    404: "no such object (or route)",
    405: "the route has no such method; `Allow` names those it has",
    409: "a conflict with the current state (or a race lost on every retry): nothing changed",
    410: "a watch from a resourceVersion older than the deletions still kept: list again, watch from its version",
    413: "the body exceeds the limit",
    422: "an invalid request: every problem names the field, the value and what was expected",
}

# --- objects: apiVersion / kind / metadata / spec / status -------------------------------------------------------------


class Metadata(_Body):
    name: str
    labels: dict[str, str] | None = None
    creationTimestamp: str | None = None
    resourceVersion: int | None = None
    generation: int | None = None
    app: str | None = None
    number: int | None = None


class ApiObject(_Body):
    apiVersion: str
    kind: str
    metadata: Metadata
    spec: Object
    status: Object


class Items(_Body):
    items: list[ApiObject]


class ListMeta(_Body):
    continue_: str | None = Field(None, alias="continue", description="the next page's token; absent on the last")
    resourceVersion: str | None = Field(None, description="the store's version when the list was read: a watch "
                                        "from it reports every later change")


class PagedItems(_Body):
    items: list[ApiObject]
    metadata: ListMeta


class WatchEvent(_Body):
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    object: ApiObject


class InstanceList(_Body):
    """A page of instances, or (watch=true) the changes after a resourceVersion."""
    items: list[ApiObject] | None = Field(None, description="a list's page")
    events: list[WatchEvent] | None = Field(None, description="watch=true: changes in version order")
    metadata: ListMeta


class Deleted(_Body):
    deleted: str = Field(description="Kind/name of what was deleted")


class AppDeleted(Deleted):
    instancesStopping: int


class ApplyResult(_Body):
    kind: str
    name: str
    outcome: str
    revision: int | None = None


class Applied(_Body):
    dryRun: bool
    results: list[ApplyResult]


class Artifact(_Body):
    digest: str
    size: int
    createdAt: str | None


class Artifacts(_Body):
    items: list[Artifact]


class Pushed(_Body):
    digest: str
    size: int
    created: bool


class AuditRecord(_Body):
    seq: int
    ts: str
    actor: str
    action: str
    resource: str
    before: str
    after: str
    result: str
    detail: Object
    prev_hash: str
    hash: str


class AuditRecords(_Body):
    items: list[AuditRecord]
    metadata: ListMeta


class Break(_Body):
    seq: int
    problem: str


class ChainCheck(_Body):
    records: int
    ok: bool
    headHash: str
    breaks: list[Break]
    checked: int | None = None
    mismatches: list[Break] | None = None


# --- nodes, registry ---------------------------------------------------------------------------------------------------

class Outcome(_Body):
    name: str
    outcome: str


class Ok(_Body):
    ok: bool


class Acknowledged(_Body):
    kind: str
    name: str
    acknowledged: int


class Moved(_Body):
    instance: str
    from_: str = Field(alias="from")
    to: str


class Drained(_Body):
    node: str
    cordoned: bool
    releases: list[Object] | None = None


# --- access ------------------------------------------------------------------------------------------------------------

class BindingView(_Body):
    role: str
    apps: list[str] | None


class WhoAmI(_Body):
    user: str
    token: str | None
    bindings: list[BindingView]


class UserView(_Body):
    name: str
    createdAt: float | None = None
    bindings: list[BindingView]


class Users(_Body):
    items: list[UserView]


class Bound(_Body):
    user: str
    role: str
    apps: list[str] | None


class Unbound(_Body):
    user: str
    role: str
    removed: int


class TokenView(_Body):
    id: str
    user: str
    name: str
    createdAt: float
    expiresAt: float | None
    revokedAt: float | None


class Tokens(_Body):
    items: list[TokenView]


class MintedToken(_Body):
    id: str
    user: str
    name: str
    token: str = Field(description="the secret, shown once")
    expiresAt: float | None


class Revoked(_Body):
    id: str
    user: str


# --- releases ----------------------------------------------------------------------------------------------------------

class PlanSlot(_Body):
    instance: str
    cell: str
    ordinal: int | None
    op: str


class PlanGroup(_Body):
    index: int
    name: str
    slots: list[PlanSlot]


class ReleasePlan(_Body):
    app: str
    fromRevision: int
    toRevision: int
    strategy: Object
    groups: list[PlanGroup]


class ReleaseStarted(_Body):
    id: int
    app: str
    fromRevision: int
    toRevision: int
    groups: list[PlanGroup]


class ReleaseEvent(_Body):
    ts: float
    actor: str
    action: str
    phase: str
    detail: Object


class GroupStatus(_Body):
    index: int
    name: str
    cells: dict[str, dict[str, int]]
    instances: list[Object]
    verification: Object | None = None


class ReleaseStatus(_Body):
    id: int
    app: str
    kind: str
    phase: str
    direction: str
    fromRevision: int
    toRevision: int
    completedGroups: int
    reason: str
    waiting: str
    fast: bool
    createdBy: str
    startedAt: float
    finishedAt: float | None
    elapsedSeconds: float
    pauseUntil: float | None
    strategy: Object
    groups: list[GroupStatus]
    events: list[ReleaseEvent]


class ReleaseSummary(_Body):
    id: int
    app: str
    kind: str
    fromRevision: int
    toRevision: int
    phase: str
    createdBy: str
    startedAt: float
    finishedAt: float | None
    durationSeconds: float | None
    events: list[ReleaseEvent]


class ReleaseHistory(_Body):
    items: list[ReleaseSummary]


class PhaseChange(_Body):
    phase: str
    previousPhase: str
    id: int | None = Field(None, description="the release (release routes)")
    app: str | None = None
    name: str | None = Field(None, description="the order (order routes)")


# --- orders and change windows -----------------------------------------------------------------------------------------

class OrderStats(_Body):
    orders: int
    byPhase: dict[str, int]
    finished: int
    successRate: float | None
    rollbackRate: float | None
    medianDurationSeconds: float | None


class Orders(_Body):
    items: list[ApiObject]
    stats: OrderStats


class Approval(_Body):
    name: str
    phase: str
    approvals: int
    required: int


class OrderStarted(_Body):
    name: str
    phase: str
    emergency: bool


class OrderReport(_Body):
    order: Object
    apps: list[Object]
    approvals: list[Object]
    transitions: list[Object]
    releases: list[Object]
    audit: Object
    digest: str


class WindowDeleted(_Body):
    deleted: str = Field(description="the change window's name")


# --- traffic rules -------------------------------------------------------------------------------------------------------

class RuleDeleted(_Body):
    deleted: str = Field(description="KIND/NAME of the rule removed")


class TrafficRuleState(_Body):
    kind: str
    name: str
    spec: Object
    owner: str | None = Field(description="what created it (a release) when it was not a person's apply")
    generation: int = Field(description="the registry generation that brought its last change")
    inEffect: bool = Field(description="every traffic component acknowledged that generation")
    acknowledged: list[str] = Field(description="components (mesh/NODE, gateway/NAME) that applied it")
    pending: list[str] = Field(description="components that have not yet")
    createdAt: float
    updatedAt: float
    routes: list[Object] | None = Field(None, description="each route's subsets and their ready endpoints")


class TrafficRules(_Body):
    items: list[TrafficRuleState]


class IsolationGroupState(_Body):
    name: str
    app: str
    code: str = Field(description="the business unit's code")
    convergence: str = Field(description="prefer | strict: where the group's own calls go when the callee has no "
                                         "group of this code")
    stress: bool = Field(description="it may receive stress-test calls")
    spec: Object
    cells: dict[str, Object] = Field(description="per cell: wanted, instances, ready (endpoints ready to route)")
    wanted: int
    instances: int
    ready: int
    generation: int = Field(description="the registry generation that brought its last change of routing")
    inEffect: bool = Field(description="every traffic component acknowledged that generation")
    pending: list[str] = Field(description="components that have not yet")
    status: Object = Field(description="the scheduler's last decision: unplaced counts and reasons")
    createdAt: float
    updatedAt: float
    resourceVersion: int


class IsolationGroups(_Body):
    items: list[IsolationGroupState]


class GroupDeleted(_Body):
    deleted: str = Field(description="IsolationGroup/NAME")
    name: str
    retired: list[str] = Field(description="its instances, drained and then stopped")


class Explanation(_Body):
    service: str
    generation: int
    rule: str | None
    route: str | None
    reason: str
    destinations: list[Object]
    endpoints: list[str] | None = None
    unit: str | None = Field(None, description="the caller's unit (its isolation group's code), when given")
    group: str | None = Field(None, description="the isolation group the call lands in, if any")


class Analysis(_Body):
    ok: bool
    refused: list[Object]
    warnings: list[str]


# --- scheduled tasks ---------------------------------------------------------------------------------------------------

class TaskRunStarted(_Body):
    task: str
    run: int = Field(description="the id of the run, persisted with all its shards")


class TaskShard(_Body):
    index: int
    state: str = Field(description="pending | claimed | succeeded | failed | cancelled")
    attempts: int
    claims: int = Field(description="how often a gateway claimed it (more than once: a lease ran out)")
    statusCode: int | None
    durationMs: float | None
    instance: str | None = Field(description="the instance that served the call")
    group: str | None = Field(description="its isolation group; \"\" the default pool")
    gateway: str | None
    error: str
    leaseUntil: str | None
    finishedAt: str | None


class TaskRun(_Body):
    id: int
    task: str
    trigger: str = Field(description="schedule | manual")
    scheduledFor: str | None
    state: str = Field(description="pending | running | succeeded | failed | skipped | missed")
    reason: str
    actor: str
    shards: int
    shardStates: dict[str, int]
    createdAt: str | None
    finishedAt: str | None
    service: str | None
    items: list[TaskShard]


class TaskRuns(_Body):
    items: list[TaskRun]


class ClaimedShards(_Body):
    items: list[Object] = Field(description="each shard's call: service, path, method, tags, shard index and count, "
                                "idempotency key, lease")


class ShardRecorded(_Body):
    runId: int
    index: int
    recorded: bool = Field(description="false: the shard had an outcome already, which stays")
    state: str


# --- metrics -----------------------------------------------------------------------------------------------------------

class MetricsRow(_Body):
    key: str
    instances: int
    revisions: list[int]
    cells: list[str]
    window: Object
    totalRequests: int


class MetricsSource(_Body):
    name: str
    kind: str
    address: str | None
    ok: bool
    error: str | None


class AppMetrics(_Body):
    app: str
    by: Literal["revision", "cell", "instance"]
    source: Literal["sidecar", "gateway"]
    windowSeconds: float
    deployedRevision: int
    latestRevision: int
    rows: list[MetricsRow]
    sources: list[MetricsSource]


class Health(_Body):
    status: str
    store: str
    replica: str


class LeaseView(_Body):
    name: str
    holder: str
    epoch: int
    acquiredAt: float
    renewedAt: float
    expiresAt: float
    expired: bool


class Leader(_Body):
    lease: LeaseView | None
    answeredBy: str
    store: str
    fencedWrites: dict[str, int]


class JoinTokenMade(_Body):
    id: str
    token: str
    kind: str | None
    name: str | None
    expiresAt: float


class Joined(_Body):
    kind: str
    name: str
    user: str
    id: str
    token: str
    revoked: list[str]


# --- every operation: its success status and body ----------------------------------------------------------------------

GZIP = "application/gzip"
MARKDOWN = "text/markdown"
Body = type[BaseModel] | str   # a model (JSON), or a media type of a body that is not JSON

SUCCESS: dict[tuple[str, str], tuple[tuple[int, ...], Body]] = {
    ("GET", "/healthz"): ((200,), Health),
    ("POST", "/v1/apply"): ((200,), Applied),
    ("GET", "/v1/cells"): ((200,), Items),
    ("GET", "/v1/cells/{name}"): ((200,), ApiObject),
    ("DELETE", "/v1/cells/{name}"): ((200,), Deleted),
    ("GET", "/v1/apps"): ((200,), Items),
    ("GET", "/v1/apps/{name}"): ((200,), ApiObject),
    ("DELETE", "/v1/apps/{name}"): ((200,), AppDeleted),
    ("GET", "/v1/apps/{name}/revisions"): ((200,), Items),
    ("GET", "/v1/apps/{name}/revisions/{number}"): ((200,), ApiObject),
    ("GET", "/v1/instances"): ((200,), InstanceList),
    ("GET", "/v1/instances/{instance_id}"): ((200,), ApiObject),
    ("GET", "/v1/artifacts"): ((200,), Artifacts),
    ("POST", "/v1/artifacts"): ((201, 200), Pushed),   # 200: that content was there already
    ("GET", "/v1/artifacts/{digest}"): ((200,), GZIP),
    ("GET", "/v1/audit"): ((200,), AuditRecords),
    ("GET", "/v1/audit/verify"): ((200,), ChainCheck),
    ("POST", "/v1/audit/verify"): ((200,), ChainCheck),
    ("GET", "/v1/nodes"): ((200,), Items),
    ("GET", "/v1/nodes/{name}"): ((200,), ApiObject),
    ("PUT", "/v1/nodes/{name}"): ((200,), Outcome),
    ("DELETE", "/v1/nodes/{name}"): ((200,), Deleted),
    ("POST", "/v1/nodes/{name}/status"): ((200,), Ok),
    ("GET", "/v1/nodes/{name}/assignments"): ((200,), Assignments),
    ("POST", "/v1/nodes/{name}/drain"): ((200,), Drained),
    ("POST", "/v1/nodes/{name}/uncordon"): ((200,), Drained),
    ("POST", "/v1/instances/{instance_id}/move"): ((200,), Moved),
    ("GET", "/v1/whoami"): ((200,), WhoAmI),
    ("GET", "/v1/leader"): ((200,), Leader),
    ("GET", "/v1/users"): ((200,), Users),
    ("POST", "/v1/users"): ((201,), UserView),
    ("DELETE", "/v1/users/{name}"): ((200,), Deleted),
    ("POST", "/v1/users/{name}/bindings"): ((201,), Bound),
    ("DELETE", "/v1/users/{name}/bindings/{role}"): ((200,), Unbound),
    ("GET", "/v1/tokens"): ((200,), Tokens),
    ("POST", "/v1/tokens"): ((201,), MintedToken),
    ("DELETE", "/v1/tokens/{token_id}"): ((200,), Revoked),
    ("POST", "/v1/join-tokens"): ((201,), JoinTokenMade),
    ("POST", "/v1/join"): ((200,), Joined),
    ("POST", "/v1/apps/{app}/releases/plan"): ((200,), ReleasePlan),
    ("POST", "/v1/apps/{app}/releases"): ((201,), ReleaseStarted),
    ("GET", "/v1/apps/{app}/releases"): ((200,), ReleaseHistory),
    ("GET", "/v1/apps/{app}/release"): ((200,), ReleaseStatus),
    ("POST", "/v1/apps/{app}/release/pause"): ((200,), PhaseChange),
    ("POST", "/v1/apps/{app}/release/resume"): ((200,), PhaseChange),
    ("POST", "/v1/apps/{app}/release/rollback"): ((200,), PhaseChange),
    ("GET", "/v1/registry"): ((200,), Snapshot),
    ("POST", "/v1/nodes/{name}/ack"): ((200,), Acknowledged),
    ("PUT", "/v1/gateways/{name}"): ((200,), Outcome),
    ("GET", "/v1/gateways/{name}"): ((200,), ApiObject),
    ("DELETE", "/v1/gateways/{name}"): ((200,), Deleted),
    ("POST", "/v1/gateways/{name}/ack"): ((200,), Acknowledged),
    ("GET", "/v1/gateways"): ((200,), Items),
    ("GET", "/v1/apps/{app}/endpoints"): ((200,), PagedItems),
    ("GET", "/v1/orders"): ((200,), Orders),
    ("GET", "/v1/orders/{name}"): ((200,), ApiObject),
    ("GET", "/v1/orders/{name}/report"): ((200,), OrderReport),   # or Markdown with ?format=markdown
    ("POST", "/v1/orders/{name}/approve"): ((200,), Approval),
    ("POST", "/v1/orders/{name}/reject"): ((200,), Approval),
    ("POST", "/v1/orders/{name}/start"): ((200,), OrderStarted),
    ("POST", "/v1/orders/{name}/pause"): ((200,), PhaseChange),
    ("POST", "/v1/orders/{name}/resume"): ((200,), PhaseChange),
    ("POST", "/v1/orders/{name}/rollback"): ((200,), PhaseChange),
    ("GET", "/v1/changewindows"): ((200,), Items),
    ("DELETE", "/v1/changewindows/{name}"): ((200,), WindowDeleted),
    ("GET", "/v1/apps/{app}/metrics"): ((200,), AppMetrics),
    ("GET", "/v1/trafficrules"): ((200,), TrafficRules),
    ("GET", "/v1/trafficrules/{name}"): ((200,), TrafficRuleState),
    ("DELETE", "/v1/trafficrules/{name}"): ((200,), RuleDeleted),
    ("GET", "/v1/coloringrules"): ((200,), TrafficRules),
    ("GET", "/v1/coloringrules/{name}"): ((200,), TrafficRuleState),
    ("DELETE", "/v1/coloringrules/{name}"): ((200,), RuleDeleted),
    ("GET", "/v1/isolationgroups"): ((200,), IsolationGroups),
    ("GET", "/v1/isolationgroups/{name}"): ((200,), IsolationGroupState),
    ("DELETE", "/v1/isolationgroups/{name}"): ((200,), GroupDeleted),
    ("GET", "/v1/traffic/explain"): ((200,), Explanation),
    ("POST", "/v1/traffic/analyze"): ((200,), Analysis),
    ("GET", "/v1/scheduledtasks"): ((200,), Items),
    ("GET", "/v1/scheduledtasks/{name}"): ((200,), ApiObject),
    ("DELETE", "/v1/scheduledtasks/{name}"): ((200,), Deleted),
    ("POST", "/v1/scheduledtasks/{name}/runs"): ((200,), TaskRunStarted),
    ("GET", "/v1/scheduledtasks/{name}/runs"): ((200,), TaskRuns),
    ("GET", "/v1/taskruns/{run_id}"): ((200,), TaskRun),
    ("POST", "/v1/gateways/{name}/task-shards/claim"): ((200,), ClaimedShards),
    ("POST", "/v1/gateways/{name}/task-shards/report"): ((200,), ShardRecorded),
}

# Besides 401/403/422 (every /v1 route) and 400 (any URL): what else a route can answer, by method and path.
_MUTATING = {"POST", "PUT", "DELETE"}
_READ_ONLY_POSTS = {"/v1/apps/{app}/releases/plan", "/v1/audit/verify", "/v1/traffic/analyze"}
_NOT_FOUND_WITHOUT_PARAMS = {("POST", "/v1/tokens"),        # a token for a user who does not exist
                             ("GET", "/v1/traffic/explain")}  # a service that does not exist


def error_statuses(method: str, path: str) -> list[int]:
    """The error statuses an operation can answer (405 is not one: it belongs to methods a path lacks)."""
    if not path.startswith("/v1/"):
        return [400]
    statuses = [400, 401, 403, 422]
    if "{" in path or (method, path) in _NOT_FOUND_WITHOUT_PARAMS:
        statuses.append(404)
    if method in _MUTATING and path not in _READ_ONLY_POSTS:
        statuses.append(409)
    if (method, path) == ("POST", "/v1/artifacts"):
        statuses.append(413)
    if (method, path) == ("GET", "/v1/instances"):
        statuses.append(410)   # a watch from a version older than the deletions kept
    if (method, path) == ("POST", "/v1/apply"):
        statuses.append(404)   # a manifest that refers to a cell (or app) that does not exist
    return sorted(statuses)


# Example names in paths, by the collection they name (the README's): a reader sees what goes there, and a
# generator of requests (schemathesis' examples phase) tries them first.
_EXAMPLES = {"apps": "shop", "cells": "cell-a", "nodes": "n1", "gateways": "edge", "users": "vic",
             "orders": "chg-42", "changewindows": "business-hours", "trafficrules": "back-canary",
             "coloringrules": "replenish", "isolationgroups": "back-vostro", "scheduledtasks": "replenish-batch"}


def _example(path: str, parameter: dict[str, Any]) -> None:
    name = parameter.get("name")
    if parameter.get("in") != "path":
        return
    if name == "number":
        parameter["example"] = 1
    elif name == "role":
        parameter["example"] = "viewer"
    elif name in ("name", "app") and path.split("/")[2] in _EXAMPLES:
        parameter["example"] = _EXAMPLES[path.split("/")[2]]


def _no_nul(parameter: dict[str, Any]) -> None:
    """A URL with a NUL is refused (400) before any route sees it: say so on every text parameter."""
    for option in [parameter, *parameter.get("anyOf", [])]:
        if option.get("type") == "string" and "pattern" not in option and "format" not in option \
                and "enum" not in option:
            option["pattern"] = "^[^\\x00]*$"


def _shape(schema: Any) -> Any:
    """A schema without its defaults (FastAPI leaves out a request model's null defaults, pydantic writes them)."""
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items() if k != "default"}
    if isinstance(schema, list):
        return [_shape(v) for v in schema]
    return schema


def describe(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi`: FastAPI's schema with each operation's success body and error statuses described."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        models: list[type[BaseModel]] = sorted({b for _, b in SUCCESS.values() if isinstance(b, type)} | {Error},
                                               key=lambda m: m.__name__)
        refs, definitions = models_json_schema([(m, "serialization") for m in models],
                                               ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        defs = definitions.get("$defs", {})
        # A model both sides use (a rule's match) is described once; one only named like another would silently
        # replace its description.
        clash = {name for name in set(components) & set(defs) if _shape(components[name]) != _shape(defs[name])}
        if clash:
            raise AssertionError(f"response models named like request models: {sorted(clash)}")
        components.update(definitions.get("$defs", {}))
        ref = {m: refs[(m, "serialization")] for m in models}
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                statuses, body = SUCCESS[(method.upper(), path)]
                content = ({body: {"schema": {"type": "string", "format": "binary"}}} if isinstance(body, str)
                           else {"application/json": {"schema": ref[body]}})
                if (method.upper(), path) == ("GET", "/v1/orders/{name}/report"):
                    content[MARKDOWN] = {"schema": {"type": "string"}}
                responses: dict[str, Any] = {str(s): {"description": "success", "content": content} for s in statuses}
                for status in error_statuses(method.upper(), path):
                    responses[str(status)] = {"description": ERRORS[status],
                                              "content": {"application/json": {"schema": ref[Error]}}}
                operation["responses"] = responses
                for parameter in operation.get("parameters", []):
                    _no_nul(parameter.get("schema", {}))
                    _example(path, parameter)
        # The artifact route reads its body as a stream (no model to describe it): a package, stored as sent.
        schema["paths"]["/v1/artifacts"]["post"]["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1,
                                                    "description": "a .tar.gz package"}}}}
        # The longest token lifetime is this server's (`ballast server --max-token-ttl`).
        longest = app.state.token_policy.max_seconds
        if longest is not None:
            ttl = components["NewToken"]["properties"]["ttlSeconds"]["anyOf"][0]
            ttl["maximum"] = min(ttl.get("maximum", longest), longest)
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    return openapi
