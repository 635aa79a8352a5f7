"""Spec: every number, string and list a request carries is bounded by what the stores hold, and a value past a
bound is the client's 422 naming the field, on SQLite and on PostgreSQL (whose integer columns are 32-bit).

The rows are the issue's: each of them once reached the store and came back as a 500.
"""

from __future__ import annotations

from typing import Any

import pytest

from ballast.controllers.scheduler import reconcile_once
from ballast.core.manifests import API_VERSION
from tests.conftest import Api, Fleet

HUGE = 2**70


async def _shop_with_a_node(api: Api) -> Any:
    """An app with one placed instance, and an agent's client for the node it runs on."""
    items = [{"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}},
             {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
              "spec": {"cells": {"cell-a": 1}, "template": {"command": ["python", "-m", "shop"]}}}]
    assert (await api.http.post("/v1/apply", json={"items": items})).status_code == 200
    agent = await Fleet(api).client("node", "n1")   # the node's own credential
    r = await agent.put("/v1/nodes/n1", json={"cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 4000,
                                              "memoryBytes": 2**33})
    assert r.status_code == 200, r.text
    await reconcile_once(api.store)
    [placed] = (await api.http.get("/v1/instances")).json()["items"]
    return agent, placed["metadata"]["name"]


def _refused_naming(r: Any, field: str, value: Any) -> None:
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert [p["path"] for p in problems] == [field], problems
    assert problems[0]["value"] == value, problems


async def test_a_viewer_plans_a_release_to_a_revision_no_column_holds(api: Api) -> None:
    """POST /v1/apps/shop/releases/plan {"toRevision": 2**70}, sent by a viewer: 422 naming toRevision."""
    await _shop_with_a_node(api)
    assert (await api.http.post("/v1/users", json={"name": "vic", "role": "viewer"})).status_code == 201
    viewer = api.as_((await api.http.post("/v1/tokens", json={"user": "vic"})).json()["token"])
    _refused_naming(await viewer.post("/v1/apps/shop/releases/plan", json={"toRevision": HUGE}), "toRevision", HUGE)
    _refused_naming(await viewer.post("/v1/apps/shop/releases/plan", json={"toRevision": 2**31}), "toRevision", 2**31)


async def test_release_status_of_an_id_no_column_holds(api: Api) -> None:
    """GET /v1/apps/shop/release?id=2**70: 422 naming id."""
    await _shop_with_a_node(api)
    r = await api.http.get("/v1/apps/shop/release", params={"id": str(HUGE)})
    _refused_naming(r, "id", str(HUGE))


async def test_release_start_to_a_revision_no_column_holds(api: Api) -> None:
    """POST /v1/apps/shop/releases {"toRevision": 2**70}: 422 naming toRevision, and no release is recorded."""
    await _shop_with_a_node(api)
    _refused_naming(await api.http.post("/v1/apps/shop/releases", json={"toRevision": HUGE}), "toRevision", HUGE)
    assert (await api.http.get("/v1/apps/shop/releases")).json()["items"] == []


async def test_status_report_of_a_revision_no_column_holds(api: Api) -> None:
    """A node's status report with "revision": 2**70: 422 naming the instance's field."""
    agent, placed = await _shop_with_a_node(api)
    report = {"instances": [{"id": placed, "phase": "Running", "ready": True, "restarts": 0, "revision": HUGE}]}
    _refused_naming(await agent.post("/v1/nodes/n1/status", json=report), "instances[0].revision", HUGE)


@pytest.mark.parametrize("store_kind", ["sqlite"])
@pytest.mark.parametrize("method, path, body, field", [
    ("POST", "/v1/tokens", {"ttlSeconds": True}, "ttlSeconds"),
    ("POST", "/v1/apps/shop/releases/plan", {"toRevision": True}, "toRevision"),
    ("POST", "/v1/apps/shop/release/pause", {"fast": 1}, "fast"),
    ("POST", "/v1/apply", {"items": [{"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "pay"},
                                      "spec": {"replicas": True, "template": {"command": ["x"]}}}]},
     "items[0].spec.replicas"),
])
async def test_booleans_are_not_numbers(api: Api, method: str, path: str, body: Any, field: str) -> None:
    """`true` is no 1 second and `1` no `true`: pydantic's lax coercion would take both."""
    r = await api.http.request(method, path, json=body)
    assert r.status_code == 422, r.text
    assert [p["path"] for p in r.json()["problems"]] == [field], r.text
