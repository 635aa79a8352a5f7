"""Spec of artifacts and of calls on users' behalf through the API, on both stores: what a push must be, who
may fetch what, what apply and registration refuse, and what a platform setting allows."""

from __future__ import annotations

import hashlib
import tarfile
from typing import Any, AsyncIterator

import httpx

from ballast.api.app import create_app
from ballast.controllers import scheduler
from ballast.core.archive import ArchiveLimits
from ballast.core.manifests import API_VERSION
from ballast.core.outbound import OutboundPolicy
from tests.archives import Entry, app_package, targz
from tests.conftest import Api, join_component
from tests.unit.test_api_access import client_for

CELL = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}}


def app(name: str, **template: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": name},
            "spec": {"cells": {"cell-a": 1}, "template": {"command": ["python3", "app.py"], **template}}}


def digest_of(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


async def platform(api: Api, token: str | None = None, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same store under other server settings (limits, outbound ranges): the admin's, or the
    holder of `token`'s."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(api.store, **settings)),
                                 base_url="http://ballast",
                                 headers={"Authorization": f"Bearer {token or api.admin_token}"}) as http:
        yield http


async def test_a_push_that_is_no_safe_archive_is_refused_naming_the_member_and_stores_nothing(api: Api) -> None:
    bad = targz(Entry("app", type=tarfile.DIRTYPE), Entry("app/../../etc/cron.d/evil", b"* * * * * root sh"))
    r = await api.http.post("/v1/artifacts", content=bad)
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "body" and "app/../../etc/cron.d/evil" in problem["value"]
    assert "no '..'" in problem["expected"]
    assert (await api.http.post("/v1/artifacts", content=b"not an archive")).status_code == 422
    assert (await api.http.get("/v1/artifacts")).json()["items"] == []
    audit = (await api.http.get("/v1/audit", params={"limit": 2})).json()["items"]
    assert [(a["action"], a["result"]) for a in audit] == [("POST /v1/artifacts", "refused: HTTP 422")] * 2


async def test_the_servers_artifact_limits_are_its_settings(api: Api) -> None:
    many = targz(*(Entry(f"f{i}", b"x" * 100) for i in range(5)))
    async for http in platform(api, artifact_limits=ArchiveLimits(max_files=4)):
        r = await http.post("/v1/artifacts", content=many)
        assert r.status_code == 422 and "at most 4 files" in r.json()["problems"][0]["expected"]
    async for http in platform(api, artifact_limits=ArchiveLimits(max_unpacked_bytes=499)):
        r = await http.post("/v1/artifacts", content=many)
        assert r.status_code == 422 and "at most 499 bytes unpacked" in r.json()["problems"][0]["expected"]
    async for http in platform(api, artifact_limits=ArchiveLimits(max_bytes=len(many) - 1)):
        assert (await http.post("/v1/artifacts", content=many)).status_code == 413
    assert (await api.http.post("/v1/artifacts", content=many)).status_code == 201


async def test_a_scoped_operator_may_push_and_a_viewer_may_not(api: Api) -> None:
    operator = await client_for(api, "olga", "operator", ["shop"])
    viewer = await client_for(api, "vic", "viewer")
    r = await operator.post("/v1/artifacts", content=app_package())
    assert r.status_code == 201, r.text
    assert (await viewer.post("/v1/artifacts", content=app_package(b"other"))).status_code == 403


async def test_an_artifact_is_fetched_by_readers_of_an_app_that_runs_it(api: Api) -> None:
    shop_pkg, loose_pkg = app_package(b"shop"), app_package(b"loose")
    for blob in (shop_pkg, loose_pkg):
        assert (await api.http.post("/v1/artifacts", content=blob)).status_code == 201
    shop, loose = digest_of(shop_pkg), digest_of(loose_pkg)
    r = await api.http.post("/v1/apply", json={"items": [CELL, app("shop", artifact=shop)]})
    assert r.status_code == 200, r.text
    shop_reader = await client_for(api, "sam", "viewer", ["shop"])
    pay_operator = await client_for(api, "pat", "operator", ["pay"])
    node = api.as_((await join_component(api, "node", "n1"))["token"])
    r = await node.put("/v1/nodes/n1", json={"cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 1000,
                                             "memoryBytes": 2**30})
    assert r.status_code == 200, r.text
    assert await scheduler.reconcile_once(api.store) == 1   # shop's instance, granted to n1
    expected = {  # (who, digest): status; to a person a refusal looks like absence, a node is told
        (api.http, shop): 200, (api.http, loose): 200,
        (shop_reader, shop): 200, (shop_reader, loose): 404,
        (pay_operator, shop): 404, (pay_operator, loose): 404,
        (node, shop): 200, (node, loose): 403,
    }
    for (client, digest), status in expected.items():
        r = await client.get(f"/v1/artifacts/{digest}")
        assert r.status_code == status, (digest, r.text)
        if status == 200:
            assert digest_of(r.content) == digest


async def test_apply_refuses_an_unknown_artifact_and_a_working_dir_outside_it(api: Api) -> None:
    pushed = app_package()
    assert (await api.http.post("/v1/artifacts", content=pushed)).status_code == 201
    unknown = "sha256:" + "ab" * 32
    r = await api.http.post("/v1/apply", json={"items": [CELL, app("shop", artifact=unknown)]})
    assert r.status_code == 422, r.text
    assert [(p["path"], p["value"]) for p in r.json()["problems"]] == [("items[1].spec.template.artifact", unknown)]
    for bad in ("../../etc", "/etc", "app/../../x"):
        r = await api.http.post("/v1/apply", json={"items": [CELL, app("shop", artifact=digest_of(pushed),
                                                                        workingDir=bad)]})
        assert r.status_code == 422, r.text
        [problem] = r.json()["problems"]
        assert problem["path"] == "items[1].spec.template.workingDir" and problem["value"] == bad
    r = await api.http.post("/v1/apply", json={"items": [CELL, app("shop", workingDir="app")]})
    assert r.status_code == 422 and "give template.artifact" in r.text
    assert (await api.http.get("/v1/apps")).json()["items"] == []
    r = await api.http.post("/v1/apply", json={"items": [CELL, app("shop", artifact=digest_of(pushed),
                                                                    workingDir="app")]})
    assert r.status_code == 200, r.text


def verified(name: str, webhook: str, prometheus: str) -> dict[str, Any]:
    doc = app(name)
    doc["spec"]["strategy"] = {"verify": {"webhooks": [{"url": webhook}], "prometheus": {
        "url": prometheus, "queries": [{"name": "errors", "query": "up", "max": 1}]}}}
    return doc


async def test_verification_urls_aiming_inside_are_refused_unless_the_platform_allows_them(api: Api) -> None:
    doc = verified("shop", "http://127.0.0.1:9000/smoke", "http://169.254.169.254/")
    r = await api.http.post("/v1/apply", json={"items": [CELL, doc]})
    assert r.status_code == 422, r.text
    problems = {p["path"]: p for p in r.json()["problems"]}
    assert set(problems) == {"items[1].spec.strategy.verify.webhooks[0].url",
                             "items[1].spec.strategy.verify.prometheus.url"}
    assert "loopback" in problems["items[1].spec.strategy.verify.webhooks[0].url"]["expected"]
    assert "--allow-outbound" in problems["items[1].spec.strategy.verify.prometheus.url"]["expected"]

    loopback = OutboundPolicy.parse(["127.0.0.0/8"], own_ports=frozenset({7700}))
    async for http in platform(api, outbound=loopback):
        r = await http.post("/v1/apply", json={"items": [CELL, verified("shop", "http://127.0.0.1:9000/smoke",
                                                                         "http://127.0.0.1:9090")]})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/apps/shop/releases/plan", json={"strategy": {"verify": {
            "webhooks": [{"url": "http://127.0.0.1:7700/v1/tokens"}]}}})
        assert r.status_code == 422 and r.json()["problems"][0]["path"] == "strategy.verify.webhooks[0].url"
        assert "own API" in r.json()["problems"][0]["expected"]
    r = await api.http.post("/v1/apps/shop/releases", json={"strategy": {"verify": {
        "webhooks": [{"url": "http://10.0.0.8/hook"}]}}})
    assert r.status_code == 422 and "private" in r.json()["problems"][0]["expected"]


async def test_a_node_registers_telemetry_on_its_own_ip_only(api: Api) -> None:
    assert (await api.http.post("/v1/apply", json={"items": [CELL]})).status_code == 200
    credential = (await join_component(api, "node", "n1"))["token"]
    agent = api.as_(credential)
    node = {"cell": "cell-a", "ip": "127.0.161.5", "cpuMillis": 1000, "memoryBytes": 2**30}
    r = await agent.put("/v1/nodes/n1", json={**node, "metricsAddress": "127.0.161.6:9464"})
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["path"] == "metricsAddress"
    assert (await api.http.get("/v1/nodes")).json()["items"] == []
    async for http in platform(api, credential, outbound=OutboundPolicy(own_ports=frozenset({7700}))):
        r = await http.put("/v1/nodes/n1", json={**node, "ip": "127.0.0.1", "metricsAddress": "127.0.0.1:7700"})
        assert r.status_code == 422 and "own API" in r.json()["problems"][0]["expected"]
    r = await agent.put("/v1/nodes/n1", json={**node, "metricsAddress": "127.0.161.5:9464"})
    assert r.status_code == 200, r.text


async def test_a_gateway_registers_telemetry_on_its_own_ip_only(api: Api) -> None:
    credential = (await join_component(api, "gateway", "edge"))["token"]
    agent = api.as_(credential)
    r = await agent.put("/v1/gateways/edge", json={"address": "127.0.161.7:8080", "metricsAddress": "127.0.161.8:9465"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "metricsAddress", r.text
    async for http in platform(api, credential, outbound=OutboundPolicy(own_ports=frozenset({7700}))):
        r = await http.put("/v1/gateways/edge", json={"address": "0.0.0.0:8080", "metricsAddress": "127.0.0.1:7700"})
        assert r.status_code == 422 and "own API" in r.json()["problems"][0]["expected"], r.text
    for address, metrics in (("127.0.161.7:8080", "127.0.161.7:9465"), ("0.0.0.0:8080", "127.0.161.8:9465")):
        r = await agent.put("/v1/gateways/edge", json={"address": address, "metricsAddress": metrics})
        assert r.status_code == 200, r.text


async def test_an_orders_verification_override_is_held_to_the_same_policy(api: Api) -> None:
    assert (await api.http.post("/v1/apply", json={"items": [CELL, app("shop")]})).status_code == 200
    order = {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "chg"},
             "spec": {"title": "change", "ticket": "CHG-1", "releases": [
                 {"app": "shop", "strategy": {"verify": {"webhooks": [{"url": "http://[::1]:8000/hook"}]}}}]}}
    r = await api.http.post("/v1/apply", json={"items": [order]})
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "items[0].spec.releases[0].strategy.verify.webhooks[0].url"
    assert "loopback" in problem["expected"]
    assert (await api.http.get("/v1/orders")).json()["items"] == []
