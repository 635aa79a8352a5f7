"""Isolation groups over the API, on both stores: bad groups refused with the field path and nothing stored,
placement of a group's instances beside the app's own, what the registry and the sidecar tables make of them
(no default pool holds them), releases and evacuation that keep each instance in its group, rules that name a
group, authorization by the app, delete."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ballast.controllers import releases as release_engine
from ballast.controllers import scheduler
from ballast.core.manifests import API_VERSION
from ballast.dataplane.tables import gateway_rule_tables, sidecar_tables
from ballast.wire.registry import Route, Snapshot
from tests.conftest import Api
from tests.unit.test_api_releases import agents_run_desired, audit, ok, shop_at_revision_1_with_revision_2_recorded
from tests.unit.test_role_matrix import new_user


def group(name: str = "shop-vostro", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"app": "shop", "code": "vostro", "cells": {"cell-a": 1, "cell-b": 1}}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "IsolationGroup", "metadata": {"name": name},
            "spec": {k: v for k, v in body.items() if v is not None}}


BAD = [
    (group(app="ghost"), "items[0].spec.app", "an existing AppService"),
    (group(code="Vostro_1"), "items[0].spec.code", "pattern"),
    (group(code="-x"), "items[0].spec.code", "pattern"),
    (group(cells={"cell-z": 1}), "items[0].spec.cells.cell-z", "an existing cell"),
    (group(cells={"cell-a": 500}), "items[0].spec.cells.cell-a", "a size the cell's nodes can hold"),
    (group(cells=None, replicas=5000), "items[0].spec.replicas", "a size the cell's nodes can hold"),
    (group(replicas=2), "items[0].spec", "either cells"),
    (group(convergence="maybe"), "items[0].spec.convergence", "'prefer' or 'strict'"),
    (group(stress="yes"), "items[0].spec.stress", "boolean"),
]


@pytest.mark.parametrize(("doc", "path", "expected"), BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
async def test_a_bad_group_is_refused_with_its_field_path_and_nothing_is_stored(api: Api, doc: dict[str, Any],
                                                                               path: str, expected: str) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    before = await ok(api.http.get("/v1/registry"))
    r = await api.http.post("/v1/apply", json={"items": [doc]})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert any(p["path"] == path and expected in p["expected"] for p in problems), problems
    assert (await ok(api.http.get("/v1/isolationgroups")))["items"] == []
    assert (await ok(api.http.get("/v1/registry")))["generation"] == before["generation"]
    assert await scheduler.reconcile_once(api.store) == 0


async def test_a_code_is_one_groups_per_app_and_a_groups_app_and_code_never_change(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    r = await api.http.post("/v1/apply", json={"items": [group("other")]})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "items[0].spec.code", r.text
    r = await api.http.post("/v1/apply", json={"items": [group(code="tiger")]})
    assert r.status_code == 422 and "cannot change" in r.json()["problems"][0]["expected"], r.text


def _snapshot(raw: dict[str, Any]) -> Snapshot:
    return Snapshot.model_validate(raw)


async def test_a_group_is_placed_beside_the_app_and_no_default_pool_holds_it(api: Api) -> None:
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    generation = (await ok(api.http.get("/v1/registry")))["generation"]
    [result] = (await ok(api.http.post("/v1/apply", json={"items": [group(convergence="strict")]})))["results"]
    assert result == {"kind": "IsolationGroup", "name": "shop-vostro", "outcome": "created"}
    assert (await ok(api.http.get("/v1/registry")))["generation"] > generation, "components learn of the group"
    assert await scheduler.reconcile_once(api.store) == 2
    await agents_run_desired(api, fleet)
    items = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
    grouped = sorted((i["spec"]["cell"], i["metadata"]["name"].startswith("shop-vostro-"))
                     for i in items if i["spec"].get("group") == "vostro")
    assert grouped == [("cell-a", True), ("cell-b", True)]
    assert sum(1 for i in items if i["spec"].get("group") is None) == 10, "the app's own counts are untouched"
    [listed] = (await ok(api.http.get("/v1/isolationgroups", params={"app": "shop"})))["items"]
    assert (listed["ready"], listed["wanted"], listed["convergence"]) == (2, 2, "strict")

    snap = _snapshot(await ok(api.http.get("/v1/registry")))
    [shop] = [s for s in snap.services if s.name == "shop"]
    assert [(g.code, g.convergence, g.stress) for g in shop.groups] == [("vostro", "strict", False)]
    group_ids = {e.id for e in shop.endpoints if e.group == "vostro"}
    assert len(group_ids) == 2
    exposed = snap.model_copy(update={"services": tuple(
        s.model_copy(update={"routes": (Route(host="shop.local", path="/"),)}) for s in snap.services)})
    for tables in (sidecar_tables(snap, "cell-a", "shop"), gateway_rule_tables(_snapshot(exposed.to_json()))[1]):
        pool = next(b for b in tables.backends if b.name == "svc_shop")
        assert len(pool.servers) == 10 and not {s.name for s in pool.servers} & group_ids
    unit = sidecar_tables(snap, "cell-a", "shop", "vostro")
    own = next(b for b in unit.backends if b.name == "svc_shop:g.vostro")
    assert {s.name for s in own.servers} == group_ids
    assert [s.name for s in own.servers if not s.backup] and [s.name for s in own.servers if s.backup]
    assert unit.units.code == "vostro" and unit.units.convergence == "strict"

    r = await ok(api.http.delete("/v1/isolationgroups/shop-vostro"))
    assert sorted(r["retired"]) == sorted(group_ids)
    await agents_run_desired(api, fleet)
    assert (await ok(api.http.get("/v1/isolationgroups")))["items"] == []
    left = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
    assert all(i["spec"]["desired"] == "deleted" for i in left if i["spec"].get("group") == "vostro")
    actions = [(a["action"], a["resource"]) for a in await audit(api)]
    assert ("apply", "IsolationGroup/shop-vostro") in actions and ("delete", "IsolationGroup/shop-vostro") in actions
    assert ("schedule", "IsolationGroup/shop-vostro") in actions


async def test_a_release_changes_each_groups_share_in_every_release_group(api: Api) -> None:
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group(cells={"cell-a": 2, "cell-b": 2})]}))
    assert await scheduler.reconcile_once(api.store) == 4
    await agents_run_desired(api, fleet)
    started = await ok(api.http.post("/v1/apps/shop/releases", json={"toRevision": 2, "strategy": {
        "betaSize": 1, "groups": 3, "pause": "none"}}), 201)
    shares = [sorted((s["cell"], s.get("group", "")) for s in g["slots"] if s.get("group")) for g in started["groups"]]
    assert shares[0] == [("cell-a", "vostro"), ("cell-b", "vostro")], "the unit has its beta too"
    assert sum(len(s) for s in shares) == 4
    for _ in range(30):
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, fleet)
        if (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "Succeeded":
            break
    assert (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "Succeeded"
    running = [i for i in (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
               if i["spec"]["desired"] == "running"]
    assert sorted({(i["spec"].get("group"), i["spec"]["revision"]) for i in running}, key=str) == \
        sorted({(None, 2), ("vostro", 2)}, key=str)
    assert sum(1 for i in running if i["spec"].get("group") == "vostro") == 4


async def test_an_evacuated_group_instance_comes_back_in_its_group(api: Api) -> None:
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    await scheduler.reconcile_once(api.store)
    await agents_run_desired(api, fleet)
    items = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
    node = next(i["spec"]["node"] for i in items if i["spec"].get("group") == "vostro" and i["spec"]["cell"] == "cell-a")
    drained = await ok(api.http.post(f"/v1/nodes/{node}/drain"))
    assert drained["releases"], drained
    for _ in range(30):
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, fleet)
        if (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "Succeeded":
            break
    running = [i for i in (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
               if i["spec"]["desired"] == "running"]
    assert all(i["spec"]["node"] != node for i in running)
    assert sorted(i["spec"]["cell"] for i in running if i["spec"].get("group") == "vostro") == ["cell-a", "cell-b"]
    assert sum(1 for i in running if i["spec"].get("group") is None) == 10


async def test_a_rule_may_name_a_group_before_it_exists_and_says_so(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    rule = {"apiVersion": API_VERSION, "kind": "TrafficRule", "metadata": {"name": "to-unit"},
            "spec": {"service": "shop", "routes": [{"match": {"tags": {"biz": "replenish"}},
                                                    "to": [{"group": "vostro"}], "fallback": "fail"}]}}
    await ok(api.http.post("/v1/apply", json={"items": [rule]}))
    [side] = (await ok(api.http.get("/v1/trafficrules/to-unit")))["routes"][0]["to"]
    assert side["fallback"] and "no such group" in side["status"], side
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    [side] = (await ok(api.http.get("/v1/trafficrules/to-unit")))["routes"][0]["to"]
    assert "status" not in side and side["subset"].startswith("group vostro")


async def test_only_who_may_change_the_app_may_change_its_groups(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    other = await new_user(api, "olga", "operator", ["other"])
    reader = await new_user(api, "rita", "viewer", ["shop"])
    for token, status in ((other, 403), (reader, 403)):
        async with httpx.AsyncClient(transport=api.http._transport, base_url=str(api.http.base_url),
                                     headers={"Authorization": f"Bearer {token['token']}"}) as as_user:
            r = await as_user.post("/v1/apply", json={"items": [group(cells={"cell-a": 2})]})
            assert r.status_code == status, r.text
            r = await as_user.delete("/v1/isolationgroups/shop-vostro")
            assert r.status_code in (403, 404), r.text
    async with httpx.AsyncClient(transport=api.http._transport, base_url=str(api.http.base_url),
                                 headers={"Authorization": f"Bearer {reader['token']}"}) as as_reader:
        assert [g["name"] for g in (await ok(as_reader.get("/v1/isolationgroups")))["items"]] == ["shop-vostro"]
    async with httpx.AsyncClient(transport=api.http._transport, base_url=str(api.http.base_url),
                                 headers={"Authorization": f"Bearer {other['token']}"}) as as_other:
        assert (await ok(as_other.get("/v1/isolationgroups")))["items"] == []


async def test_explain_follows_a_unit_and_confines_stress_calls(api: Api) -> None:
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    await scheduler.reconcile_once(api.store)
    await agents_run_desired(api, fleet)
    items = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
    unit_ids = sorted(i["metadata"]["name"] for i in items if i["spec"].get("group") == "vostro")

    def explain(**params: Any) -> Any:
        return api.http.get("/v1/traffic/explain", params={"service": "shop", **params})
    converged = await ok(explain(**{"from": "shop", "unit": "vostro"}))
    assert "self-convergence" in converged["reason"] and sorted(converged["endpoints"]) == unit_ids
    assert converged["group"] == "vostro"
    r = await explain(**{"from": "shop", "unit": "tiger"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "unit", r.text
    plain = await ok(explain(tag=["stress=true"]))
    assert len(plain["endpoints"]) == 10 and not set(plain["endpoints"]) & set(unit_ids)
    stressed = await ok(explain(**{"from": "shop", "unit": "vostro", "tag": ["stress=true"]}))
    assert "does not take them" in stressed["reason"] and not set(stressed["endpoints"]) & set(unit_ids)

    spec = (await ok(api.http.get("/v1/apps/shop")))["spec"]
    app = {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
           "spec": {**spec, "traffic": {**spec.get("traffic", {}), "stress": "deny"}}}
    await ok(api.http.post("/v1/apply", json={"items": [app]}))
    denied = await ok(explain(tag=["stress=true"]))
    assert denied["endpoints"] == [] and "503" in denied["reason"]
    await ok(api.http.post("/v1/apply", json={"items": [group(stress=True)]}))
    taken = await ok(explain(tag=["stress=true"]))
    assert sorted(taken["endpoints"]) == unit_ids


async def test_deleting_the_app_deletes_its_groups_on_the_record(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    await scheduler.reconcile_once(api.store)
    await ok(api.http.delete("/v1/apps/shop"))
    assert (await ok(api.http.get("/v1/isolationgroups")))["items"] == []
    left = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
    assert left and all(i["spec"]["desired"] == "deleted" for i in left)
    assert ("delete", "IsolationGroup/shop-vostro") in [(a["action"], a["resource"]) for a in await audit(api)]
    assert await scheduler.reconcile_once(api.store) == 0, "nothing places a deleted app's group again"


async def test_metrics_show_each_groups_size_and_whether_it_is_in_effect(api: Api) -> None:
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [group()]}))
    await scheduler.reconcile_once(api.store)
    await agents_run_desired(api, fleet)
    text = (await api.http.get("/metrics", params={"traffic": "false"})).text
    labels = 'group="shop-vostro",unit="vostro"'
    assert f'ballast_isolation_group_ready_endpoints{{app="shop",cell="cell-a",{labels}}} 1.0' in text, text
    assert f'ballast_isolation_group_wanted_instances{{app="shop",cell="cell-b",{labels}}} 1.0' in text
    assert f'ballast_isolation_group_in_effect{{app="shop",{labels}}} 1.0' in text
