"""Spec of component credentials over both stores: each node and gateway speaks only for itself.

The world is test_api_registry's: cells a and b, node n-a1 and n-b1, gateway `edge`, shop placed on both nodes
and exposed, each component with its own credential (joined with an admin's one-time join token). The five
abuses one shared agent credential allowed are each refused here, changing nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ballast.controllers import endpoints as registry_controller
from ballast.controllers import scheduler
from tests.archives import app_package
from tests.conftest import Api, Fleet, join_component
from tests.unit.test_api_registry import ack_all, instances, ok, shop, world


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def settled_world(api: Api) -> Fleet:
    """test_api_registry's world with the registry's endpoints made from the agents' reports."""
    fleet = await world(api)
    await registry_controller.reconcile_once(api.store)
    return fleet


async def audit(api: Api) -> list[dict[str, Any]]:
    return (await ok(api.http.get("/v1/audit", params={"limit": 10_000})))["items"]  # type: ignore[no-any-return]


async def gateway(api: Api) -> dict[str, Any]:
    return (await ok(api.http.get("/v1/gateways/edge")))["status"]  # type: ignore[no-any-return]


def refused_naming(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 403, r.text
    assert all(w in r.json()["message"] for w in words), r.json()["message"]


async def test_a_node_credential_cannot_acknowledge_for_the_gateway(api: Api) -> None:
    """Abuse 1: node n-a1's credential acknowledging the newest generation as gateway `edge` (which applied
    nothing) is 403 naming both, and the gateway's acknowledgement stays what the gateway itself sent."""
    fleet = await settled_world(api)
    generation = (await ok(fleet.get("/v1/registry")))["generation"]
    await ack_all(fleet, generation)
    await ok(api.http.post("/v1/apply", json={"items": [shop(expose={"host": "shop2.local", "path": "/"})]}))
    newer = (await ok(fleet.get("/v1/registry")))["generation"]
    before = await gateway(api)
    assert before["acknowledgedGeneration"] == generation < newer

    node = await fleet.client("node", "n-a1")
    r = await node.post("/v1/gateways/edge/ack", json={"generation": newer})
    refused_naming(r, "node 'n-a1'", "gateway 'edge'")
    after = await gateway(api)
    assert [after[k] for k in ("acknowledgedGeneration", "appliedHash", "acknowledgedWith", "inSync")] == [
        before[k] for k in ("acknowledgedGeneration", "appliedHash", "acknowledgedWith", "inSync")]
    assert after["inSync"] is False, "the gateway still has the newest generation to apply"
    r = await node.post("/v1/nodes/n-b1/ack", json={"generation": newer})
    refused_naming(r, "node 'n-a1'", "node 'n-b1'")


async def test_acknowledgements_record_the_credential_that_sent_them(api: Api) -> None:
    """The gateway's and each node's last acknowledgement name the token id of the credential that sent it."""
    fleet = await settled_world(api)
    edge = await join_component(api, "gateway", "edge")   # re-join: a new credential, the old one revoked
    async with api.as_(edge["token"]) as client:
        generation = (await ok(client.get("/v1/registry")))["generation"]
        await ok(client.post("/v1/gateways/edge/ack", json={"generation": generation}))
    assert (await gateway(api))["acknowledgedWith"] == edge["id"]
    await ok(fleet.post("/v1/nodes/n-a1/ack", json={"generation": generation}))
    n_a1 = (await ok((await fleet.client("node", "n-a1")).get("/v1/whoami")))["token"]
    endpoints = (await ok(api.http.get("/v1/apps/shop/endpoints")))["items"]
    withs = [e["status"]["acknowledgedWith"] for e in endpoints]
    assert all(w.get("gateway/edge") == edge["id"] for w in withs), withs
    assert any(w.get("mesh/n-a1") == n_a1 for w in withs), withs
    old = fleet.clients[("gateway", "edge")]
    r = await old.post("/v1/gateways/edge/ack", json={"generation": generation})
    assert r.status_code == 401 and "revoked" in r.json()["message"], "re-joining revoked the old credential"


async def test_a_fake_node_cannot_register_without_its_own_join_token(api: Api) -> None:
    """Abuse 2: registering node `fake` with n-a1's credential, with the admin's token, or with no token is
    refused; nothing is stored and the scheduler places nothing there."""
    fleet = await world(api)
    body = {"cell": "cell-a", "ip": "10.0.0.66", "cpuMillis": 64000, "memoryBytes": 2**40}
    node = await fleet.client("node", "n-a1")
    refused_naming(await node.put("/v1/nodes/fake", json=body), "node 'n-a1'", "node 'fake'")
    refused_naming(await api.http.put("/v1/nodes/fake", json=body), "user 'admin'", "node 'fake'")
    async with api.as_(None) as anonymous:
        assert (await anonymous.put("/v1/nodes/fake", json=body)).status_code == 401
    assert (await api.http.get("/v1/nodes/fake")).status_code == 404
    await ok(api.http.post("/v1/apply", json={"items": [shop(cells={"cell-a": 3, "cell-b": 1})]}))
    await scheduler.reconcile_once(api.store)
    assert "fake" not in {i["spec"]["node"] for i in await instances(api)}
    # A gateway's join token cannot make a node, nor a join token for one node another one.
    for kind, name in [("gateway", "gw-2"), ("node", "n-z9")]:
        made = await ok(api.http.post("/v1/join-tokens", json={"kind": kind, "name": name}), 201)
        async with api.as_(made["token"]) as joiner:
            refused_naming(await joiner.post("/v1/join", json={"kind": "node", "name": "fake"}), made["id"])
            assert (await joiner.get("/v1/apps")).status_code == 403, "a join token reads nothing"
    assert "node/fake" not in {u["name"] for u in (await ok(api.http.get("/v1/users")))["items"]}


async def test_a_node_cannot_report_status_for_another_node(api: Api) -> None:
    """Abuse 3: n-a1's credential reporting n-b1's instance not ready (which would drain it) is 403; the
    instance, its endpoint and the audit log in n-b1's name are unchanged."""
    fleet = await settled_world(api)
    before = await instances(api)
    endpoints_before = (await ok(api.http.get("/v1/apps/shop/endpoints")))["items"]
    seen = max(r["seq"] for r in await audit(api))
    [victim] = [i for i in before if i["spec"]["node"] == "n-b1"]
    report = {"instances": [{"id": victim["metadata"]["name"], "phase": "Running", "ready": False, "restarts": 0,
                             "revision": 1}]}
    node = await fleet.client("node", "n-a1")
    refused_naming(await node.post("/v1/nodes/n-b1/status", json=report), "node 'n-a1'", "node 'n-b1'")
    refused_naming(await node.get("/v1/nodes/n-b1/assignments"), "node 'n-a1'", "node 'n-b1'")
    await registry_controller.reconcile_once(api.store)
    assert await instances(api) == before
    assert (await ok(api.http.get("/v1/apps/shop/endpoints")))["items"] == endpoints_before
    # (A slow run may also see the registry say its quiet test nodes suspend judgement: its own observation.)
    added = [r for r in await audit(api) if r["seq"] > seen and not r["action"].startswith("node-disruption.")]
    assert not [r for r in added if r["actor"] == "node/n-b1"], added
    assert added and all(r["actor"] == "node/n-a1" and r["result"] != "ok" for r in added), added


async def test_a_fake_gateway_cannot_register(api: Api) -> None:
    """Abuse 4: registering gateway `evil` (which would pause every release waiting for it) with a node's or
    another gateway's credential is refused, and no such gateway exists."""
    fleet = await world(api)
    body = {"address": "127.0.0.9:8080"}
    refused_naming(await (await fleet.client("node", "n-a1")).put("/v1/gateways/evil", json=body),
                   "node 'n-a1'", "gateway 'evil'")
    refused_naming(await (await fleet.client("gateway", "edge")).put("/v1/gateways/evil", json=body),
                   "gateway 'edge'", "gateway 'evil'")
    refused_naming(await (await fleet.client("gateway", "edge")).put("/v1/nodes/n-a1", json={
        "cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 4000, "memoryBytes": 2**33}), "gateway 'edge'", "node 'n-a1'")
    assert [g["metadata"]["name"] for g in (await ok(api.http.get("/v1/gateways")))["items"]] == ["edge"]


async def test_a_component_credential_reads_nothing_people_read(api: Api) -> None:
    """Abuse 5: a node's or the gateway's credential may not read apps (templates, env), users, tokens, orders,
    the audit log, cells or nodes; it reads its own assignments and the registry."""
    fleet = await world(api)
    for kind, name in [("node", "n-a1"), ("gateway", "edge")]:
        client = await fleet.client(kind, name)
        for path in ["/v1/apps", "/v1/apps/shop", "/v1/apps/shop/revisions", "/v1/instances", "/v1/users",
                     "/v1/tokens", "/v1/orders", "/v1/audit", "/v1/audit/verify", "/v1/cells", "/v1/nodes",
                     "/v1/apps/shop/endpoints", "/v1/artifacts"]:
            r = await client.get(path)
            assert r.status_code == 403, (kind, path, r.status_code, r.text)
        assert (await client.get("/v1/registry")).status_code == 200
    assert (await (await fleet.client("node", "n-a1")).get("/v1/nodes/n-a1/assignments")).status_code == 200


async def test_a_node_fetches_only_the_artifacts_its_own_instances_run(api: Api) -> None:
    """A node may download an artifact an instance granted to it runs; not another one, and a gateway none."""
    fleet = await world(api)
    pay_package = app_package(b"pay")
    other = await ok(api.http.post("/v1/artifacts", content=app_package(b"other")), 201)
    mine = await ok(api.http.post("/v1/artifacts", content=pay_package), 201)
    pay = {**shop(), "metadata": {"name": "pay"}}
    pay["spec"] = {"cells": {"cell-a": 1}, "template": {"command": ["python", "-m", "pay"], "artifact": mine["digest"]}}
    await ok(api.http.post("/v1/apply", json={"items": [pay]}))
    assert await scheduler.reconcile_once(api.store) == 1   # on n-a1, cell-a's one node
    n_a1, n_b1 = await fleet.client("node", "n-a1"), await fleet.client("node", "n-b1")
    r = await n_a1.get(f"/v1/artifacts/{mine['digest']}")
    assert r.status_code == 200 and r.content == pay_package, r.text
    refused_naming(await n_b1.get(f"/v1/artifacts/{mine['digest']}"), "node/n-b1", mine["digest"])
    refused_naming(await n_a1.get(f"/v1/artifacts/{other['digest']}"), "node/n-a1", other["digest"])
    refused_naming(await (await fleet.client("gateway", "edge")).get(f"/v1/artifacts/{mine['digest']}"), "gateway/edge")


async def test_join_tokens_are_one_time_expire_and_need_an_admin(api: Api) -> None:
    """A join token joins once (again: 401), not after it expires (401), not an existing name unless made for
    it; only admins mint them (operators get 403), and minting and joining are on the audit log."""
    clock = Clock(api.store.clock())
    api.store.clock = clock
    made = await ok(api.http.post("/v1/join-tokens", json={"kind": "node"}), 201)
    async with api.as_(made["token"]) as joiner:
        joined = await ok(joiner.post("/v1/join", json={"kind": "node", "name": "n-new"}))
        assert joined["user"] == "node/n-new" and joined["token"].startswith("blt_")
        again = await joiner.post("/v1/join", json={"kind": "node", "name": "n-other"})
        assert again.status_code == 401 and "used already" in again.json()["message"], again.text
    unnamed = await ok(api.http.post("/v1/join-tokens", json={}), 201)
    async with api.as_(unnamed["token"]) as joiner:
        refused_naming(await joiner.post("/v1/join", json={"kind": "node", "name": "n-new"}), "has joined already")
    short = await ok(api.http.post("/v1/join-tokens", json={"kind": "gateway", "name": "gw", "ttlSeconds": 60}), 201)
    clock.now += 61
    async with api.as_(short["token"]) as joiner:
        late = await joiner.post("/v1/join", json={"kind": "gateway", "name": "gw"})
        assert late.status_code == 401 and "expired" in late.json()["message"], late.text
    r = await api.http.post("/v1/join-tokens", json={"kind": "node", "name": "Bad_Name"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "name", r.text
    await ok(api.http.post("/v1/users", json={"name": "otto", "role": "operator"}), 201)
    otto = (await ok(api.http.post("/v1/tokens", json={"user": "otto"}), 201))["token"]
    async with api.as_(otto) as operator:
        assert (await operator.post("/v1/join-tokens", json={"kind": "node"})).status_code == 403
    r = await api.http.post("/v1/users", json={"name": "mallory", "role": "node"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "role", "component roles are not for people"
    actions = [(r["actor"], r["action"]) for r in await audit(api)]
    assert ("admin", "join-token.create") in actions and ("node/n-new", "node.join") in actions


async def test_two_joins_racing_with_one_token_make_one_credential(api: Api) -> None:
    """Of two joins sent at once with one join token, exactly one gets a credential."""
    made = await ok(api.http.post("/v1/join-tokens", json={"kind": "node"}), 201)
    async with api.as_(made["token"]) as a, api.as_(made["token"]) as b:
        answers = await asyncio.gather(a.post("/v1/join", json={"kind": "node", "name": "n-x"}),
                                       b.post("/v1/join", json={"kind": "node", "name": "n-y"}))
    assert sorted(r.status_code for r in answers) in ([200, 401], [200, 409]), [r.text for r in answers]
    users = {u["name"] for u in (await ok(api.http.get("/v1/users")))["items"]}
    assert len(users & {"node/n-x", "node/n-y"}) == 1, users


async def test_a_deleted_node_or_gateway_speaks_no_more(api: Api) -> None:
    """Deleting a node or gateway revokes its own credential (on the audit record); joining again needs an admin's
    join token."""
    await api.http.post("/v1/apply", json={"items": [{"apiVersion": "ballast.io/v1alpha1", "kind": "Cell",
                                                       "metadata": {"name": "cell-a"}, "spec": {"zone": "z"}}]})
    node = await join_component(api, "node", "n-gone")
    gateway = await join_component(api, "gateway", "gw-gone")
    async with api.as_(node["token"]) as n, api.as_(gateway["token"]) as g:
        assert (await n.put("/v1/nodes/n-gone", json={"cell": "cell-a", "ip": "10.9.0.1", "cpuMillis": 1000,
                                                        "memoryBytes": 2**30})).status_code == 200
        assert (await g.put("/v1/gateways/gw-gone", json={"address": "127.0.0.1:8080"})).status_code == 200
        assert (await api.http.delete("/v1/nodes/n-gone")).status_code == 200
        assert (await api.http.delete("/v1/gateways/gw-gone")).status_code == 200
        assert (await n.get("/v1/registry")).status_code == 401
        assert (await g.get("/v1/registry")).status_code == 401
    records = {r["action"]: r for r in (await api.http.get("/v1/audit", params={"limit": 1000})).json()["items"]}
    assert records["node.delete"]["detail"]["credentialsRevoked"] == [node["id"]]
    assert records["gateway.delete"]["detail"]["credentialsRevoked"] == [gateway["id"]]
