"""TrafficRules and ColoringRules over the API, on both stores: bad rules refused with the field path and nothing
stored, authorization by the governed app, generations and acknowledgements, what the registry carries, delete,
`traffic explain` and `traffic analyze`."""

from __future__ import annotations

from typing import Any

import pytest

from ballast.core.manifests import API_VERSION
from tests.conftest import Api
from tests.unit.test_api_releases import audit, ok, shop_at_revision_1_with_revision_2_recorded
from tests.unit.test_role_matrix import new_user


def rule(name: str = "shop-canary", **spec: Any) -> dict[str, Any]:
    body = {"service": "shop", "routes": [
        {"name": "testers", "match": {"headers": {"x-user-group": {"exact": "testers"}}}, "to": [{"revision": 2}]},
        {"name": "split", "to": [{"revision": 1, "weight": 999}, {"revision": 2, "weight": 1}],
         "stickyKey": {"header": "x-user"}}]}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "TrafficRule", "metadata": {"name": name}, "spec": body}


def coloring(name: str = "replenish", at: list[str] | None = None) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ColoringRule", "metadata": {"name": name},
            "spec": {"at": {"apps": at or ["gateway"]}, "match": {"pathPrefix": "/replenish"},
                     "tags": {"biz": "replenish"}}}


def with_route(route: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return rule(routes=[route], **spec)


BAD = [
    (rule(service="nope"), "items[0].spec.service", "an existing app"),
    (with_route({"name": "r", "to": [{"revision": 7}]}), "items[0].spec.routes[0].to[0].revision", "a revision of 'shop'"),
    (with_route({"name": "r", "to": [{"revision": 1, "weight": 0}, {"revision": 2, "weight": 0}]}),
     "items[0].spec.routes[0].to", "weights whose sum is above 0"),
    (with_route({"name": "r", "to": [{"revision": 1, "weight": -1}]}), "items[0].spec.routes[0].to[0].weight",
     "greater than or equal to 0"),
    (with_route({"name": "r", "match": {"headers": {"x-a": {"regex": "(["}}}, "to": [{"revision": 1}]}),
     "items[0].spec.routes[0].match.headers.x-a", "a valid regular expression"),
    (rule(routes=[{"name": "all", "to": [{"revision": 1}]}, {"name": "r", "to": [{"revision": 2}]}]),
     "items[0].spec.routes", "the default route 'all'"),
    (rule(routes=[{"name": "r", "match": {"pathPrefix": "/a"}, "to": [{"revision": 1}]},
                  {"name": "r", "to": [{"revision": 2}]}]), "items[0].spec.routes", "distinct route names"),
    (with_route({"name": "r", "match": {"headers": {"x a": {"exact": "1"}}}, "to": [{"revision": 1}]}),
     "items[0].spec.routes[0].match.headers.x a", "should match pattern"),
    (with_route({"name": "r", "match": {"headers": {"x-a": {"exact": "it's"}}}, "to": [{"revision": 1}]}),
     "items[0].spec.routes[0].match.headers.x-a", "without a single quote"),
    (with_route({"name": "r", "match": {"tags": {"env": "gr ay"}}, "to": [{"revision": 1}]}),
     "items[0].spec.routes[0].match.tags.env", "pattern"),
    (with_route({"name": "r", "to": [{"revision": 1, "cells": ["cell-z"]}]}),
     "items[0].spec.routes[0].to[0].cells[0]", "an existing cell"),
    (rule(**{"from": {"apps": ["ghost"]}}), "items[0].spec.from.apps[0]", "an existing app, or 'gateway'"),
    (coloring(at=["ghost"]), "items[0].spec.at.apps[0]", "an existing app, or 'gateway'"),
]


@pytest.mark.parametrize(("doc", "path", "expected"), BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
async def test_a_bad_rule_is_refused_with_its_field_path_and_nothing_is_stored(api: Api, doc: dict[str, Any],
                                                                              path: str, expected: str) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    before = await ok(api.http.get("/v1/registry"))
    audited = len(await audit(api))
    r = await api.http.post("/v1/apply", json={"items": [doc]})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert any(p["path"] == path and expected in p["expected"] for p in problems), problems
    assert (await ok(api.http.get("/v1/trafficrules")))["items"] == []
    assert (await ok(api.http.get("/v1/coloringrules")))["items"] == []
    assert (await ok(api.http.get("/v1/registry")))["generation"] == before["generation"]
    refusals = (await audit(api))[audited:]
    assert refusals and all(r["result"] != "ok" for r in refusals), refusals   # the refusal is on record, nothing else


async def test_two_rules_whose_scopes_overlap_are_refused_naming_both(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [rule("everyone"), rule("gw", **{"from": {"apps": ["gateway"]}})]}))
    r = await api.http.post("/v1/apply", json={"items": [rule("everyone-too")]})
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "items[0].spec.from" and "rule 'everyone' already governs every caller" in \
        problem["expected"], problem
    r = await api.http.post("/v1/apply", json={"items": [rule("gw-too", **{"from": {"apps": ["gateway", "shop"]}})]})
    assert r.status_code == 422 and "rule 'gw' already governs calls from gateway" in r.text, r.text
    # A caller's own rule beside the everyone rule is no ambiguity: the caller's wins.
    await ok(api.http.post("/v1/apply", json={"items": [rule("shop-self", **{"from": {"apps": ["shop"]}})]}))


async def test_a_rule_moves_the_registry_and_is_in_effect_once_every_component_acknowledged(api: Api) -> None:
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    before = (await ok(api.http.get("/v1/registry")))["generation"]
    [result] = (await ok(api.http.post("/v1/apply", json={"items": [rule(), ]})))["results"]
    assert result == {"kind": "TrafficRule", "name": "shop-canary", "outcome": "created"}
    snapshot = await ok(api.http.get("/v1/registry"))
    assert snapshot["generation"] > before
    [shop] = [s for s in snapshot["services"] if s["name"] == "shop"]
    [carried] = shop["rules"]
    assert carried["name"] == "shop-canary" and carried["generation"] == snapshot["generation"]
    state = await ok(api.http.get("/v1/trafficrules/shop-canary"))
    assert state["generation"] == snapshot["generation"] and not state["inEffect"]
    assert state["routes"][1]["to"][0]["readyEndpoints"] + state["routes"][1]["to"][1]["readyEndpoints"] >= 0
    for node in ("n-a1", "n-a2", "n-b1", "n-b2"):
        await ok(fleet.post(f"/v1/nodes/{node}/ack", json={"generation": snapshot["generation"], "appliedHash": "x"}))
    state = await ok(api.http.get("/v1/trafficrules/shop-canary"))
    assert state["inEffect"] and state["pending"] == [] and "mesh/n-a1" in state["acknowledged"], state
    # The same rule again changes nothing; a changed one moves the generation again. Both are audited.
    assert (await ok(api.http.post("/v1/apply", json={"items": [rule()]})))["results"][0]["outcome"] == "unchanged"
    assert (await ok(api.http.get("/v1/registry")))["generation"] == snapshot["generation"]
    changed = rule(routes=[{"name": "split", "to": [{"revision": 1, "weight": 9}, {"revision": 2, "weight": 1}]}])
    assert (await ok(api.http.post("/v1/apply", json={"items": [changed]})))["results"][0]["outcome"] == "configured"
    assert (await ok(api.http.get("/v1/registry")))["generation"] > snapshot["generation"]
    records = [r for r in await audit(api) if r["resource"] == "TrafficRule/shop-canary"]
    assert [r["detail"]["outcome"] for r in records] == ["created", "unchanged", "configured"]
    assert records[2]["before"] == records[0]["after"] != records[2]["after"]


async def test_stable_and_latest_reach_components_as_numbers(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [with_route(
        {"name": "r", "to": [{"revision": "stable", "weight": 3}, {"revision": "latest", "weight": 1}]})]}))
    [shop] = [s for s in (await ok(api.http.get("/v1/registry")))["services"] if s["name"] == "shop"]
    assert [d["revision"] for d in shop["rules"][0]["spec"]["routes"][0]["to"]] == [1, 2]


async def test_only_an_operator_of_the_governed_app_may_change_its_rules(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [{"apiVersion": API_VERSION, "kind": "AppService",
                                                          "metadata": {"name": "other"},
                                                          "spec": {"replicas": 1, "template": {"command": ["x"]}}}]}))
    elsewhere = (await new_user(api, "op-other", "operator", ["other"]))["token"]
    mine = (await new_user(api, "op-shop", "operator", ["shop"]))["token"]
    async with api.as_(elsewhere) as http:
        assert (await http.post("/v1/apply", json={"items": [rule()]})).status_code == 403
        assert (await http.post("/v1/apply", json={"items": [coloring(at=["gateway"])]})).status_code == 403
    async with api.as_(mine) as http:
        await ok(http.post("/v1/apply", json={"items": [rule()]}))
        assert (await http.post("/v1/apply", json={"items": [coloring(at=["gateway"])]})).status_code == 403, \
            "marking at the gateway colors every app's calls: only an unscoped binding may"
        await ok(http.post("/v1/apply", json={"items": [coloring(at=["shop"])]}))
    async with api.as_(elsewhere) as http:
        assert (await http.delete("/v1/trafficrules/shop-canary")).status_code == 403
        assert (await http.get("/v1/trafficrules/shop-canary")).status_code == 404, "not its app: not visible"
    async with api.as_(mine) as http:
        assert await ok(http.delete("/v1/trafficrules/shop-canary")) == {"deleted": "TrafficRule/shop-canary"}
    [record] = [r for r in await audit(api) if r["action"] == "delete" and r["resource"] == "TrafficRule/shop-canary"]
    assert record["actor"] == "op-shop" and record["before"]


async def test_explain_evaluates_the_rule_components_route_by(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [rule()]}))
    testers = await ok(api.http.get("/v1/traffic/explain", params={"service": "shop", "from": "gateway",
                                                                     "header": "x-user-group=testers"}))
    assert (testers["rule"], testers["route"]) == ("shop-canary", "testers")
    assert testers["destinations"][0]["revision"] == 2 and testers["destinations"][0]["chosen"]
    split = await ok(api.http.get("/v1/traffic/explain", params={"service": "shop"}))
    assert split["route"] == "split" and [d["share"] for d in split["destinations"]] == [0.999, 0.001]
    assert not any(d["chosen"] for d in split["destinations"])
    sticky = await ok(api.http.get("/v1/traffic/explain", params={"service": "shop", "header": "x-user=alice"}))
    assert sum(d["chosen"] for d in sticky["destinations"]) == 1
    r = await api.http.get("/v1/traffic/explain", params={"service": "nope"})
    assert r.status_code == 404


async def test_analyze_reports_refusals_and_warnings_and_stores_nothing(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    generation = (await ok(api.http.get("/v1/registry")))["generation"]
    shadowed = rule(routes=[{"name": "any-api", "match": {"pathPrefix": "/api"}, "to": [{"revision": 1}]},
                            {"name": "api-v2", "match": {"pathPrefix": "/api/v2"}, "to": [{"revision": 2}]},
                            {"name": "rest", "to": [{"revision": 1}]}])
    answer = await ok(api.http.post("/v1/traffic/analyze", json={"items": [shadowed]}))
    assert answer["ok"] and answer["refused"] == []
    assert any("routes[1] ('api-v2') is never reached" in w for w in answer["warnings"]), answer
    assert any("revision 2 has no ready endpoint" in w or "selects no instance" in w for w in answer["warnings"])
    bad = await ok(api.http.post("/v1/traffic/analyze", json={"items": [rule(service="nope")]}))
    assert not bad["ok"] and bad["refused"][0]["path"] == "items[0].spec.service"
    assert (await ok(api.http.get("/v1/trafficrules")))["items"] == []
    assert (await ok(api.http.get("/v1/registry")))["generation"] == generation


# --- a release's own routing (strategy.traffic) ---------------------------------------------------------------
async def _settle(api: Api, fleet: Any) -> None:
    from tests.unit.test_api_releases import agents_run_desired
    from ballast.controllers import releases as release_engine
    for _ in range(6):
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, fleet)


async def test_a_release_routes_its_beta_share_by_rule_and_restores_routing_before_rolling_back(api: Api) -> None:
    from ballast.controllers import releases as release_engine
    from tests.unit.test_api_releases import NODES, release_status
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apps/shop/releases", json={"strategy": {"traffic": {"betaWeight": 5}}}), 201)
    await _settle(api, fleet)
    release = await release_status(api)
    assert release["phase"] == "Paused" and release["completedGroups"] == 1, release
    owned = await ok(api.http.get("/v1/trafficrules/release-shop"))
    assert owned["owner"] == f"release/{release['id']}"
    assert [(d["revision"], d["weight"]) for d in owned["spec"]["routes"][0]["to"]] == [(1, 950_000), (2, 50_000)]
    # Nobody else may take the every-caller scope, or the rule's name, while it stands.
    r = await api.http.post("/v1/apply", json={"items": [rule("mine")]})
    assert r.status_code == 422 and "rule 'release-shop' already governs every caller" in r.text, r.text
    assert (await api.http.delete("/v1/trafficrules/release-shop")).status_code == 409

    # A rollback removes it first, and changes no instance before every component acknowledged the removal.
    at_2 = await desired_at_revision(api, 2)
    assert at_2, "the beta group runs revision 2"
    await ok(api.http.post("/v1/apps/shop/release/rollback", json={}))
    await release_engine.reconcile_once(api.store)
    assert (await api.http.get("/v1/trafficrules/release-shop")).status_code == 404
    for _ in range(3):
        await release_engine.reconcile_once(api.store)
    release = await release_status(api)
    assert "restoring the routing" in release["waiting"], release
    assert await desired_at_revision(api, 2) == at_2, "no instance changed before the routing is back"
    generation = (await ok(fleet.get("/v1/registry")))["generation"]
    for node in NODES:
        await ok(fleet.post(f"/v1/nodes/{node}/ack", json={"generation": generation}))
    await _settle(api, fleet)
    release = await release_status(api)
    assert release["phase"] == "RolledBack", release
    records = [(r["action"], r["actor"]) for r in await audit(api) if r["resource"] == "TrafficRule/release-shop"]
    assert records == [("apply", "controller/releases"), ("delete", "controller/releases")], records


async def test_a_release_goes_past_beta_without_its_rule_and_refuses_to_start_beside_an_every_caller_rule(
        api: Api) -> None:
    from tests.unit.test_api_releases import release_status
    fleet = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [rule("everyone")]}))
    r = await api.http.post("/v1/apps/shop/releases", json={"strategy": {"traffic": {"betaWeight": 5}}})
    assert r.status_code == 409 and "TrafficRule 'everyone' governs every caller" in r.text, r.text
    await ok(api.http.delete("/v1/trafficrules/everyone"))
    match = {"headers": {"x-canary": {"exact": "1"}}}
    await ok(api.http.post("/v1/apps/shop/releases", json={"strategy": {"traffic": {"betaMatch": match}}}), 201)
    await _settle(api, fleet)
    owned = await ok(api.http.get("/v1/trafficrules/release-shop"))
    assert [r["name"] for r in owned["spec"]["routes"]] == ["beta", "others"]
    assert owned["spec"]["routes"][0]["match"]["headers"]["x-canary"]["exact"] == "1"
    await ok(api.http.post("/v1/apps/shop/release/resume", json={}))
    await _settle(api, fleet)
    assert (await api.http.get("/v1/trafficrules/release-shop")).status_code == 404
    assert (await release_status(api))["completedGroups"] >= 2


async def desired_at_revision(api: Api, revision: int) -> set[str]:
    from tests.unit.test_api_releases import desired_at
    return await desired_at(api, revision)


async def test_metrics_say_which_routes_fall_back(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [rule()]}))
    text = (await api.http.get("/metrics", params={"traffic": "false"})).text
    assert 'ballast_traffic_rule_in_effect{rule="shop-canary",service="shop"} 0.0' in text
    # Revision 2 is recorded, not released: its subset is empty and its calls take the whole pool.
    assert 'ballast_traffic_route_fallback{route="testers",rule="shop-canary",subset="revision 2"} 1.0' in text
    assert 'ballast_traffic_route_fallback{route="split",rule="shop-canary",subset="revision 1"} 0.0' in text
    assert 'ballast_traffic_route_ready_endpoints{route="split",rule="shop-canary",subset="revision 1"} 10.0' in text


async def test_a_route_without_a_name_is_named_by_its_place_and_a_bare_sticky_key_is_a_header(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    doc = rule(routes=[{"match": {"tags": {"biz": "replenish"}}, "to": [{"revision": 2}]},
                       {"to": [{"revision": 1, "weight": 9}, {"revision": 2, "weight": 1}], "stickyKey": "x-user"}])
    await ok(api.http.post("/v1/apply", json={"items": [doc]}))
    spec = (await ok(api.http.get("/v1/trafficrules/shop-canary")))["spec"]
    assert [r["name"] for r in spec["routes"]] == ["route-1", "route-2"]
    assert spec["routes"][1]["stickyKey"] == {"header": "x-user", "cookie": None}
    assert (await ok(api.http.post("/v1/apply", json={"items": [doc]})))["results"][0]["outcome"] == "unchanged"
