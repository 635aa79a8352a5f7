"""Property: whatever a client sends, the API answers below 500 — bad input is the client's error, never ours.

The properties run on SQLite only (they are about request handling); what only PostgreSQL refuses to store
(NUL characters, integers wider than a column) is pinned by the tables of hostile inputs, which run on both
stores. Bodies are encoded here with `json.dumps`, not by httpx, so NaN, Infinity and lone-surrogate
escapes reach the server as a hostile client would send them. BALLAST_FUZZ_EXAMPLES raises the example count
for a longer hunt.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ballast.controllers.scheduler import reconcile_once
from ballast.core.manifests import API_VERSION
from tests.conftest import Api, join_component

FUZZ = settings(max_examples=int(os.environ.get("BALLAST_FUZZ_EXAMPLES", "75")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------------------------------------

WORDS = ["apps", "cells", "nodes", "instances", "users", "tokens", "audit", "verify", "revisions", "bindings",
         "status", "assignments", "artifacts", "apply", "whoami", "releases", "release", "plan", "pause", "resume",
         "rollback", "shop", "cell-a", "n1", "admin", "agent-1", "viewer", "1", "0", "-1", "99999999999999999999999",
         "registry", "ack", "gateways", "edge", "endpoints"]
HOSTILE = ["", "\x00", "\ud800", "a\udfffb", "é", "😀", " ", "%", "/", "\n", "null", "NaN", "0" * 70, "a" * 300]

any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=10),  # every code point, surrogates included
    st.sampled_from(HOSTILE),
    st.sampled_from(WORDS),
)
numbers = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)


def mostly(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually the well-typed value, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, json_values)


names = mostly(st.sampled_from(["shop", "pay", "cell-a", "cell-b", "x"]) | any_text)
quantities = mostly(st.sampled_from(["100m", "0.5", "1", "128Mi", "1e3", "-1", "1.5m", "9" * 30 + "Ei", ""]) | numbers)
labels = mostly(st.dictionaries(any_text, any_text, max_size=3))
health_check = st.fixed_dictionaries({"path": mostly(st.just("/healthz") | any_text)}, optional={
    "periodSeconds": numbers, "timeoutSeconds": numbers, "failureThreshold": numbers, "initialDelaySeconds": numbers})
template = st.fixed_dictionaries({"command": mostly(st.lists(any_text, max_size=3))}, optional={
    "args": mostly(st.lists(any_text, max_size=3)),
    "env": mostly(st.dictionaries(st.sampled_from(["MODE", "PORT", "BALLAST_X", "1A"]) | any_text, any_text,
                                  max_size=3)),
    "workingDir": mostly(any_text),
    "port": mostly(st.integers(min_value=-10, max_value=70_000)),
    "healthCheck": mostly(health_check),
    "resources": mostly(st.fixed_dictionaries({}, optional={"cpu": quantities, "memory": quantities})),
    "gracePeriodSeconds": numbers,
    "artifact": mostly(st.just("sha256:" + "ab" * 32) | any_text),
})
strategy_spec = st.fixed_dictionaries({}, optional={
    "betaSize": numbers, "groups": numbers, "groupSizes": mostly(st.lists(numbers, max_size=4)),
    "pause": mostly(st.sampled_from(["manual", "auto", "none"]) | any_text), "pauseSeconds": numbers,
    "maxUnavailablePerCell": numbers, "upgrade": mostly(st.sampled_from(["inPlace", "replace", "ordered"])),
    "progressDeadlineSeconds": numbers})
app_spec = st.fixed_dictionaries({"template": mostly(template)}, optional={
    "cells": mostly(st.dictionaries(st.sampled_from(["cell-a", "cell-b", "cell-z"]) | any_text,
                                    st.integers(min_value=-2, max_value=12) | numbers, max_size=3)),
    "replicas": mostly(st.integers(min_value=-2, max_value=12)),
    "strategy": mostly(strategy_spec),
    "expose": mostly(st.fixed_dictionaries({"host": mostly(st.sampled_from(["shop.local", "a.b"]) | any_text)},
                                           optional={"path": mostly(st.sampled_from(["/", "/api"]) | any_text)})),
    "traffic": mostly(st.fixed_dictionaries({}, optional={
        "components": mostly(st.lists(st.sampled_from(["gateway", "mesh"]) | any_text, max_size=3)),
        "drain": mostly(st.booleans()), "drainTimeoutSeconds": numbers, "ackTimeoutSeconds": numbers})),
})
cell_spec = st.fixed_dictionaries({"zone": mostly(st.sampled_from(["zone-a", "zone-b"]) | any_text)},
                                  optional={"labels": labels})


def manifest(kind: str, spec: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "apiVersion": mostly(st.just(API_VERSION)),
        "kind": st.just(kind) | st.sampled_from(["Cell", "AppService", "Deployment"]),
        "metadata": mostly(st.fixed_dictionaries({"name": names}, optional={"labels": labels})),
        "spec": mostly(spec),
    })


# Well-formed manifests with random contents reach storage and the scheduler; the fuzzy ones above reach validation.
dns_names = st.from_regex(r"[a-z][a-z0-9-]{0,6}[a-z0-9]", fullmatch=True)
valid_template = st.fixed_dictionaries({"command": st.lists(any_text.filter(bool), min_size=1, max_size=3)}, optional={
    "args": st.lists(any_text, max_size=3),
    "env": st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), any_text, max_size=3),
    "port": st.integers(min_value=1024, max_value=65535),
    "healthCheck": st.fixed_dictionaries({"path": st.just("/") | st.text(max_size=8).map(lambda t: "/" + t)}),
    "resources": st.fixed_dictionaries({}, optional={
        "cpu": st.sampled_from(["100m", "250m", "1", "0.5", "64", 3, 0.25, "0"]),
        "memory": st.sampled_from(["64Mi", "1Gi", "512M", 1024, "1Ei", "0"])}),
    "gracePeriodSeconds": st.floats(min_value=0, max_value=3600),
})
valid_app = st.fixed_dictionaries({
    "apiVersion": st.just(API_VERSION), "kind": st.just("AppService"),
    "metadata": st.fixed_dictionaries({"name": st.sampled_from(["shop", "pay"]) | dns_names},
                                      optional={"labels": st.dictionaries(any_text, any_text, max_size=3)}),
    "spec": st.one_of(
        st.fixed_dictionaries({"template": valid_template, "cells": st.dictionaries(
            st.sampled_from(["cell-a", "cell-b"]), st.integers(min_value=0, max_value=6), max_size=2)}),
        st.fixed_dictionaries({"template": valid_template, "replicas": st.integers(min_value=0, max_value=8)}),
    ),
})
valid_cell = st.fixed_dictionaries({
    "apiVersion": st.just(API_VERSION), "kind": st.just("Cell"),
    "metadata": st.fixed_dictionaries({"name": st.sampled_from(["cell-a", "cell-b", "cell-c"]) | dns_names},
                                      optional={"labels": st.dictionaries(any_text, any_text, max_size=3)}),
    "spec": st.fixed_dictionaries({"zone": st.sampled_from(["zone-a", "zone-b"]) | dns_names}),
})
manifests = st.one_of(valid_app, valid_app, valid_cell, manifest("AppService", app_spec), manifest("Cell", cell_spec),
                      json_values)
apply_bodies = st.one_of(
    st.fixed_dictionaries({"items": st.lists(valid_app | valid_cell, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"items": st.lists(manifests, min_size=1, max_size=3)},
                          optional={"dryRun": mostly(st.booleans())}),
    json_values,
)
segments = st.lists(st.sampled_from(WORDS) | any_text, min_size=1, max_size=4)

# --- the world the requests land in ----------------------------------------------------------------------------------

SQLITE_ONLY = pytest.mark.parametrize("store_kind", ["sqlite"])


@dataclass
class World:
    api: Api
    agent: httpx.AsyncClient
    placed: str  # id of the instance placed on node n1


@pytest.fixture
async def world(api: Api) -> AsyncIterator[World]:
    """Two cells, an app, an agent with a registered node and a placed instance: something for requests to hit."""
    items = [{"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": c}, "spec": {"zone": f"zone-{c[-1]}"}}
             for c in ("cell-a", "cell-b")]
    items.append({"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
                  "spec": {"cells": {"cell-a": 1}, "template": {"command": ["python", "-m", "shop"]}}})
    assert (await api.http.post("/v1/apply", json={"items": items})).status_code == 200
    assert (await api.http.post("/v1/users", json={"name": "agent-1", "role": "viewer"})).status_code == 201
    agent = api.as_((await join_component(api, "node", "n1"))["token"])   # node n1's own credential
    r = await agent.put("/v1/nodes/n1", json={"cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 4000,
                                              "memoryBytes": 2**33})
    assert r.status_code == 200, r.text
    await reconcile_once(api.store)
    [placed] = (await api.http.get("/v1/instances")).json()["items"]
    yield World(api=api, agent=agent, placed=placed["metadata"]["name"])
    await agent.aclose()


def _quote(text: str) -> str:
    # A lone surrogate has no UTF-8 form; send the bytes a hostile client would ("surrogatepass").
    return quote(text, safe="", errors="surrogatepass")


async def send(client: httpx.AsyncClient, method: str, path: str, body: Any = None,
               params: dict[str, str] | None = None) -> httpx.Response:
    content = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if content is not None else {}
    if params:
        path += "?" + urlencode(params, quote_via=lambda text, *_: _quote(text))
    return await client.request(method, path, content=content, headers=headers)


def assert_not_server_error(r: httpx.Response) -> None:
    event(f"HTTP {r.status_code}")
    assert r.status_code < 500, f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}"


# --- properties ------------------------------------------------------------------------------------------------------


@SQLITE_ONLY
@FUZZ
@given(body=apply_bodies)
async def test_apply_never_fails_with_5xx(world: World, body: Any) -> None:
    """Any JSON posted to /v1/apply is applied or refused with 4xx, and the scheduler copes with what was accepted."""
    assert_not_server_error(await send(world.api.http, "POST", "/v1/apply", body))
    await reconcile_once(world.api.store)


@SQLITE_ONLY
@FUZZ
@given(method=st.sampled_from(["GET", "DELETE", "PUT", "POST", "PATCH"]), parts=segments,
       body=st.none() | json_values)
async def test_any_path_under_v1_never_fails_with_5xx(world: World, method: str, parts: list[str], body: Any) -> None:
    """Random paths and verbs under /v1 answer 2xx/4xx, never 5xx."""
    path = "/v1/" + "/".join(_quote(p) for p in parts)
    assert_not_server_error(await send(world.api.http, method, path, body))


query_values = st.one_of(any_text, numbers.map(str), st.sampled_from(["0", "0.01", "-1", "nan", "inf", "1e309"]))


@SQLITE_ONLY
@FUZZ
@given(params=st.fixed_dictionaries({}, optional={
    "app": query_values, "node": query_values, "x": query_values, "cell": query_values, "phase": query_values,
    "ready": query_values, "revision": query_values, "limit": query_values, "continue": query_values,
    "watch": st.sampled_from(["true", "false"]) | query_values, "resourceVersion": query_values,
    "timeout": st.sampled_from(["0", "0.01", "-1", "nan", "x"])}))
async def test_instance_queries_never_fail_with_5xx(world: World, params: dict[str, str]) -> None:
    """Any query parameters on /v1/instances (filters, paging, watch) answer 2xx/4xx."""
    params.setdefault("timeout", "0")   # a watch answers at once
    assert_not_server_error(await send(world.api.http, "GET", "/v1/instances", params=params))


@SQLITE_ONLY
@FUZZ
@given(node=st.sampled_from(["n1", "n2"]) | any_text,
       params=st.fixed_dictionaries({}, optional={
           "known": query_values,
           "timeout": st.floats(min_value=0, max_value=0.05).map(str) | st.sampled_from(["-1", "nan", "x", "61", ""]),
       }))
async def test_assignment_polls_never_fail_with_5xx(world: World, node: str, params: dict[str, str]) -> None:
    """Any node name and query on the assignments long-poll answer 2xx/4xx (timeouts kept small)."""
    path = f"/v1/nodes/{_quote(node)}/assignments"
    assert_not_server_error(await send(world.agent, "GET", path, params=params))


user_bodies = mostly(st.fixed_dictionaries({"name": names, "role": mostly(st.sampled_from(
    ["admin", "operator", "viewer", "node"]) | any_text)}, optional={"apps": mostly(st.lists(names, max_size=3))}))
token_bodies = mostly(st.fixed_dictionaries({}, optional={
    "user": mostly(st.sampled_from(["admin", "agent-1", "ghost"]) | any_text), "name": any_text,
    "ttlSeconds": numbers}))
node_bodies = mostly(st.fixed_dictionaries(
    {"cell": mostly(st.sampled_from(["cell-a", "cell-b", "cell-z"])),
     "ip": mostly(st.sampled_from(["10.0.0.2", "::1", "999.1.1.1", "localhost"]) | any_text),
     "cpuMillis": mostly(st.integers(min_value=-1, max_value=10**7 + 1)),
     "memoryBytes": mostly(st.integers(min_value=-1, max_value=2**50 + 1))},
    optional={"labels": labels, "agentVersion": any_text}))
PLACED = "<the placed instance>"
status_bodies = mostly(st.fixed_dictionaries({"instances": mostly(st.lists(mostly(st.fixed_dictionaries(
    {"id": mostly(st.sampled_from([PLACED, PLACED, "shop-000000"]) | any_text),
     "phase": mostly(st.sampled_from(["Running", "Stopped", "Failed"]) | any_text),
     "ready": mostly(st.booleans()), "restarts": mostly(st.integers(min_value=-1, max_value=2**70))},
    optional={"pid": mostly(st.integers(min_value=-1, max_value=2**70)), "port": mostly(st.integers(0, 70_000)),
              "message": any_text, "revision": mostly(st.integers(min_value=-1, max_value=2**70))})), max_size=3))}))


@SQLITE_ONLY
@FUZZ
@given(target=st.sampled_from(["users", "bindings", "tokens", "node", "status"]),
       user_body=user_bodies, token_body=token_bodies, node_body=node_bodies, status_body=status_bodies,
       node=st.sampled_from(["n1", "n1", "n2"]) | any_text)
async def test_access_and_node_bodies_never_fail_with_5xx(world: World, target: str, user_body: Any, token_body: Any,
                                                         node_body: Any, status_body: Any, node: str) -> None:
    """Random bodies for users, bindings, tokens, node registration and status reports answer 2xx/4xx."""
    quoted = _quote(node)
    method, path, client, body = {
        "users": ("POST", "/v1/users", world.api.http, user_body),
        "bindings": ("POST", "/v1/users/agent-1/bindings", world.api.http, user_body),
        "tokens": ("POST", "/v1/tokens", world.api.http, token_body),
        "node": ("PUT", f"/v1/nodes/{quoted}", world.agent, node_body),
        "status": ("POST", f"/v1/nodes/{quoted}/status", world.agent, status_body),
    }[target]
    if target == "status" and isinstance(body, dict) and isinstance(body.get("instances"), list):
        body = {**body, "instances": [{**i, "id": world.placed} if isinstance(i, dict) and i.get("id") == PLACED else i
                                      for i in body["instances"]]}
    assert_not_server_error(await send(client, method, path, body))


ack_bodies = mostly(st.fixed_dictionaries({"generation": mostly(st.integers(min_value=-1, max_value=2**70))},
                                          optional={"appliedHash": any_text, "error": any_text}))
gateway_bodies = mostly(st.fixed_dictionaries({"address": mostly(st.sampled_from(["127.0.0.1:8080", "[::1]:80"])
                                                                 | any_text)}))


@SQLITE_ONLY
@FUZZ
@given(target=st.sampled_from(["ack-node", "ack-gateway", "gateway", "snapshot"]), ack=ack_bodies,
       gateway=gateway_bodies, name=st.sampled_from(["n1", "edge", "nope"]) | any_text,
       params=st.dictionaries(st.sampled_from(["known", "timeout"]), any_text | numbers.map(str), max_size=2))
async def test_registry_requests_never_fail_with_5xx(world: World, target: str, ack: Any, gateway: Any, name: str,
                                                     params: dict[str, str]) -> None:
    """Acknowledgements, gateway registrations and registry snapshots answer 2xx/4xx whatever they carry."""
    quoted = _quote(name)
    method, path, body, query = {
        "ack-node": ("POST", f"/v1/nodes/{quoted}/ack", ack, None),
        "ack-gateway": ("POST", f"/v1/gateways/{quoted}/ack", ack, None),
        "gateway": ("PUT", f"/v1/gateways/{quoted}", gateway, None),
        "snapshot": ("GET", "/v1/registry", None, {k: v for k, v in params.items() if k != "timeout"} or None),
    }[target]
    assert_not_server_error(await send(world.agent, method, path, body, query))


# --- hostile inputs, on both stores ----------------------------------------------------------------------------------

def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


NESTED = _nested(600)  # deeper than any echo of it could recurse, shallower than the JSON parser's limit


def _cell(**metadata: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-x", **metadata},
            "spec": {"zone": "zone-x"}}


def _app(**template: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "pay"},
            "spec": {"replicas": 1, "template": {"command": ["python", "-m", "pay"], **template}}}


def _report(**fields: Any) -> dict[str, Any]:
    return {"instances": [{"id": PLACED, "phase": "Running", "ready": True, "restarts": 0, **fields}]}


_NODE = {"cell": "cell-a", "ip": "10.0.0.2", "cpuMillis": 1000, "memoryBytes": 2**30}

# (what, method, path, body, query, acceptable statuses). A value no store can hold is the client's error: 422.
Row = tuple[str, str, str, Any, "dict[str, str] | None", "set[int]"]
HOSTILE_REQUESTS: list[Row] = [
    ("cell label with a lone surrogate", "POST", "/v1/apply", {"items": [_cell(labels={"a": "\udc00"})]}, None, {422}),
    ("app env value with NUL", "POST", "/v1/apply", {"items": [_app(env={"A": "\x00"})]}, None, {422}),
    ("app command with a lone surrogate", "POST", "/v1/apply", {"items": [_app(command=["\ud800"])]}, None, {422}),
    ("cpu NaN", "POST", "/v1/apply", {"items": [_app(resources={"cpu": float("nan")})]}, None, {422}),
    ("grace period Infinity", "POST", "/v1/apply", {"items": [_app(gracePeriodSeconds=float("inf"))]}, None, {422}),
    ("deeply nested document", "POST", "/v1/apply", {"items": [NESTED]}, None, {422}),
    ("deeply nested user name", "POST", "/v1/users", {"name": NESTED, "role": "viewer"}, None, {422}),
    ("token TTL NaN", "POST", "/v1/tokens", {"ttlSeconds": float("nan")}, None, {422}),
    ("token name with NUL", "POST", "/v1/tokens", {"name": "ci\x00"}, None, {422}),
    ("audit after beyond 64 bits", "GET", "/v1/audit", None, {"after": str(2**70)}, {422}),
    ("status restarts beyond 32 bits", "POST", "/v1/nodes/n1/status", _report(restarts=2**40), None, {422}),
    ("status pid beyond 32 bits", "POST", "/v1/nodes/n1/status", _report(pid=2**70), None, {422}),
    ("status message with NUL", "POST", "/v1/nodes/n1/status", _report(message="oops\x00"), None, {422}),
    ("status message with a lone surrogate", "POST", "/v1/nodes/n1/status", _report(message="\ud800"), None,
     {422}),
    ("node labels with a lone surrogate", "PUT", "/v1/nodes/n2", {**_NODE, "labels": {"a": "\ud800"}}, None,
     {422}),
    ("node agent version with NUL", "PUT", "/v1/nodes/n3", {**_NODE, "agentVersion": "1.0\x00"}, None, {422}),
    ("ack generation beyond 64 bits", "POST", "/v1/nodes/n1/ack", {"generation": 2**70}, None, {422}),
    ("ack generation the registry has not reached", "POST", "/v1/nodes/n1/ack", {"generation": 2**40}, None, {422}),
    ("ack error with NUL", "POST", "/v1/nodes/n1/ack", {"generation": 0, "error": "x\x00"}, None, {422}),
    ("gateway address with a lone surrogate", "PUT", "/v1/gateways/edge", {"address": "\ud800:80"}, None, {422}),
    ("gateway address without a port", "PUT", "/v1/gateways/edge", {"address": "127.0.0.1"}, None, {422}),
    ("route with a space", "POST", "/v1/apply", {"items": [{**_app(), "spec": {
        **_app()["spec"], "expose": {"host": "a.local", "path": "/a b"}}}]}, None, {422}),
]


# Names no store can hold cannot name anything: looking them up is a 404 (or an empty list), not a database error.
IMPOSSIBLE_NAMES: list[Row] = [
    ("app named NUL", "GET", "/v1/apps/%00", None, None, {400}),
    ("cell named NUL, deleted", "DELETE", "/v1/cells/%00", None, None, {400}),
    ("instance named NUL", "GET", "/v1/instances/%00", None, None, {400}),
    ("user named NUL, deleted", "DELETE", "/v1/users/%00", None, None, {400}),
    ("instances of app NUL", "GET", "/v1/instances", None, {"app": "\x00"}, {400}),
]


async def _wrong_answers(world: World, table: list[Row]) -> list[str]:
    wrong = []
    for what, method, path, body, query, acceptable in table:
        if isinstance(body, dict) and body.get("instances"):
            body = {"instances": [{**i, "id": world.placed} for i in body["instances"]]}
        client = world.agent if "/nodes/" in path or "/gateways/" in path else world.api.http
        r = await send(client, method, path, body, query)
        if r.status_code not in acceptable:
            wrong.append(f"{what}: {method} {path} -> {r.status_code} (expected {sorted(acceptable)}) {r.text[:120]}")
    return wrong


async def test_hostile_values_are_client_errors(world: World) -> None:
    """Values no store can hold (NUL, lone surrogates, NaN, out-of-range integers, deep nesting) are refused
    with 4xx on both stores, and a refused value leaves every listing readable."""
    wrong = await _wrong_answers(world, HOSTILE_REQUESTS)
    for path in ["/v1/cells", "/v1/apps", "/v1/nodes", "/v1/instances", "/v1/tokens", "/v1/users", "/v1/audit"]:
        r = await world.api.http.get(path)
        if r.status_code != 200:
            wrong.append(f"listing after hostile inputs: GET {path} -> {r.status_code}")
    assert not wrong, "\n".join(wrong)


async def test_impossible_names_are_not_found(world: World) -> None:
    """A path or query holding a NUL character is refused with 400 on both stores, and the refused
    DELETEs are still on the audit log (with the NUL escaped)."""
    wrong = await _wrong_answers(world, IMPOSSIBLE_NAMES)
    assert not wrong, "\n".join(wrong)
    audit = (await world.api.http.get("/v1/audit", params={"limit": 20})).json()["items"]
    refused = [a for a in audit if a["result"] == "refused: HTTP 400" and a["action"].startswith("DELETE")]
    assert len(refused) == 2, audit


# --- releases, orders, change windows, audit, metrics ------------------------------------------------------------

edge_revisions = st.sampled_from([0, 1, 2, 3, 2**31 - 1, 2**31, 2**63, 2**70])
revisions = st.one_of(edge_revisions, edge_revisions, st.integers(min_value=-1, max_value=2**70))
window_spec = st.fixed_dictionaries({}, optional={
    "timeZone": mostly(st.sampled_from(["UTC", "Europe/Zurich", "Mars/Base"]) | any_text),
    "allowed": mostly(st.lists(mostly(st.fixed_dictionaries({
        "days": mostly(st.lists(st.sampled_from(["mon", "tue", "sun", "xyz"]) | any_text, max_size=3)),
        "start": mostly(st.sampled_from(["09:00", "24:00", "9"]) | any_text),
        "end": mostly(st.sampled_from(["16:00", "00:00"]) | any_text)})), max_size=2)),
    "freezes": mostly(st.lists(mostly(st.fixed_dictionaries({
        "from": mostly(st.sampled_from(["2026-12-24T00:00", "2026-12-24", "x"]) | any_text),
        "to": mostly(st.sampled_from(["2026-12-27T00:00", "2026-12-23T00:00"]) | any_text)})), max_size=2)),
    "apps": mostly(st.lists(names, max_size=3))})
order_spec = st.fixed_dictionaries({"title": mostly(any_text), "releases": mostly(st.lists(mostly(st.fixed_dictionaries(
    {"app": names}, optional={"toRevision": mostly(revisions),
                              "after": mostly(st.lists(names, max_size=2)), "strategy": mostly(strategy_spec)})),
    max_size=3))}, optional={"approvals": numbers, "maxParallel": numbers, "ticket": any_text, "reason": any_text})
target_revision = st.fixed_dictionaries({"toRevision": revisions})
release_bodies = st.one_of(target_revision, target_revision, json_values, mostly(st.fixed_dictionaries(
    {}, optional={"toRevision": mostly(revisions), "strategy": mostly(strategy_spec)})))
action_bodies = mostly(st.fixed_dictionaries({}, optional={
    "fast": mostly(st.booleans()), "reverify": mostly(st.booleans()),
    "expectPhase": mostly(st.sampled_from(["Running", "Paused", "PendingApproval"]) | any_text)}))
decision_bodies = mostly(st.fixed_dictionaries({}, optional={"comment": any_text, "emergency": mostly(st.booleans())}))
record_bodies = mostly(st.fixed_dictionaries({"records": mostly(st.lists(mostly(st.fixed_dictionaries({
    "seq": mostly(st.integers(min_value=-1, max_value=2**70)), "hash": any_text})), max_size=3))}))


@pytest.fixture
async def order_world(world: World) -> World:
    """The world with revision 2 of shop, a change window and a release order over shop."""
    items = [{"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
              "spec": {"cells": {"cell-a": 1}, "template": {"command": ["python", "-m", "shop", "--v2"]}}},
             {"apiVersion": API_VERSION, "kind": "ChangeWindow", "metadata": {"name": "always"}, "spec": {}},
             {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "chg-1"},
              "spec": {"title": "shop v2", "releases": [{"app": "shop"}]}}]
    r = await world.api.http.post("/v1/apply", json={"items": items})
    assert r.status_code == 200, r.text
    return world


apps = st.sampled_from(["shop", "shop", "nope"]) | any_text
order_names = st.sampled_from(["chg-1", "chg-1", "always", "x"]) | any_text


def query(*keys: str) -> st.SearchStrategy[dict[str, str]]:
    edges = st.sampled_from(["Running", "markdown", "json", "false", "cell", "gateway", "2026-12-01", str(2**31),
                             str(2**70)])
    return st.dictionaries(st.sampled_from(keys), query_values | edges, max_size=3)


@SQLITE_ONLY
@FUZZ
@given(start=st.booleans(), app=st.one_of(st.just("shop"), st.just("shop"), apps), body=release_bodies)
async def test_release_plans_and_starts_never_fail_with_5xx(order_world: World, start: bool, app: str,
                                                            body: Any) -> None:
    """A release planned or started with any target revision and strategy answers 2xx/4xx."""
    path = f"/v1/apps/{_quote(app)}/releases" + ("" if start else "/plan")
    assert_not_server_error(await send(order_world.api.http, "POST", path, body))


@SQLITE_ONLY
@FUZZ
@given(target=st.sampled_from(["status", "status", "history", "pause", "resume", "rollback"]),
       app=st.one_of(st.just("shop"), st.just("shop"), apps), action=action_bodies,
       params=st.one_of(st.fixed_dictionaries({"id": revisions.map(str)}), query("id")))
async def test_release_reads_and_actions_never_fail_with_5xx(order_world: World, target: str, app: str,
                                                             action: Any, params: dict[str, str]) -> None:
    """Release status (by any id), history, pause / resume / rollback answer 2xx/4xx whatever they carry."""
    a = _quote(app)
    if target != "status":
        await send(order_world.api.http, "POST", f"/v1/apps/{a}/releases", {"toRevision": 2})  # something to act on
    method, path, body = {
        "status": ("GET", f"/v1/apps/{a}/release", None),
        "history": ("GET", f"/v1/apps/{a}/releases", None),
        "pause": ("POST", f"/v1/apps/{a}/release/pause", action),
        "resume": ("POST", f"/v1/apps/{a}/release/resume", action),
        "rollback": ("POST", f"/v1/apps/{a}/release/rollback", action),
    }[target]
    assert_not_server_error(await send(order_world.api.http, method, path, body, params or None))


@SQLITE_ONLY
@FUZZ
@given(target=st.sampled_from(["orders", "order", "report", "approve", "reject", "start", "pause", "resume",
                               "rollback", "apply-order", "apply-window", "windows", "delete-window"]),
       order=order_names, decision=decision_bodies, action=action_bodies,
       window=manifest("ChangeWindow", window_spec), order_doc=manifest("ReleaseOrder", order_spec),
       params=query("state", "app", "author", "since", "until", "format"))
async def test_order_and_window_requests_never_fail_with_5xx(order_world: World, target: str, order: str,
                                                             decision: Any, action: Any, window: Any, order_doc: Any,
                                                             params: dict[str, str]) -> None:
    """Release orders (listed with filters, status, report, approve / reject, start, pause / resume / rollback) and
    change windows (applied, listed, deleted) answer 2xx/4xx whatever they carry."""
    o = _quote(order)
    method, path, body = {
        "orders": ("GET", "/v1/orders", None),
        "order": ("GET", f"/v1/orders/{o}", None),
        "report": ("GET", f"/v1/orders/{o}/report", None),
        "approve": ("POST", f"/v1/orders/{o}/approve", decision),
        "reject": ("POST", f"/v1/orders/{o}/reject", decision),
        "start": ("POST", f"/v1/orders/{o}/start", decision),
        "pause": ("POST", f"/v1/orders/{o}/pause", action),
        "resume": ("POST", f"/v1/orders/{o}/resume", action),
        "rollback": ("POST", f"/v1/orders/{o}/rollback", action),
        "apply-order": ("POST", "/v1/apply", {"items": [order_doc]}),
        "apply-window": ("POST", "/v1/apply", {"items": [window]}),
        "windows": ("GET", "/v1/changewindows", None),
        "delete-window": ("DELETE", f"/v1/changewindows/{o}", None),
    }[target]
    assert_not_server_error(await send(order_world.api.http, method, path, body, params or None))


@SQLITE_ONLY
@FUZZ
@given(target=st.sampled_from(["audit", "audit-verify", "verify-records", "metrics", "app-metrics"]), app=apps,
       records=record_bodies, params=query("limit", "after", "traffic", "by", "window", "source"))
async def test_audit_and_metrics_requests_never_fail_with_5xx(order_world: World, target: str, app: str,
                                                              records: Any, params: dict[str, str]) -> None:
    """The audit log (listed from any point, verified, a report's records checked) and metrics (Prometheus text,
    an app's traffic) answer 2xx/4xx whatever they carry."""
    method, path, body = {
        "audit": ("GET", "/v1/audit", None),
        "audit-verify": ("GET", "/v1/audit/verify", None),
        "verify-records": ("POST", "/v1/audit/verify", records),
        "metrics": ("GET", "/metrics", None),
        "app-metrics": ("GET", f"/v1/apps/{_quote(app)}/metrics", None),
    }[target]
    assert_not_server_error(await send(order_world.api.http, method, path, body, params or None))
