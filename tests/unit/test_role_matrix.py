"""The role matrix: every mutating route of the API against every kind of caller, over both stores.

The routes are read from the app itself, so a new mutating route without a row here fails, and so does a row
for a route that is gone. Each row says how to call the route with a valid request on a prepared store, the
status of success, and exactly which principals may. For every (route, principal):

- allowed: the call succeeds and changes what it should; a route that audits itself appends its own record
  (action, resource, actor, before/after digests), never the middleware's generic one;
- denied with 403 (a known caller): every table but the audit log is unchanged, and the audit log gained exactly
  one record: the refusal;
- denied with 401 (no valid token: none, malformed, expired, revoked, or a credential an earlier row spent): the
  admission middleware answers before any route runs, nothing at all changes, the audit log included, and the
  refusal is only counted (it reaches the audit log later, aggregated).

Nodes and gateways act with their own joined credentials, each only as itself; no person (admins included) acts
as a component, and a join token does nothing but join.

Each principal gets its own copy of one prepared store (a file copy, a PostgreSQL template) and runs every row
against it in order; rows touch disjoint objects, so an allowed row never disturbs a later one. The last rows may
use up the caller's own credential (a join consumes its join token; a component's only token is its credential,
which it may revoke): from then on that caller is refused like any request without a valid token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from ballast.api.admission import Refusals
from ballast.api.app import MUTATING, create_app
from ballast.cli.packaging import pack
from ballast.controllers import endpoints as registry_controller
from ballast.controllers import releases as release_engine
from ballast.controllers import scheduler
from ballast.core.manifests import API_VERSION
from ballast.store import schema
from ballast.services.access import bootstrap_admin
from ballast.store.engine import Store
from tests.conftest import Api, Fleet, _drop_database, _pg_admin, _require_pg, join_component

# --- the principals ------------------------------------------------------------------------------------------------

ADMIN, OPERATOR, SCOPED_OPERATOR, VIEWER = "admin", "operator", "operator-of-another-app", "viewer"
APPROVER, EMERGENCY_APPROVER = "approver", "emergency-approver"
NODE, OTHER_NODE, GATEWAY, JOIN_TOKEN = "node-n1", "node-n2", "gateway-gw1", "join-token"
EXPIRED, REVOKED, MALFORMED, NO_TOKEN = "expired-token", "revoked-token", "malformed-token", "no-token"
PRINCIPALS = [ADMIN, OPERATOR, SCOPED_OPERATOR, VIEWER, APPROVER, EMERGENCY_APPROVER, NODE, OTHER_NODE, GATEWAY,
              JOIN_TOKEN, EXPIRED, REVOKED, MALFORMED, NO_TOKEN]
UNAUTHENTICATED = {EXPIRED, REVOKED, MALFORMED, NO_TOKEN}
PEOPLE = frozenset({ADMIN, OPERATOR, SCOPED_OPERATOR, VIEWER, APPROVER, EMERGENCY_APPROVER})
READERS = PEOPLE - {SCOPED_OPERATOR}  # unscoped READ
# principal -> (kind, name) of the component whose own joined credential it is
COMPONENTS: dict[str, tuple[str, str]] = {NODE: ("node", "n1"), OTHER_NODE: ("node", "n2"),
                                          GATEWAY: ("gateway", "gw1")}
JOINING = ("node", "n-join")   # what the join token principal's token was made for

# principal -> (user, role, apps) of the user behind it; the expired and revoked tokens are an admin's, so only
# the token's state refuses them.
USERS: dict[str, tuple[str, str, list[str] | None]] = {
    OPERATOR: ("op", "operator", None),
    SCOPED_OPERATOR: ("op-other", "operator", ["other"]),
    VIEWER: ("watcher", "viewer", None),
    APPROVER: ("checker", "approver", None),
    EMERGENCY_APPROVER: ("e-checker", "emergency-approver", None),
    EXPIRED: ("old-admin", "admin", None),
    REVOKED: ("gone-admin", "admin", None),
}
EXPIRY_SECONDS = 600.0  # the expired token's lifetime; the store's clock is then moved past it


@dataclass
class Caller:
    """Who calls, and what of theirs the rows refer to."""

    principal: str
    user: str | None                 # None: no valid token, so no actor but "anonymous"
    headers: dict[str, str]
    spare_token_id: str              # a token of the caller's own user that a row revokes (a component's only
                                     # credential is its own; without a valid token of its own: another user's)
    credential_id: str = ""          # the id of the token in `headers`, if it is valid
    spent: bool = False              # an allowed row used the credential up: it authenticates no more


# --- the rows ------------------------------------------------------------------------------------------------------

# What an audit record of a change carries: created (after only), deleted (before only), changed (both, differ).
CREATED, DELETED, CHANGED = "created", "deleted", "changed"


@dataclass(frozen=True)
class Row:
    method: str
    route: str                                   # the path template as the app declares it
    path: str | Callable[[Caller], str]
    allowed: frozenset[str]
    status: int = 200                            # of success
    json: Any = None
    content: bytes | None = None
    audit: tuple[str, str, str] | None = None    # (action, resource, digests); None: the route audits nothing
    changes: bool = True                         # False: a read sent as POST (plan, verify), changes nothing
    variant: str = ""
    actor: str | None = None                     # the audit record's actor when not the caller (a join's: the
                                                 # component it made)
    spends: Callable[[Caller], bool] | None = None   # whether the allowed call used up the caller's credential

    def url(self, caller: Caller) -> str:
        return self.path(caller) if callable(self.path) else self.path

    def label(self) -> str:
        return f"{self.method} {self.route}" + (f" ({self.variant})" if self.variant else "")


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def app_manifest(name: str, count: int = 0, greeting: str = "v1") -> dict[str, Any]:
    return manifest("AppService", name, {"cells": {"cell-a": count},
                                         "template": {"command": ["python3", "app.py"], "env": {"G": greeting}}})


def order_manifest(name: str, app: str) -> dict[str, Any]:
    return manifest("ReleaseOrder", name, {"title": name, "ticket": "CHG-1", "releases": [{"app": app}]})


# Change windows in these rows apply to an app no order touches, so they never close an order's start.
WINDOW = {"timeZone": "UTC", "allowed": [{"days": ["mon"], "start": "09:00", "end": "10:00"}], "apps": ["nobody"]}
UNDONE_APP = "rel-undo"   # its release to revision 2 has succeeded: a rollback starts a new release back
ADMINS = frozenset({ADMIN})
OPERATORS = frozenset({ADMIN, OPERATOR})
PUSHERS = frozenset({ADMIN, OPERATOR, SCOPED_OPERATOR})   # any operator binding, scoped or not
ACK = {"generation": 0}
TASK = {"schedule": "0 3 * * *", "target": {"service": "app-rules", "path": "/tasks/x"}, "shards": 2}


def small_package() -> bytes:
    """A real artifact, packed the way the CLI packs a directory."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "app.py").write_text("print('hello')\n")
        return pack(Path(directory))[0]


def registration(ip: str, cpu: int = 8000) -> dict[str, Any]:
    return {"cell": "cell-spare", "ip": ip, "cpuMillis": cpu, "memoryBytes": 2**30}


def _revokes_its_only_credential(caller: Caller) -> bool:
    return caller.spare_token_id == caller.credential_id

ROWS: list[Row] = [
    # declared resources
    Row("POST", "/v1/apply", "/v1/apply", OPERATORS, json={"items": [app_manifest("app-new")]},
        audit=("apply", "AppService/app-new", CREATED), variant="an app"),
    Row("POST", "/v1/apply", "/v1/apply", ADMINS, json={"items": [manifest("Cell", "cell-new", {"zone": "z"})]},
        audit=("apply", "Cell/cell-new", CREATED), variant="a cell"),
    Row("POST", "/v1/apply", "/v1/apply", ADMINS, json={"items": [manifest("ChangeWindow", "cw-new", WINDOW)]},
        audit=("apply", "ChangeWindow/cw-new", CREATED), variant="a change window"),
    Row("POST", "/v1/apply", "/v1/apply", OPERATORS, json={"items": [order_manifest("order-new", "app-order-new")]},
        audit=("order.create", "ReleaseOrder/order-new", CREATED), variant="a release order"),
    Row("DELETE", "/v1/cells/{name}", "/v1/cells/cell-del", ADMINS, audit=("delete", "Cell/cell-del", DELETED)),
    Row("DELETE", "/v1/apps/{name}", "/v1/apps/app-del", OPERATORS, audit=("delete", "AppService/app-del", DELETED)),
    Row("DELETE", "/v1/trafficrules/{name}", "/v1/trafficrules/tr-del", OPERATORS,
        audit=("delete", "TrafficRule/tr-del", DELETED)),
    Row("DELETE", "/v1/coloringrules/{name}", "/v1/coloringrules/cr-del", OPERATORS,
        audit=("delete", "ColoringRule/cr-del", DELETED)),
    Row("DELETE", "/v1/isolationgroups/{name}", "/v1/isolationgroups/ig-del", OPERATORS,
        audit=("delete", "IsolationGroup/ig-del", DELETED)),
    Row("POST", "/v1/apply", "/v1/apply", OPERATORS,
        json={"items": [manifest("IsolationGroup", "ig-new", {"app": "app-rules", "code": "fresh", "replicas": 0})]},
        audit=("apply", "IsolationGroup/ig-new", CREATED), variant="an isolation group"),
    Row("POST", "/v1/apply", "/v1/apply", OPERATORS, json={"items": [manifest("ScheduledTask", "st-new", TASK)]},
        audit=("apply", "ScheduledTask/st-new", CREATED), variant="a scheduled task"),
    Row("DELETE", "/v1/scheduledtasks/{name}", "/v1/scheduledtasks/st-del", OPERATORS,
        audit=("delete", "ScheduledTask/st-del", DELETED)),
    Row("POST", "/v1/scheduledtasks/{name}/runs", "/v1/scheduledtasks/st-run/runs", OPERATORS,
        audit=("task.run", "ScheduledTask/st-run", CREATED)),
    Row("POST", "/v1/traffic/analyze", "/v1/traffic/analyze", READERS, changes=False,
        json={"items": [manifest("TrafficRule", "tr-new", {"service": "app-rules",
                                                             "routes": [{"name": "all", "to": [{"revision": 1}]}]})]}),
    Row("POST", "/v1/artifacts", "/v1/artifacts", PUSHERS, status=201, content=small_package(),
        audit=("artifact.push", "Artifact/sha256:", CREATED)),
    Row("POST", "/v1/audit/verify", "/v1/audit/verify", READERS, json={"records": [{"seq": 1, "hash": "x"}]},
        changes=False),
    # nodes: only node n1's own credential acts as n1 (not node n2's, not the gateway's, no person's)
    Row("PUT", "/v1/nodes/{name}", "/v1/nodes/n1", frozenset({NODE}), json=registration("10.0.2.1", cpu=4000),
        audit=("node.register", "Node/n1", CHANGED)),
    Row("POST", "/v1/nodes/{name}/status", "/v1/nodes/n1/status", frozenset({NODE}), json={"instances": []}),
    Row("POST", "/v1/nodes/{name}/ack", "/v1/nodes/n1/ack", frozenset({NODE}), json=ACK),
    Row("DELETE", "/v1/nodes/{name}", "/v1/nodes/node-del", ADMINS, audit=("node.delete", "Node/node-del", DELETED)),
    Row("POST", "/v1/nodes/{name}/drain", "/v1/nodes/node-drain/drain", ADMINS,
        audit=("node.drain", "Node/node-drain", CHANGED)),
    Row("POST", "/v1/nodes/{name}/uncordon", "/v1/nodes/node-cordoned/uncordon", ADMINS,
        audit=("node.uncordon", "Node/node-cordoned", CHANGED)),
    Row("POST", "/v1/instances/{instance_id}/move", "/v1/instances/app-move-0/move", ADMINS, json={},
        audit=("instance.move", "Instance/app-move-0", CHANGED)),
    # gateways: only gateway gw1's own credential acts as gw1
    Row("PUT", "/v1/gateways/{name}", "/v1/gateways/gw1", frozenset({GATEWAY}), json={"address": "127.0.0.1:8081"},
        audit=("gateway.register", "Gateway/gw1", CHANGED)),
    Row("POST", "/v1/gateways/{name}/ack", "/v1/gateways/gw1/ack", frozenset({GATEWAY}), json=ACK),
    Row("POST", "/v1/gateways/{name}/task-shards/claim", "/v1/gateways/gw1/task-shards/claim", frozenset({GATEWAY}),
        json={"max": 1}),
    Row("POST", "/v1/gateways/{name}/task-shards/report", "/v1/gateways/gw1/task-shards/report",
        frozenset({GATEWAY}), json={"runId": 1, "index": 0, "outcome": "succeeded", "durationMs": 5, "attempts": 1}),
    Row("DELETE", "/v1/gateways/{name}", "/v1/gateways/gw-del", ADMINS,
        audit=("gateway.delete", "Gateway/gw-del", DELETED)),
    # users, bindings, tokens
    Row("POST", "/v1/users", "/v1/users", ADMINS, status=201, json={"name": "u-new", "role": "viewer"},
        audit=("user.create", "User/u-new", CREATED)),
    Row("DELETE", "/v1/users/{name}", "/v1/users/u-del", ADMINS, audit=("user.delete", "User/u-del", DELETED)),
    Row("POST", "/v1/users/{name}/bindings", "/v1/users/u-bind/bindings", ADMINS, status=201,
        json={"role": "operator", "apps": ["shop"]}, audit=("user.bind", "User/u-bind", CHANGED)),
    Row("DELETE", "/v1/users/{name}/bindings/{role}", "/v1/users/u-unbind/bindings/viewer", ADMINS,
        audit=("user.unbind", "User/u-unbind", CHANGED)),
    Row("POST", "/v1/tokens", "/v1/tokens", ADMINS, status=201, json={"user": "u-tok", "name": "for u-tok"},
        audit=("token.create", "Token/tok_", CREATED), variant="for another user"),
    Row("POST", "/v1/tokens", "/v1/tokens", PEOPLE, status=201, json={"name": "my own"},
        audit=("token.create", "Token/tok_", CREATED), variant="one's own"),
    Row("POST", "/v1/tokens", "/v1/tokens", frozenset(), status=201, json={"user": "node/n1", "name": "minted"},
        variant="for a node: no one, it joins"),
    Row("DELETE", "/v1/tokens/{token_id}", "/v1/tokens/{u-tok}", ADMINS,
        audit=("token.revoke", "Token/tok_", CHANGED), variant="another user's"),
    Row("POST", "/v1/join-tokens", "/v1/join-tokens", ADMINS, status=201, json={"kind": "gateway", "name": "gw-new"},
        audit=("join-token.create", "JoinToken/jt_", CREATED)),
    # releases
    Row("POST", "/v1/apps/{app}/releases/plan", "/v1/apps/rel-start/releases/plan", READERS, json={},
        changes=False),
    Row("POST", "/v1/apps/{app}/releases", "/v1/apps/rel-start/releases", OPERATORS, status=201, json={},
        audit=("release.start", "AppService/rel-start", CREATED)),
    Row("POST", "/v1/apps/{app}/release/pause", "/v1/apps/rel-pause/release/pause", OPERATORS,
        audit=("release.pause", "AppService/rel-pause", CHANGED)),
    Row("POST", "/v1/apps/{app}/release/resume", "/v1/apps/rel-resume/release/resume", OPERATORS,
        audit=("release.resume", "AppService/rel-resume", CHANGED)),
    Row("POST", "/v1/apps/{app}/release/rollback", "/v1/apps/rel-rollback/release/rollback", OPERATORS,
        audit=("release.rollback", "AppService/rel-rollback", CHANGED)),
    Row("POST", "/v1/apps/{app}/release/rollback", f"/v1/apps/{UNDONE_APP}/release/rollback", OPERATORS,
        audit=("release.rollback", f"AppService/{UNDONE_APP}", CREATED), variant="after success: a new release"),
    # release orders and change windows
    Row("POST", "/v1/orders/{name}/approve", "/v1/orders/order-approve/approve", frozenset({ADMIN, APPROVER}),
        json={"comment": "checked"}, audit=("order.approve", "ReleaseOrder/order-approve", CHANGED)),
    Row("POST", "/v1/orders/{name}/approve", "/v1/orders/order-emergency/approve",
        frozenset({ADMIN, EMERGENCY_APPROVER}), json={"comment": "incident", "emergency": True},
        audit=("order.emergency-approve", "ReleaseOrder/order-emergency", CHANGED), variant="emergency"),
    Row("POST", "/v1/orders/{name}/reject", "/v1/orders/order-reject/reject", frozenset({ADMIN, APPROVER}),
        json={"comment": "not now"}, audit=("order.reject", "ReleaseOrder/order-reject", CHANGED)),
    Row("POST", "/v1/orders/{name}/start", "/v1/orders/order-start/start", OPERATORS, json={},
        audit=("order.start", "ReleaseOrder/order-start", CHANGED)),
    Row("POST", "/v1/orders/{name}/pause", "/v1/orders/order-pause/pause", OPERATORS, json={},
        audit=("order.pause", "ReleaseOrder/order-pause", CHANGED)),
    Row("POST", "/v1/orders/{name}/resume", "/v1/orders/order-resume/resume", OPERATORS, json={},
        audit=("order.resume", "ReleaseOrder/order-resume", CHANGED)),
    Row("POST", "/v1/orders/{name}/rollback", "/v1/orders/order-rollback/rollback", OPERATORS, json={},
        audit=("order.rollback", "ReleaseOrder/order-rollback", CHANGED)),
    Row("DELETE", "/v1/changewindows/{name}", "/v1/changewindows/cw-del", ADMINS,
        audit=("delete", "ChangeWindow/cw-del", DELETED)),
    # Last, as they may use the caller's credential up: a join consumes its join token, and a component's only
    # token is its credential (it may revoke it, and then authenticates no more).
    Row("POST", "/v1/join", "/v1/join", frozenset({JOIN_TOKEN}), json={"kind": JOINING[0], "name": JOINING[1]},
        audit=("node.join", f"Node/{JOINING[1]}", CREATED), actor=f"{JOINING[0]}/{JOINING[1]}",
        spends=lambda caller: True),
    Row("DELETE", "/v1/tokens/{token_id}", lambda c: f"/v1/tokens/{c.spare_token_id}", PEOPLE | set(COMPONENTS),
        audit=("token.revoke", "Token/tok_", CHANGED), variant="one's own", spends=_revokes_its_only_credential),
]

RELEASE_APPS = ["rel-start", "rel-pause", "rel-resume", "rel-rollback"]
ORDER_APPS = {"order-approve": "app-approve", "order-emergency": "app-emergency", "order-reject": "app-reject",
              "order-start": "app-start", "order-pause": "app-pause", "order-resume": "app-resume",
              "order-rollback": "app-rollback"}


def mutating_routes() -> set[tuple[str, str]]:
    """(method, path) of every mutating route the app serves, included routers flattened."""
    app = create_app(Store.__new__(Store))  # routes only: no request reaches a store here
    return {(method, str(route.path)) for route in iter_route_contexts(app.routes)
            for method in (route.methods or set()) & MUTATING}


def test_every_mutating_route_has_a_row_and_every_row_a_route() -> None:
    """A mutating route added without a row, or a row left for a route that is gone, fails here."""
    routes, rows = mutating_routes(), {(r.method, r.route) for r in ROWS}
    assert not routes - rows, f"mutating routes without a row in the role matrix: {sorted(routes - rows)}"
    assert not rows - routes, f"rows for routes the app does not have: {sorted(rows - routes)}"


# --- the prepared store --------------------------------------------------------------------------------------------


async def ok(response: Any, status: int = 200) -> Any:
    r = await response
    assert r.status_code == status, r.text
    return r.json()


async def new_user(api: Api, name: str, role: str, apps: list[str] | None = None, **token: Any) -> dict[str, Any]:
    await ok(api.http.post("/v1/users", json={"name": name, "role": role, "apps": apps}), 201)
    return await ok(api.http.post("/v1/tokens", json={"user": name, "name": name, **token}), 201)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Prepared:
    """A store every row can act on, prepared once per store kind (and test worker), copied per principal."""

    url: str
    admin_token: str
    tokens: dict[str, dict[str, Any]]    # principal -> its user's token as minted
    other_token_id: str                  # a token of user u-tok, which rows revoke


async def prepare(api: Api) -> Prepared:
    """Every object a row acts on, set up by the admin, nodes and gateways each with its own joined credential.
    Orders are written by an operator (so the admin is no author) after every approver's binding was made, by the
    admin: their approvals count (core/maker_checker.py)."""
    admin = api.http
    tokens: dict[str, dict[str, Any]] = {}
    for who, (user, role, apps) in USERS.items():
        tokens[who] = await new_user(api, user, role, apps,
                                     **({"ttlSeconds": EXPIRY_SECONDS} if who == EXPIRED else {}))
    for name in ("u-del", "u-bind", "u-unbind", "u-tok"):
        await new_user(api, name, "viewer")
    other_token = await ok(admin.post("/v1/tokens", json={"user": "u-tok", "name": "another"}), 201)
    await ok(admin.delete(f"/v1/tokens/{tokens[REVOKED]['id']}"))
    author = api.as_((await new_user(api, "author", "operator"))["token"])
    setup_approver = api.as_((await new_user(api, "setup-checker", "approver"))["token"])
    fleet = Fleet(api)   # the objects' nodes and gateways, each joined as itself

    cells = [manifest("Cell", c, {"zone": f"z-{c}"}) for c in ("cell-a", "cell-spare", "cell-del", "cell-lost")]
    windows = [manifest("ChangeWindow", "cw-del", WINDOW)]
    release_apps = [app_manifest(a, count=1) for a in [*RELEASE_APPS, UNDONE_APP]]
    order_apps = [app_manifest(a) for a in ORDER_APPS.values()]
    await ok(admin.post("/v1/apply", json={"items": [*cells, *windows, *release_apps, *order_apps,
                                                     app_manifest("app-del"), app_manifest("app-order-new")]}))
    await ok(admin.post("/v1/apply", json={"items": [
        app_manifest("app-rules"),
        manifest("TrafficRule", "tr-del", {"service": "app-rules", "routes": [{"name": "all", "to": [{"revision": 1}]}]}),
        manifest("ColoringRule", "cr-del", {"at": {"apps": ["app-rules"]}, "tags": {"env": "gray"}}),
        manifest("IsolationGroup", "ig-del", {"app": "app-rules", "code": "del", "replicas": 0})]}))
    for node, cell, ip in [("node-a1", "cell-a", "10.0.0.1"), ("node-del", "cell-spare", "10.0.1.1"),
                           ("node-drain", "cell-spare", "10.0.1.2"), ("node-cordoned", "cell-spare", "10.0.1.3")]:
        await ok(fleet.put(f"/v1/nodes/{node}", json={"cell": cell, "ip": ip, "cpuMillis": 8000,
                                                      "memoryBytes": 16 * 2**30}))
    await ok(admin.post("/v1/nodes/node-cordoned/drain"))
    assert await scheduler.reconcile_once(api.store) == len(RELEASE_APPS) + 1
    await ok(fleet.put("/v1/gateways/gw-del", json={"address": "127.0.0.1:8080"}))
    # An ordered instance on a node that went NotReady, and a ready node of its cell to move it to.
    await ok(fleet.put("/v1/nodes/node-lost", json={"cell": "cell-lost", "ip": "10.0.3.1", "cpuMillis": 8000,
                                                    "memoryBytes": 16 * 2**30}))
    await ok(admin.post("/v1/apply", json={"items": [manifest("AppService", "app-move", {
        "cells": {"cell-lost": 1}, "strategy": {"upgrade": "ordered"},
        "template": {"command": ["python3", "app.py"]}})]}))
    assert await scheduler.reconcile_once(api.store) == 1
    async with api.store.write() as tx:
        await tx.conn.execute(update(schema.nodes).where(schema.nodes.c.name == "node-lost").values(lifecycle="NotReady"))
    await ok(fleet.put("/v1/nodes/node-new", json={"cell": "cell-lost", "ip": "10.0.3.2", "cpuMillis": 8000,
                                                   "memoryBytes": 16 * 2**30}))
    async with api.store.write() as tx:   # heard from for the whole test, however long it takes
        await tx.conn.execute(update(schema.nodes).where(schema.nodes.c.name == "node-new").values(
            last_heartbeat=time.time() + 86_400))
    await ok(admin.post("/v1/apply", json={"items": [app_manifest(UNDONE_APP, count=1, greeting="v2")]}))
    await ok(admin.post(f"/v1/apps/{UNDONE_APP}/releases", json={"strategy": {"pause": "none"}}), 201)
    await release_succeeds(api, fleet, UNDONE_APP)
    # The components behind principals: registered, so that their rows change a registration.
    for who, (kind, name) in COMPONENTS.items():
        tokens[who] = await join_component(api, kind, name)
    await ok(admin.post("/v1/apply", json={"items": [manifest("ScheduledTask", name, TASK)
                                                     for name in ("st-claimed", "st-del", "st-run")]}))
    assert (await ok(admin.post("/v1/scheduledtasks/st-claimed/runs")))["run"] == 1   # the report row's run
    async with api.as_(tokens[NODE]["token"]) as n1, api.as_(tokens[GATEWAY]["token"]) as gw1:
        await ok(n1.put("/v1/nodes/n1", json=registration("10.0.2.1")))
        await ok(gw1.put("/v1/gateways/gw1", json={"address": "127.0.0.1:8080"}))
        claimed = await ok(gw1.post("/v1/gateways/gw1/task-shards/claim", json={"max": 1}))
        assert [(c["runId"], c["index"]) for c in claimed["items"]] == [(1, 0)]   # shard 1 is left for the claim row
    tokens[JOIN_TOKEN] = await ok(admin.post("/v1/join-tokens", json={"kind": JOINING[0], "name": JOINING[1]}), 201)
    # revision 2 of every app a release or order goes to
    await ok(admin.post("/v1/apply", json={"items": [app_manifest(a, count=1, greeting="v2") for a in RELEASE_APPS]
                                                    + [app_manifest(a, greeting="v2") for a in ORDER_APPS.values()]}))
    for app in ("rel-pause", "rel-resume", "rel-rollback"):
        await ok(admin.post(f"/v1/apps/{app}/releases", json={}), 201)
    await ok(admin.post("/v1/apps/rel-resume/release/pause"))

    await ok(author.post("/v1/apply", json={"items": [order_manifest(o, a) for o, a in ORDER_APPS.items()]}))
    for name in ("order-start", "order-pause", "order-resume", "order-rollback"):
        await ok(setup_approver.post(f"/v1/orders/{name}/approve", json={"comment": "ok"}))
    for name in ("order-pause", "order-resume", "order-rollback"):
        await ok(author.post(f"/v1/orders/{name}/start", json={}))
    await ok(author.post("/v1/orders/order-resume/pause", json={}))
    return Prepared("", api.admin_token, tokens, other_token["id"])


async def release_succeeds(api: Api, fleet: Fleet, app: str) -> None:
    """The data plane runs what `app`'s one instance is granted and every node and gateway acknowledges the
    registry, until the release engine has finished `app`'s release (a bounded number of passes)."""
    for _ in range(10):
        await registry_controller.reconcile_once(api.store)
        [inst] = (await ok(api.http.get("/v1/instances", params={"app": app})))["items"]
        await ok(fleet.post(f"/v1/nodes/{inst['spec']['node']}/status", json={"instances": [
            {"id": inst["metadata"]["name"], "phase": "Running", "ready": True, "restarts": 0, "port": 20000,
             "revision": inst["status"]["grantedRevision"]}]}))
        await registry_controller.reconcile_once(api.store)
        generation = (await ok(fleet.get("/v1/registry")))["generation"]
        for kind, name in fleet.clients:
            await ok(fleet.post(f"/v1/{kind}s/{name}/ack", json={"generation": generation}))
        await release_engine.reconcile_once(api.store)
        if (await ok(api.http.get(f"/v1/apps/{app}/release")))["phase"] == "Succeeded":
            return
    raise AssertionError(f"the release of {app} did not succeed")


async def caller_for(api: Api, prepared: Prepared, principal: str) -> Caller:
    """The principal's credentials on a copy of the prepared store, and a token of its own to revoke (a person's
    spare one; a component's only credential)."""
    if principal == EXPIRED:  # the server's clock, not the test's, says the token has expired
        api.store.clock = lambda: time.time() + EXPIRY_SECONDS + 1
    if principal in UNAUTHENTICATED:
        token = prepared.tokens[principal]["token"] if principal in USERS else "not a token, not even the shape of one"
        headers = {} if principal == NO_TOKEN else {"Authorization": f"Bearer {token}"}
        return Caller(principal, None, headers, prepared.other_token_id)
    if principal in COMPONENTS or principal == JOIN_TOKEN:
        minted = prepared.tokens[principal]
        headers = {"Authorization": f"Bearer {minted['token']}"}
        if principal == JOIN_TOKEN:
            return Caller(principal, f"join-token/{minted['id']}", headers, prepared.other_token_id, minted["id"])
        return Caller(principal, minted["user"], headers, minted["id"], minted["id"])
    token = prepared.admin_token if principal == ADMIN else prepared.tokens[principal]["token"]
    spare = await ok(api.as_(token).post("/v1/tokens", json={"name": "spare"}), 201)
    return Caller(principal, "admin" if principal == ADMIN else USERS[principal][0],
                  {"Authorization": f"Bearer {token}"}, spare["id"])


# store kind -> the prepared template, per test worker; each principal's test runs on its own copy
_TEMPLATES: dict[str, Prepared] = {}


@pytest.fixture(scope="module")
def _drop_templates() -> Iterator[dict[str, Prepared]]:
    yield _TEMPLATES
    for kind, prepared in list(_TEMPLATES.items()):
        if kind == "postgresql":
            asyncio.run(_drop_database(make_url(prepared.url).database or ""))
        del _TEMPLATES[kind]


async def _copy_pg(template: str, name: str) -> None:
    """CREATE DATABASE … TEMPLATE refuses while a just-closed session to the template still winds down: retry."""
    import asyncpg

    for attempt in range(20):
        try:
            await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return
        except asyncpg.exceptions.ObjectInUseError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
async def matrix_api(store_kind: str, tmp_path_factory: pytest.TempPathFactory,
                     _drop_templates: dict[str, Prepared]) -> AsyncIterator[tuple[Api, Prepared]]:
    """The API over a fresh copy of the prepared store (prepared on first use by this worker)."""
    if store_kind not in _drop_templates:
        if store_kind == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'template.db'}"
        else:
            name = "ballast_m_" + secrets.token_hex(4)
            await _pg_admin(f'CREATE DATABASE "{name}"')
            url = make_url(_require_pg()).set(database=name).render_as_string(hide_password=False)
        _drop_templates[store_kind] = Prepared(url, "", {}, "")  # dropped at the end even if preparing fails
        template = await Store.open(url)
        try:
            async with _api_over(template) as api:
                _drop_templates[store_kind] = dataclasses.replace(await prepare(api), url=url)
        finally:
            await template.close()
    prepared = _drop_templates[store_kind]
    assert prepared.admin_token, "preparing the template store failed in an earlier test"
    if store_kind == "sqlite":
        source = make_url(prepared.url).database or ""
        copy = str(tmp_path_factory.mktemp("matrix-copy") / "ballast.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(source + suffix):
                shutil.copyfile(source + suffix, copy + suffix)
        url, dropped = f"sqlite:///{copy}", None
    else:
        dropped = "ballast_t_" + secrets.token_hex(4)
        await _copy_pg(make_url(prepared.url).database or "", dropped)
        url = make_url(prepared.url).set(database=dropped).render_as_string(hide_password=False)
    store = await Store.open(url)
    try:
        async with _api_over(store, prepared.admin_token) as api:
            yield api, prepared
    finally:
        await store.close()
        if dropped:
            await _drop_database(dropped)


@contextlib.asynccontextmanager
async def _api_over(store: Store, admin_token: str | None = None) -> AsyncIterator[Api]:
    token = admin_token or await bootstrap_admin(store)
    assert token is not None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store)), base_url="http://ballast",
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        yield Api(store=store, admin_token=token, http=http)


async def table_digest(store: Store) -> dict[str, list[str]]:
    """Every row of every table but the audit log and its bookkeeping (the chain head, and the resource
    version every write bumps): what a refused request must leave exactly as it was."""
    out: dict[str, list[str]] = {}
    async with store.read() as conn:
        for table in schema.metadata.sorted_tables:
            if table.name in ("audit", "audit_head", "counters"):
                continue
            out[table.name] = sorted(repr(tuple(r)) for r in (await conn.execute(select(table))).all())
    return out


async def audit_since(store: Store, seq: int) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(select(schema.audit).where(schema.audit.c.seq > seq)
                                        .order_by(schema.audit.c.seq))).all())


async def audit_head(store: Store) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.coalesce(func.max(schema.audit.c.seq), 0)))).scalar_one())


def resolve(row: Row, caller: Caller, other_token: str) -> str:
    return row.url(caller).replace("{u-tok}", other_token)


async def check_row(api: Api, row: Row, caller: Caller, other_token: str,
                    before: dict[str, list[str]]) -> tuple[list[str], dict[str, list[str]]]:
    """The problems of one (route, principal) pair (empty when it held), and the tables after it; `before` is
    the tables before it. An allowed call that used up the caller's credential marks the caller spent."""
    store, url = api.store, resolve(row, caller, other_token)
    app = api.http._transport.app  # type: ignore[attr-defined]
    refusals: Refusals = app.state.refusals
    seq, counted_before = await audit_head(store), dict(refusals.totals)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ballast",
                                 headers=caller.headers) as client:
        r = await client.request(row.method, url, json=row.json, content=row.content)
    after, records = await table_digest(store), await audit_since(store, seq)
    counted = {reason: n - counted_before.get(reason, 0) for reason, n in refusals.totals.items()
               if n != counted_before.get(reason, 0)}
    problems = _problems(row, caller, url, r, before, after, records, counted)
    if allowed_for(row, caller) and r.status_code == row.status and row.spends is not None and row.spends(caller):
        caller.spent = True
    return problems, after


def allowed_for(row: Row, caller: Caller) -> bool:
    return caller.principal in row.allowed and not caller.spent


def _problems(row: Row, caller: Caller, url: str, r: httpx.Response, before: dict[str, list[str]],
              after: dict[str, list[str]], records: list[Any], counted: dict[str, int]) -> list[str]:
    where = f"{row.label()} as {caller.principal}" + (" (credential spent)" if caller.spent else "")
    problems: list[str] = []
    generic = f"{row.method} {url}"
    unauthenticated = caller.principal in UNAUTHENTICATED or caller.spent
    if counted != ({"unauthenticated": 1} if unauthenticated else {}):
        problems.append(f"{where}: the admission middleware counted refusals {counted}")
    if allowed_for(row, caller):
        if r.status_code != row.status:
            return [f"{where}: allowed, expected {row.status}, got {r.status_code} {r.text}"]
        if row.changes and after == before:
            problems.append(f"{where}: answered {r.status_code} but changed nothing")
        if not row.changes and after != before:
            problems.append(f"{where}: a read changed the store")
        if any(rec.action == generic for rec in records):
            problems.append(f"{where}: the middleware audited it as unaudited: {[rec.action for rec in records]}")
        if row.audit is None:
            if records:
                problems.append(f"{where}: expected no audit record, got {[(x.action, x.resource) for x in records]}")
            return problems
        action, resource, shape = row.audit
        actor = row.actor or caller.user
        own = [x for x in records if x.action == action and x.resource.startswith(resource) and x.actor == actor]
        if len(own) != 1:
            return problems + [f"{where}: expected its own audit record ({action}, {resource}…, {actor}), got "
                               f"{[(x.action, x.resource, x.actor) for x in records]}"]
        rec = own[0]
        if rec.result != "ok":
            problems.append(f"{where}: its record's result is {rec.result!r}")
        expected = {CREATED: (False, True), DELETED: (True, False), CHANGED: (True, True)}[shape]
        if (bool(rec.before), bool(rec.after)) != expected or (shape == CHANGED and rec.before == rec.after):
            problems.append(f"{where}: a record of what was {shape} carries before={rec.before!r} after={rec.after!r}")
        for x in records:  # every record the change wrote names what it changed
            if not (x.before or x.after):
                problems.append(f"{where}: record {x.action} {x.resource} carries no before/after digest")
        return problems
    expected_status = 401 if unauthenticated else 403
    if r.status_code != expected_status:
        return problems + [f"{where}: denied, expected {expected_status}, got {r.status_code} {r.text}"]
    if after != before:
        changed = sorted(t for t in before if before[t] != after[t])
        problems.append(f"{where}: refused, but changed tables {changed}")
    found = [(x.actor, x.action, x.result) for x in records]
    if unauthenticated:  # refused before any route ran: not audited one by one, only counted
        if found:
            problems.append(f"{where}: refused without a valid token, yet the audit log gained {found}")
    elif found != [(caller.user, generic, "refused: HTTP 403")]:
        problems.append(f"{where}: expected exactly the refusal's audit record, got {found}")
    return problems


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_each_mutating_route_allows_exactly_its_principals(matrix_api: tuple[Api, Prepared],
                                                                 principal: str) -> None:
    """Every row, called by `principal`: the allowed change and its own audit record, or the exact refusal:
    403 with nothing but the refusal's record changed, or 401 with nothing changed at all."""
    api, prepared = matrix_api
    caller = await caller_for(api, prepared, principal)
    problems: list[str] = []
    tables = await table_digest(api.store)
    for row in ROWS:
        found, tables = await check_row(api, row, caller, prepared.other_token_id, tables)
        problems += found
    assert not problems, "\n".join(problems)
