"""Spec of the service registry through the API, over both stores: snapshots, acknowledgements, the drain gate.

Agents and the gateway are simulated by their requests; the registry controller runs one pass at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ballast.controllers import endpoints as registry_controller
from ballast.controllers import releases as release_engine
from ballast.controllers import scheduler
from ballast.core.manifests import API_VERSION
from tests.conftest import Api, Fleet

NODES = {"n-a1": ("cell-a", "10.0.0.1"), "n-b1": ("cell-b", "10.0.0.2")}


def shop(revision_marker: str = "1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
            "spec": {"cells": {"cell-a": 1, "cell-b": 1}, "expose": {"host": "shop.local", "path": "/"},
                     "template": {"command": ["python", "-m", "shop"], "env": {"V": revision_marker}}, **spec}}


async def ok(response: Any, status: int = 200) -> Any:
    r = await response
    assert r.status_code == status, r.text
    return r.json()


async def world(api: Api) -> Fleet:
    """Two cells, a node in each, a gateway, and shop placed (one instance per cell) and reported running."""
    cells = [{"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": c}, "spec": {"zone": f"z-{c}"}}
             for c in ("cell-a", "cell-b")]
    await ok(api.http.post("/v1/apply", json={"items": [*cells, shop()]}))
    agent = Fleet(api)   # each node and the gateway with its own credential
    for name, (cell, ip) in NODES.items():
        await ok(agent.put(f"/v1/nodes/{name}", json={"cell": cell, "ip": ip, "cpuMillis": 4000, "memoryBytes": 2**33}))
    await ok(agent.put("/v1/gateways/edge", json={"address": "127.0.0.1:8080"}))
    assert await scheduler.reconcile_once(api.store) == 2
    await report(api, agent)
    return agent


async def instances(api: Api) -> list[dict[str, Any]]:
    return (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]  # type: ignore[no-any-return]


async def report(api: Api, agent: httpx.AsyncClient, *, ready: bool = True) -> None:
    """Each node reports its instances running the revision they were granted."""
    for k, i in enumerate(await instances(api)):
        body = {"instances": [{"id": i["metadata"]["name"], "phase": "Running", "ready": ready, "restarts": 0,
                               "revision": i["status"]["grantedRevision"], "port": 20000 + k}]}
        await ok(agent.post(f"/v1/nodes/{i['spec']['node']}/status", json=body))


async def ack_all(agent: httpx.AsyncClient, generation: int, *, skip: str | None = None) -> None:
    for name in NODES:
        if name != skip:
            await ok(agent.post(f"/v1/nodes/{name}/ack", json={"generation": generation}))
    if skip != "edge":
        await ok(agent.post("/v1/gateways/edge/ack", json={"generation": generation}))


async def endpoints(api: Api) -> dict[str, dict[str, Any]]:
    items = (await ok(api.http.get("/v1/apps/shop/endpoints")))["items"]
    return {e["metadata"]["name"]: e for e in items}


async def test_the_snapshot_holds_routes_and_endpoints_and_acks_make_them_serving(api: Api) -> None:
    agent = await world(api)
    assert await registry_controller.reconcile_once(api.store) > 0
    snap = await ok(agent.get("/v1/registry"))
    [service] = snap["services"]
    assert (service["name"], service["mesh"], service["routes"]) == ("shop", True, [{"host": "shop.local",
                                                                                     "path": "/"}])
    assert sorted((e["cell"], e["state"]) for e in service["endpoints"]) == [("cell-a", "ready"), ("cell-b", "ready")]
    eps = await endpoints(api)
    assert all(e["status"]["pending"] == ["gateway/edge", "mesh/n-a1", "mesh/n-b1"] for e in eps.values()), eps

    await ack_all(agent, snap["generation"], skip="edge")
    await registry_controller.reconcile_once(api.store)
    eps = await endpoints(api)
    assert all(e["status"]["pending"] == ["gateway/edge"] for e in eps.values()), "the gateway routes to it too"
    await ack_all(agent, snap["generation"])
    await registry_controller.reconcile_once(api.store)
    eps = await endpoints(api)
    assert all(e["status"]["acknowledgedBy"] == ["gateway/edge", "mesh/n-a1", "mesh/n-b1"]
               and not e["status"]["pending"] for e in eps.values())
    gateway = (await ok(api.http.get("/v1/gateways/edge")))
    assert gateway["status"]["inSync"] and gateway["status"]["url"] == "http://127.0.0.1:8080"


async def test_a_change_is_granted_only_after_every_component_acknowledged_the_drain(api: Api) -> None:
    """Revision 2 for an instance: draining first; not granted while the gateway has not acknowledged; granted
    after; the agent then runs revision 2 and the endpoint is ready again at a newer generation."""
    agent = await world(api)
    await registry_controller.reconcile_once(api.store)
    await ack_all(agent, (await ok(agent.get("/v1/registry")))["generation"])
    await registry_controller.reconcile_once(api.store)
    await ok(api.http.post("/v1/apply", json={"items": [shop("2")]}))
    await ok(api.http.post("/v1/apps/shop/releases", json={"strategy": {"groups": 1}}), 201)
    await release_engine.reconcile_once(api.store)
    changed = [i for i in await instances(api) if i["spec"]["revision"] == 2]
    assert changed, "the release set an intent"
    target = changed[0]["metadata"]["name"]
    assert changed[0]["status"]["grantedRevision"] == 1, "an intent is not a grant"

    await registry_controller.reconcile_once(api.store)
    draining = (await endpoints(api))[target]
    assert draining["status"]["state"] == "draining"
    await ack_all(agent, (await ok(agent.get("/v1/registry")))["generation"], skip="edge")
    await registry_controller.reconcile_once(api.store)
    granted = {i["metadata"]["name"]: i for i in await instances(api)}[target]
    assert granted["status"]["grantedRevision"] == 1, "the gateway may still route to it"

    await ok(agent.post("/v1/gateways/edge/ack", json={"generation": draining["status"]["generation"]}))
    await registry_controller.reconcile_once(api.store)
    granted = {i["metadata"]["name"]: i for i in await instances(api)}[target]
    assert granted["status"]["grantedRevision"] == 2
    assignments = (await ok(agent.get(f"/v1/nodes/{granted['spec']['node']}/assignments")))["instances"]
    assert [a["revision"] for a in assignments if a["id"] == target] == [2], "the agent is told the grant"
    grants = [a for a in (await ok(api.http.get("/v1/audit", params={"limit": 100})))["items"]
              if a["action"] == "drain.grant"]
    assert any(g["instance"] == target and g["drainedFirst"] for a in grants for g in a["detail"]["grants"])

    await report(api, agent)
    await registry_controller.reconcile_once(api.store)
    back = (await endpoints(api))[target]
    assert (back["status"]["state"], back["spec"]["revision"]) == ("ready", 2)
    assert back["status"]["generation"] > draining["status"]["generation"]


async def test_a_silent_component_is_named_and_never_skipped(api: Api) -> None:
    """With ackTimeoutSeconds 1, a node that does not acknowledge the drain is named on the endpoint and the
    audit log, the change stays ungranted, and the release pauses naming the component."""
    agent = await world(api)
    await registry_controller.reconcile_once(api.store)
    await ack_all(agent, (await ok(agent.get("/v1/registry")))["generation"])
    await registry_controller.reconcile_once(api.store)
    await ok(api.http.post("/v1/apply", json={"items": [shop("2", traffic={"ackTimeoutSeconds": 1})]}))
    await ok(api.http.post("/v1/apps/shop/releases", json={"strategy": {"groups": 1}}), 201)
    await release_engine.reconcile_once(api.store)
    await registry_controller.reconcile_once(api.store)
    await ack_all(agent, (await ok(agent.get("/v1/registry")))["generation"], skip="n-b1")
    await asyncio.sleep(1.1)
    await registry_controller.reconcile_once(api.store)
    eps = await endpoints(api)
    assert all(e["status"]["state"] == "draining" and "mesh/n-b1" in e["status"]["note"] for e in eps.values()), eps
    assert all(i["status"]["grantedRevision"] == 1 for i in await instances(api)), \
        "nothing changes while a component may still route to it"
    audit = (await ok(api.http.get("/v1/audit", params={"limit": 50})))["items"]
    notes = [a["detail"]["note"] for a in audit if a["action"] == "endpoint.ack-timeout"]
    assert len(notes) == 2 and all("mesh/n-b1" in n for n in notes), notes
    await release_engine.reconcile_once(api.store)
    status = await ok(api.http.get("/v1/apps/shop/release"))
    assert status["phase"] == "Paused" and "mesh/n-b1" in status["reason"], status["reason"]


async def test_registry_requests_are_for_infrastructure_and_checked(api: Api) -> None:
    agent = await world(api)
    await ok(api.http.post("/v1/users", json={"name": "vera", "role": "viewer"}), 201)
    viewer = api.as_((await ok(api.http.post("/v1/tokens", json={"user": "vera"}), 201))["token"])
    assert (await viewer.get("/v1/registry")).status_code == 403
    assert (await viewer.post("/v1/nodes/n-a1/ack", json={"generation": 0})).status_code == 403
    assert (await viewer.get("/v1/gateways")).status_code == 200, "topology is readable"
    r = await agent.post("/v1/nodes/n-a1/ack", json={"generation": 10**12})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "generation", r.text
    assert (await agent.post("/v1/nodes/ghost/ack", json={"generation": 0})).status_code == 404
    assert (await agent.post("/v1/gateways/ghost/ack", json={"generation": 0})).status_code == 404
    r = await agent.put("/v1/gateways/edge", json={"address": "not-an-ip:80"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "address", r.text
    assert (await api.http.delete("/v1/gateways/ghost")).status_code == 404
    await ok(api.http.delete("/v1/gateways/edge"))
    assert (await api.http.get("/v1/gateways/edge")).status_code == 404
    actions = [a["action"] for a in (await ok(api.http.get("/v1/audit", params={"limit": 100})))["items"]]
    assert "gateway.register" in actions and "gateway.delete" in actions


async def test_the_snapshot_long_poll_waits_for_a_new_generation(api: Api) -> None:
    agent = await world(api)
    await registry_controller.reconcile_once(api.store)
    generation = (await ok(agent.get("/v1/registry")))["generation"]
    poll = asyncio.create_task(agent.get("/v1/registry", params={"known": generation, "timeout": 30}))
    await asyncio.sleep(0.3)
    assert not poll.done(), "nothing changed: the poll waits"
    await ok(api.http.delete("/v1/apps/shop"))
    answer = (await asyncio.wait_for(poll, 10)).json()
    assert answer["generation"] > generation
    assert (answer["base"], answer["changed"], answer["removed"]) == (generation, [], ["shop"]), \
        "a component holding a kept generation gets what changed since"
    whole = await ok(agent.get("/v1/registry"))
    assert "base" not in whole and whole["services"] == [] and whole["generation"] == answer["generation"]


async def test_a_report_older_than_one_recorded_changes_nothing(api: Api) -> None:
    """A report that waited in a paused replica's socket arrives after newer ones: its sequence gives it away and
    it is answered without being recorded, so an instance's phase never steps back."""
    agent = await world(api)
    one = (await instances(api))[0]
    node, name = one["spec"]["node"], one["metadata"]["name"]

    def body(sequence: int, phase: str, ready: bool) -> dict[str, Any]:
        return {"sequence": sequence, "instances": [{"id": name, "phase": phase, "ready": ready, "restarts": 0,
                                                     "revision": 1, "port": 20000}]}
    assert (await ok(agent.post(f"/v1/nodes/{node}/status", json=body(2_000, "Unhealthy", False))))["recorded"]
    stale = await ok(agent.post(f"/v1/nodes/{node}/status", json=body(1_000, "Running", True)))
    assert stale["recorded"] is False
    now = next(i for i in await instances(api) if i["metadata"]["name"] == name)
    assert (now["status"]["phase"], now["status"]["ready"]) == ("Unhealthy", False)
    assert (await ok(agent.post(f"/v1/nodes/{node}/status", json=body(2_001, "Running", True))))["recorded"]
    now = next(i for i in await instances(api) if i["metadata"]["name"] == name)
    assert (now["status"]["phase"], now["status"]["ready"]) == ("Running", True)
    node_seen = await ok(api.http.get(f"/v1/nodes/{node}"))
    assert node_seen["status"]["conditions"]["reportSequence"] == 2_001


async def test_components_waking_on_one_change_get_one_snapshot_built_once(api: Api, monkeypatch: Any) -> None:
    """Every traffic component long-polls the registry and all wake on the same change: the snapshot of the new
    generation is built once and encoded once, and each gets the same answer."""
    from ballast.services import endpoints as registry_service
    agent = await world(api)
    await registry_controller.reconcile_once(api.store)
    generation = (await ok(agent.get("/v1/registry")))["generation"]
    builds: list[int] = []
    real = registry_service._snapshot

    async def counted(conn: Any) -> Any:
        builds.append(1)
        await asyncio.sleep(0.05)   # long enough for every waiting poll to arrive while it is built
        return await real(conn)
    monkeypatch.setattr(registry_service, "_snapshot", counted)
    polls = [asyncio.create_task(agent.get("/v1/registry", params={"known": generation, "timeout": 30}))
             for _ in range(5)]
    await asyncio.sleep(0.3)
    await ok(api.http.delete("/v1/apps/shop"))
    answers = [r.content for r in await asyncio.wait_for(asyncio.gather(*polls), 10)]
    assert len(set(answers)) == 1 and b'"removed":["shop"]' in answers[0], answers[0][:200]
    assert len(builds) == 1, f"built {len(builds)} times for one generation"


async def test_a_pass_that_would_see_what_the_last_quiet_one_saw_reads_nothing(api: Api, monkeypatch: Any,
                                                                              store_url: str) -> None:
    """At 10,000 instances a registry pass reads and decides for most of a second. A pass is skipped only while
    nothing it reads has changed: heartbeats do not count, but any other write, another replica's write, and an
    acknowledgement that times out make the next pass read and decide again."""
    from sqlalchemy import update

    from ballast.store.engine import Store
    from ballast.store.schema import instances as instance_rows
    agent = await world(api)
    reads: list[int] = []
    real = registry_controller._read

    async def counted(conn: Any, heard: Any) -> Any:
        reads.append(1)
        return await real(conn, heard)
    monkeypatch.setattr(registry_controller, "_read", counted)

    async def passes() -> int:
        before = len(reads)
        await registry_controller.reconcile_once(api.store)
        return len(reads) - before

    assert await passes() >= 1
    await ack_all(agent, (await ok(agent.get("/v1/registry")))["generation"])
    assert await passes() == 1
    assert await passes() == 0, "nothing changed: the pass reads nothing"
    await report(api, agent)             # a heartbeat with nothing new
    assert await passes() == 0

    await ok(api.http.post("/v1/apply", json={"items": [shop("2", traffic={"ackTimeoutSeconds": 1})]}))
    assert await passes() == 1, "an apply is read"
    await ok(api.http.post("/v1/apps/shop/releases", json={"strategy": {"groups": 1}}), 201)
    await release_engine.reconcile_once(api.store)
    assert await passes() == 2, "the release engine's intent is read, and decided again inside the write"
    await ack_all(agent, (await ok(agent.get("/v1/registry")))["generation"], skip="n-b1")
    assert await passes() == 1
    assert await passes() == 0
    assert all(e["status"]["note"] == "" for e in (await endpoints(api)).values())
    await asyncio.sleep(1.1)             # the pending acknowledgement times out with no write at all
    assert await passes() >= 1
    assert all("mesh/n-b1" in e["status"]["note"] for e in (await endpoints(api)).values())
    await passes()
    assert await passes() == 0

    other = await Store.open(store_url)  # another replica of the same store
    try:
        async with other.write() as tx:
            await tx.conn.execute(update(instance_rows).where(instance_rows.c.node == "n-a1").values(ready=False))
    finally:
        await other.close()
    assert await passes() >= 1, "another replica's write is read"


async def test_the_scheduler_skips_a_pass_only_while_its_inputs_and_the_nodes_readiness_stand_still(
        api: Api, monkeypatch: Any) -> None:
    """The scheduler's pass reads every instance. It is skipped while nothing but heartbeats and acknowledgements
    was written and every node is as ready as before; a node falling silent past its grace (time alone, no write)
    or an apply makes it place again."""
    agent = await world(api)
    runs: list[int] = []
    real = scheduler._pass

    async def counted(store: Any) -> int:
        runs.append(1)
        return await real(store)
    monkeypatch.setattr(scheduler, "_pass", counted)

    async def passes() -> int:
        before = len(runs)
        await scheduler.reconcile_once(api.store)
        return len(runs) - before

    assert await passes() == 1, "the reports since the last pass are read"
    assert await passes() == 0
    await report(api, agent)
    await ok(agent.post("/v1/nodes/n-a1/ack", json={"generation": 0}))
    assert await passes() == 0, "heartbeats and acknowledgements change no placement input"
    api.store.node_grace_seconds = 0.3
    await asyncio.sleep(0.4)             # every node is now silent past its grace: none takes new instances
    assert await passes() == 1
    assert await passes() == 0
    await ok(api.http.post("/v1/apply", json={"items": [shop(cells={"cell-a": 2, "cell-b": 1})]}))
    assert await passes() == 1
    unplaced = (await ok(api.http.get("/v1/apps/shop")))["status"]["unplaced"]
    assert unplaced and unplaced[0]["cell"] == "cell-a", unplaced
