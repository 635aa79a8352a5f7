"""Spec of the node lifecycle: the pure judgement, then the controller over both stores with agents simulated by
status reports — a silent node turns NotReady, its endpoints leave routing without waiting for it, its instances
are replaced in its cell; when it returns the replaced ones are fenced; an ordered instance waits (or is moved);
a degraded node is cordoned and evacuated."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from ballast.controllers import endpoints as registry_controller
from ballast.controllers import node_lifecycle, scheduler
from ballast.core.node_lifecycle import HealthPolicy, Judgement, NodeFacts, NodeState, degradation, judge
from tests.conftest import Api, Fleet
from tests.unit.test_api_releases import NODES, agents_run_desired, ok, shop_at_revision_1_with_revision_2_recorded

GRACE = 4.0


def facts(name: str = "n1", state: NodeState = NodeState.READY, silent: bool = False, suspended: bool = False,
          conditions: dict[str, Any] | None = None, answering: bool = False) -> NodeFacts:
    return NodeFacts(name, state, 5.0 if silent else 0.5, silent, suspended, conditions, answering)


HEALTHY = {"clockOffsetSeconds": 0.01, "clockUncertaintySeconds": 0.002, "dataDirFreeBytes": 10 * 2**30, "dataDirTotalBytes": 20 * 2**30,
           "failingSidecars": []}


@pytest.mark.parametrize(("node", "expected"), [
    (facts(), []),
    (facts(silent=True), [NodeState.NOT_READY]),
    (facts(silent=True, suspended=True), []),                  # the control plane may be the deaf one
    (facts(silent=True, answering=True), []),                  # its agent answers a probe: alive, only unheard
    (facts(state=NodeState.DEGRADED, silent=True, answering=True), []),
    (facts(state=NodeState.NOT_READY, silent=True), []),       # judged once
    (facts(state=NodeState.NOT_READY), [NodeState.READY]),     # heartbeats again
    (facts(conditions={**HEALTHY, "clockOffsetSeconds": -7.5}), [NodeState.DEGRADED]),
    # a report that waited 2.3 s in a loaded control plane, measured over a round trip that long: not judged
    (facts(conditions={**HEALTHY, "clockOffsetSeconds": -2.3, "clockUncertaintySeconds": 1.2}), []),
    (facts(conditions={**HEALTHY, "clockOffsetSeconds": -2.3, "clockUncertaintySeconds": None}), []),
    (facts(conditions={**HEALTHY, "dataDirFreeBytes": 10 * 2**20}), [NodeState.DEGRADED]),
    (facts(conditions={**HEALTHY, "failingSidecars": [{"instance": "a-1", "restarts": 3}]}), [NodeState.DEGRADED]),
    (facts(conditions={**HEALTHY, "failingSidecars": [{"instance": "a-1", "restarts": 1}]}), []),
    (facts(state=NodeState.DEGRADED, conditions=HEALTHY), [NodeState.READY]),
    (facts(state=NodeState.DEGRADED, silent=True), [NodeState.NOT_READY]),   # silence outranks degradation
])
def test_judge(node: NodeFacts, expected: list[NodeState]) -> None:
    assert [j.state for j in judge([node], GRACE)] == expected


def test_degradation_names_every_problem() -> None:
    why = degradation({"clockOffsetSeconds": 3.2, "clockUncertaintySeconds": 0.01, "dataDirFreeBytes": 2**20, "dataDirTotalBytes": 2**30,
                       "failingSidecars": [{"instance": "shop-1", "restarts": 4}]}, HealthPolicy())
    assert "clock off by +3.2s" in why and "1 MiB free of 1024 MiB" in why and "shop-1 (4 restarts/min)" in why
    assert judge([facts(silent=True)], GRACE) == [Judgement("n1", NodeState.NOT_READY,
                                                            "no heartbeat for 5.0s (nodeGraceSeconds 4)")]


# --- the controller ---------------------------------------------------------------------------------------------
async def heartbeat(agent: Fleet, api: Api, *nodes: str, conditions: dict[str, Any] | None = None) -> None:
    """The nodes report (their instances as they are), which is their heartbeat."""
    items = (await ok(api.http.get("/v1/instances")))["items"]
    for node in nodes:
        reports = [{"id": i["metadata"]["name"], "phase": i["status"]["phase"], "ready": bool(i["status"]["ready"]),
                    "restarts": 0, "revision": i["status"]["revision"], "port": i["status"]["port"]}
                   for i in items if i["spec"]["node"] == node and i["status"]["phase"] == "Running"]
        body: dict[str, Any] = {"instances": reports}
        if conditions is not None:
            body["conditions"] = conditions
        await ok(agent.post(f"/v1/nodes/{node}/status", json=body))


def advance(api: Api, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    now = api.store.clock() + seconds
    monkeypatch.setattr(api.store, "clock", lambda: now)


async def node_actions(api: Api, node: str) -> list[str]:
    items = (await ok(api.http.get("/v1/audit", params={"resource": f"Node/{node}", "limit": 100})))["items"]
    return [a["action"] for a in items]


async def test_a_silent_node_is_replaced_in_its_cell_and_fenced_when_it_returns(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    before = {i["metadata"]["name"]: i["spec"] for i in (await ok(api.http.get("/v1/instances")))["items"]}
    on_a1 = sorted(i for i, s in before.items() if s["node"] == "n-a1")
    assert on_a1
    advance(api, monkeypatch, 2.0)
    await heartbeat(agent, api, *[n for n in NODES if n != "n-a1"])
    assert await node_lifecycle.reconcile_once(api.store) == 0, "within the grace nothing is judged"
    advance(api, monkeypatch, 2.5)   # n-a1 silent 4.5 s
    await heartbeat(agent, api, *[n for n in NODES if n != "n-a1"])
    assert await node_lifecycle.reconcile_once(api.store) == 1 + len(on_a1)
    node = await ok(api.http.get("/v1/nodes/n-a1"))
    assert (node["status"]["state"], node["status"]["ready"]) == ("NotReady", False)
    assert re.search(r"no heartbeat for \d+\.\ds \(nodeGraceSeconds 4\)", node["status"]["stateReason"]), node

    # Its endpoints leave routing at once; nobody waits for the dead node's mesh to acknowledge.
    await registry_controller.reconcile_once(api.store)
    eps = {e["metadata"]["name"]: e for e in (await ok(api.http.get("/v1/apps/shop/endpoints")))["items"]}
    assert {eps[i]["status"]["state"] for i in on_a1} == {"removed"}
    assert not [e for e in eps.values() if "mesh/n-a1" in e["status"]["pending"] + e["status"]["acknowledgedBy"]
                and e["metadata"]["name"] in on_a1], "the dead node is not waited for"
    generation = (await ok(agent.get("/v1/registry")))["generation"]
    for n in NODES:
        if n != "n-a1":
            await ok(agent.post(f"/v1/nodes/{n}/ack", json={"generation": generation}))
    await registry_controller.reconcile_once(api.store)
    granted = {i["metadata"]["name"]: i["status"]["grantedDesired"]
               for i in (await ok(api.http.get("/v1/instances", params={"node": "n-a1"})))["items"]}
    assert granted == {i: "deleted" for i in on_a1}

    # ... and are replaced in cell-a, never elsewhere.
    assert await scheduler.reconcile_once(api.store) == len(on_a1)
    live = [i for i in (await ok(api.http.get("/v1/instances")))["items"] if i["spec"]["desired"] == "running"]
    fresh = [i for i in live if i["metadata"]["name"] not in before]
    assert len(fresh) == len(on_a1) and {i["spec"]["node"] for i in fresh} == {"n-a2"}
    assert sum(1 for i in live if i["spec"]["cell"] == "cell-a") == 5

    # The node returns: what was replaced is fenced (its agent is told to stop it) and never routed again.
    advance(api, monkeypatch, 1.0)
    await heartbeat(agent, api, *NODES)
    await node_lifecycle.reconcile_once(api.store)
    assert (await ok(api.http.get("/v1/nodes/n-a1")))["status"]["state"] == "Ready"
    assert (await node_actions(api, "n-a1"))[-4:] == ["node.not-ready", "node.replace-instances", "node.ready",
                                                       "node.fence"]
    fence = (await ok(api.http.get("/v1/audit", params={"resource": "Node/n-a1", "limit": 1})))["items"][0]
    assert sorted(i["instance"] for i in fence["detail"]["instances"]) == on_a1
    stale = [{"id": i, "phase": "Running", "ready": True, "restarts": 0, "revision": 1, "port": 20000} for i in on_a1]
    await ok(agent.post("/v1/nodes/n-a1/status", json={"instances": stale}))   # an old process answers
    await registry_controller.reconcile_once(api.store)
    eps = {e["metadata"]["name"]: e for e in (await ok(api.http.get("/v1/apps/shop/endpoints")))["items"]}
    assert not [i for i in on_a1 if i in eps and eps[i]["status"]["state"] == "ready"], "a stale endpoint came back"
    stopped = [{"id": i, "phase": "Stopped", "ready": False, "restarts": 0, "revision": 1} for i in on_a1]
    await ok(agent.post("/v1/nodes/n-a1/status", json={"instances": stopped}))
    assert not (await ok(api.http.get("/v1/instances", params={"node": "n-a1"})))["items"]


async def test_judgement_is_suspended_when_most_nodes_fall_silent_and_after_the_control_plane_stalled(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    advance(api, monkeypatch, 30.0)   # nobody heard from: more likely the control plane's deafness
    assert await node_lifecycle.reconcile_once(api.store) == 0
    assert {n["status"]["state"] for n in (await ok(api.http.get("/v1/nodes")))["items"]} == {"Ready"}
    api.store.hearing_since = api.store.clock() - 1.0   # it stalled and hears again since a second ago
    agent = Fleet(api)
    await heartbeat(agent, api, "n-a2", "n-b1", "n-b2")
    assert await node_lifecycle.reconcile_once(api.store) == 0, "silence counts from when it could hear"


async def test_an_ordered_instance_waits_for_its_node_or_is_moved_without_its_data(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    agent = Fleet(api)
    await ok(api.http.post("/v1/apply", json={"items": [{
        "apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": "ledger"},
        "spec": {"cells": {"cell-a": 2}, "strategy": {"upgrade": "ordered"},
                 "template": {"command": ["python3", "ledger.py"]}}}]}))
    await scheduler.reconcile_once(api.store)
    ledger = {i["metadata"]["name"]: i["spec"]["node"]
              for i in (await ok(api.http.get("/v1/instances", params={"app": "ledger"})))["items"]}
    [(stranded, lost)] = [(i, n) for i, n in ledger.items() if n == "n-a1"] or [sorted(ledger.items())[0]]
    advance(api, monkeypatch, 5.0)
    await heartbeat(agent, api, *[n for n in NODES if n != lost])
    await node_lifecycle.reconcile_once(api.store)
    await scheduler.reconcile_once(api.store)
    app = await ok(api.http.get("/v1/apps/ledger"))
    assert f"{stranded} waits for node {lost} (NotReady)" in app["status"]["message"]
    assert "ballast instance move" in app["status"]["message"]
    assert (await ok(api.http.get(f"/v1/instances/{stranded}")))["spec"]["node"] == lost, "not moved by itself"

    await ok(api.http.post("/v1/users", json={"name": "otto", "role": "operator"}), 201)
    operator = api.as_((await ok(api.http.post("/v1/tokens", json={"user": "otto"}), 201))["token"])
    assert (await operator.post(f"/v1/instances/{stranded}/move", json={})).status_code == 403
    r = await api.http.post(f"/v1/instances/{stranded}/move", json={"node": "n-b1"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "node", r.text
    r = await api.http.post(f"/v1/instances/{stranded}/move", json={"node": "bad name!"})
    assert r.status_code == 422, r.text
    assert (await ok(api.http.get(f"/v1/instances/{stranded}")))["spec"]["node"] == lost, "a refusal changes nothing"
    moved = await ok(api.http.post(f"/v1/instances/{stranded}/move", json={}))
    assert moved["from"] == lost and moved["to"] != lost
    inst = await ok(api.http.get(f"/v1/instances/{stranded}"))
    assert (inst["spec"]["node"], inst["status"]["phase"]) == (moved["to"], "Pending")
    audit = (await ok(api.http.get("/v1/audit", params={"resource": f"Instance/{stranded}"})))["items"]
    assert [a["action"] for a in audit] == ["instance.move"] and audit[0]["detail"]["withData"] is False
    r = await api.http.post(f"/v1/instances/{stranded}/move", json={})
    assert r.status_code == 409 and "drain the node" in r.json()["message"], r.text


async def test_a_degraded_node_is_cordoned_and_evacuated(api: Api) -> None:
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    await agents_run_desired(api, agent)
    skewed = {"clock": time.time() + 9.0, "clockOffsetSeconds": 9.0, "clockUncertaintySeconds": 0.01,
              "dataDirFreeBytes": 10 * 2**30, "dataDirTotalBytes": 20 * 2**30}
    await heartbeat(agent, api, "n-b2", conditions=skewed)
    node = await ok(api.http.get("/v1/nodes/n-b2"))
    assert node["status"]["conditions"]["clockOffsetSeconds"] > 8
    await node_lifecycle.reconcile_once(api.store)
    node = await ok(api.http.get("/v1/nodes/n-b2"))
    assert (node["status"]["state"], node["status"]["cordoned"]) == ("Degraded", True)
    assert "clock off by" in node["status"]["stateReason"]
    assert (await node_actions(api, "n-b2"))[-3:] == ["node.degraded", "node.drain", "node.cordon"]
    release = await ok(api.http.get("/v1/apps/shop/release"))
    assert release["kind"] == "evacuate"

    r = await agent.post("/v1/nodes/n-b2/status", json={"instances": [], "conditions": {**skewed,
                                                                                        "dataDirFreeBytes": -1}})
    assert r.status_code == 422 and "dataDirFreeBytes" in r.text, r.text


async def test_instances_leave_their_cell_only_for_the_apps_failover_cells(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """n-a1 dies and n-a2 is full: without `failover` the cell-a instances stay unplaced in cell-a (and the app
    says so); with `failover: {cells: [cell-b]}` they run in cell-b until cell-a can hold them again."""
    await shop_at_revision_1_with_revision_2_recorded(api)
    agent = Fleet(api)

    def app(name: str, **extra: Any) -> dict[str, Any]:
        return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name},
                "spec": {"cells": {"cell-a": 2}, "template": {"command": ["python3", "pay.py"],
                                                              "resources": {"cpu": "3"}}, **extra}}
    r = await api.http.post("/v1/apply", json={"items": [app("pay", failover={"cells": ["cell-z"]})]})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "items[0].spec.failover.cells[0]", r.text
    await ok(api.http.post("/v1/apply", json={"items": [app("pay", failover={"cells": ["cell-b"]}), app("fee")]}))
    await scheduler.reconcile_once(api.store)

    def spread(items: list[dict[str, Any]], name: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in items:
            if i["spec"]["app"] == name and i["spec"]["desired"] == "running":
                out[i["spec"]["cell"]] = out.get(i["spec"]["cell"], 0) + 1
        return out
    items = (await ok(api.http.get("/v1/instances")))["items"]
    assert spread(items, "pay") == spread(items, "fee") == {"cell-a": 2}
    advance(api, monkeypatch, 5.0)
    await heartbeat(agent, api, "n-a2", "n-b1", "n-b2")
    await node_lifecycle.reconcile_once(api.store)
    await scheduler.reconcile_once(api.store)
    items = (await ok(api.http.get("/v1/instances")))["items"]
    pay, fee = await ok(api.http.get("/v1/apps/pay")), await ok(api.http.get("/v1/apps/fee"))
    lost = 2 - sum(1 for i in items if i["spec"]["app"] == "fee" and i["spec"]["desired"] == "running")
    assert lost >= 1, "the test needs an instance on n-a1"
    assert spread(items, "fee") == {"cell-a": 2 - lost} and fee["status"]["unplaced"][0]["cell"] == "cell-a"
    assert spread(items, "pay") == {"cell-a": 2 - lost, "cell-b": lost}
    assert pay["status"]["message"].startswith("cells short of capacity run instances in failover cells")
