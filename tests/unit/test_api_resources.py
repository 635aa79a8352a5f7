"""Spec of the resource API over both stores: apply, reads, deletes, scheduling and the agent endpoints."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from ballast.controllers.scheduler import reconcile_once
from ballast.controllers import endpoints as registry_controller
from ballast.cli.output import COLUMNS
from ballast.core.manifests import API_VERSION
from ballast.core.nodes import NODE_TIMEOUT_SECONDS
from tests.conftest import Api, Fleet

TEMPLATE = {"command": ["python", "-m", "shop"], "args": ["--port", "0"]}


def cell(name: str, zone: str | None = None) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": name}, "spec": {"zone": zone or f"z-{name}"}}


def app(name: str = "shop", *, cells: dict[str, int] | None = None, replicas: int | None = None,
        template: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": template or TEMPLATE}
    if cells is not None:
        spec["cells"] = cells
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": name}, "spec": spec}


async def apply_ok(api: Api, *docs: dict[str, Any]) -> list[dict[str, Any]]:
    r = await api.http.post("/v1/apply", json={"items": list(docs)})
    assert r.status_code == 200, r.text
    return r.json()["results"]  # type: ignore[no-any-return]


async def token_for(api: Api, user: str, role: str, apps: list[str] | None = None) -> str:
    r = await api.http.post("/v1/users", json={"name": user, "role": role, "apps": apps})
    assert r.status_code == 201, r.text
    r = await api.http.post("/v1/tokens", json={"user": user, "name": f"{user}-test"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def register_nodes(api: Api, nodes: dict[str, str]) -> Fleet:
    """Register {node: cell}, each node with its own credential; return them (a Fleet)."""
    agent = Fleet(api)
    for i, (name, cell_name) in enumerate(sorted(nodes.items()), start=1):
        r = await agent.put(f"/v1/nodes/{name}", json={"cell": cell_name, "ip": f"10.0.0.{i}", "cpuMillis": 8000,
                                                       "memoryBytes": 16 * 2**30, "agentVersion": "test"})
        assert r.status_code == 200, r.text
    return agent


async def instances_of(api: Api, app_name: str) -> list[dict[str, Any]]:
    r = await api.http.get("/v1/instances", params={"app": app_name})
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


async def get_json(api: Api, path: str) -> dict[str, Any]:
    r = await api.http.get(path)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- apply -----------------------------------------------------------------------------------------------------------


async def test_apply_is_idempotent_and_revisions_follow_the_template(api: Api) -> None:
    """Re-applying changes nothing; only template changes make revisions, and identical templates share one."""
    assert await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 2})) == [
        {"kind": "Cell", "name": "cell-a", "outcome": "created"},
        {"kind": "AppService", "name": "shop", "outcome": "created", "revision": 1}]
    app_rv = (await get_json(api, "/v1/apps/shop"))["metadata"]["resourceVersion"]

    assert await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 2})) == [
        {"kind": "Cell", "name": "cell-a", "outcome": "unchanged"},
        {"kind": "AppService", "name": "shop", "outcome": "unchanged", "revision": 1}]
    shop = await get_json(api, "/v1/apps/shop")
    assert shop["metadata"]["generation"] == 1
    assert shop["status"]["latestRevision"] == 1
    assert [r["metadata"]["number"] for r in (await get_json(api, "/v1/apps/shop/revisions"))["items"]] == [1]
    assert shop["metadata"]["resourceVersion"] == app_rv

    changed = {**TEMPLATE, "args": ["--port", "0", "--verbose"]}
    [_, result] = await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 2}, template=changed))
    assert result == {"kind": "AppService", "name": "shop", "outcome": "configured", "revision": 2}
    shop = await get_json(api, "/v1/apps/shop")
    assert (shop["metadata"]["generation"], shop["status"]["latestRevision"]) == (2, 2)

    [_, result] = await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 5}, template=changed))
    assert result == {"kind": "AppService", "name": "shop", "outcome": "configured", "revision": 2}
    shop = await get_json(api, "/v1/apps/shop")
    assert (shop["metadata"]["generation"], shop["status"]["latestRevision"]) == (3, 2)
    assert shop["spec"]["cells"] == {"cell-a": 5}

    [_, result] = await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 5}))
    assert result == {"kind": "AppService", "name": "shop", "outcome": "configured", "revision": 1}
    shop = await get_json(api, "/v1/apps/shop")
    assert (shop["metadata"]["generation"], shop["status"]["latestRevision"]) == (4, 1)
    revisions = (await get_json(api, "/v1/apps/shop/revisions"))["items"]
    assert [r["metadata"]["number"] for r in revisions] == [1, 2]
    assert revisions[0]["spec"]["template"]["args"] == TEMPLATE["args"]


async def test_dry_run_reports_outcomes_but_stores_nothing(api: Api) -> None:
    """A dry run answers what would happen and leaves cells and apps as they were."""
    r = await api.http.post("/v1/apply", json={"items": [cell("cell-a"), app(cells={"cell-a": 1})], "dryRun": True})
    assert r.status_code == 200, r.text
    assert [x["outcome"] for x in r.json()["results"]] == ["created", "created"]
    assert (await get_json(api, "/v1/cells"))["items"] == []
    assert (await get_json(api, "/v1/apps"))["items"] == []


async def test_one_bad_document_stores_nothing(api: Api) -> None:
    """A file whose second document is invalid is refused whole, naming items[1], and nothing changes."""
    await apply_ok(api, cell("cell-a"))
    cells_before = await get_json(api, "/v1/cells")
    r = await api.http.post("/v1/apply", json={"items": [
        cell("cell-b"),
        app(cells={"cell-a": -1}),
        app("pay", cells={"cell-a": 1}),
    ]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "InvalidInput" and "nothing was applied" in body["message"]
    assert [(p["path"], p["value"]) for p in body["problems"]] == [("items[1].spec.cells.cell-a", -1)]
    assert "greater than or equal to 0" in body["problems"][0]["expected"]
    assert await get_json(api, "/v1/cells") == cells_before
    assert (await get_json(api, "/v1/apps"))["items"] == []


async def test_unknown_cell_reference_is_refused_with_its_path(api: Api) -> None:
    """An AppService naming a cell that does not exist is a 422 at items[i].spec.cells.<cell>; nothing is stored."""
    await apply_ok(api, cell("cell-a"))
    r = await api.http.post("/v1/apply", json={"items": [cell("cell-b"), app(cells={"cell-b": 1, "cell-z": 2})]})
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "items[1].spec.cells.cell-z"
    assert problem["value"] == "cell-z"
    assert problem["expected"] == "an existing cell (one of: cell-a, cell-b)"
    assert [c["metadata"]["name"] for c in (await get_json(api, "/v1/cells"))["items"]] == ["cell-a"]
    assert (await get_json(api, "/v1/apps"))["items"] == []


async def test_cell_defined_in_the_same_file_may_be_referenced(api: Api) -> None:
    """A Cell in the same file counts as existing, even when it comes after the app that uses it."""
    results = await apply_ok(api, app(cells={"cell-new": 1}), cell("cell-new"))
    assert [(x["kind"], x["outcome"]) for x in results] == [("AppService", "created"), ("Cell", "created")]


# --- reads and routing -----------------------------------------------------------------------------------------------


# Routing answers are tables checked in one test each: a fresh store per row would only repeat the setup.
UNKNOWN_READS = [
    ("/v1/apps/nope", "app 'nope' not found"),
    ("/v1/apps/nope/revisions", "app 'nope' not found"),
    ("/v1/apps/nope/revisions/1", "app 'nope' not found"),
    ("/v1/cells/nope", "cell 'nope' not found"),
    ("/v1/instances/nope-123", "instance 'nope-123' not found"),
    ("/v1/nodes/nope", "node 'nope' not found"),
    ("/v1/nothing-here", "no such route"),
    ("/v2/apps", "no such route"),
]
UNKNOWN_DELETES = ["/v1/apps/nope", "/v1/cells/nope", "/v1/nodes/nope", "/v1/users/nope", "/v1/tokens/tok_nope"]
WRONG_VERBS = [
    ("PATCH", "/v1/apps"),
    ("DELETE", "/v1/apps"),
    ("PUT", "/v1/apply"),
    ("GET", "/v1/apply"),
    ("POST", "/v1/cells/cell-a"),
    ("PATCH", "/v1/nodes/n1"),
]


async def test_unknown_things_are_404_json(api: Api) -> None:
    """Reading something that does not exist answers 404 with a JSON message saying what was missing."""
    for path, mentions in UNKNOWN_READS:
        r = await api.http.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"].startswith("application/json"), path
        assert mentions in r.json()["message"], (path, r.text)


async def test_deleting_unknown_things_is_404_json(api: Api) -> None:
    """Deleting something that does not exist answers 404 with a JSON message."""
    for path in UNKNOWN_DELETES:
        r = await api.http.delete(path)
        assert r.status_code == 404, (path, r.text)
        assert "not found" in r.json()["message"], (path, r.text)


async def test_wrong_verb_is_405_json(api: Api) -> None:
    """A known route called with a verb it does not serve answers 405 in JSON, never 500."""
    for method, path in WRONG_VERBS:
        r = await api.http.request(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.json()["error"] == "HTTPError", (method, path)


async def test_unknown_revision_of_existing_app_is_404(api: Api) -> None:
    """An app's revision that was never recorded is a 404 naming the number."""
    await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 1}))
    r = await api.http.get("/v1/apps/shop/revisions/7")
    assert r.status_code == 404 and r.json()["message"] == "app 'shop' has no revision 7"


# --- deletes ---------------------------------------------------------------------------------------------------------


async def test_deleting_an_app_marks_its_instances_deleted(api: Api) -> None:
    """DELETE of an app retires every instance (desired=deleted) and the scheduler does not bring them back."""
    await apply_ok(api, cell("cell-a"), cell("cell-b"), app(cells={"cell-a": 2, "cell-b": 1}),
                   app("pay", cells={"cell-a": 1}))
    await register_nodes(api, {"n-a1": "cell-a", "n-b1": "cell-b"})
    assert await reconcile_once(api.store) == 4
    assert {i["spec"]["desired"] for i in await instances_of(api, "shop")} == {"running"}

    r = await api.http.delete("/v1/apps/shop")
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted": "AppService/shop", "instancesStopping": 3}

    shop = await instances_of(api, "shop")
    assert len(shop) == 3 and {i["spec"]["desired"] for i in shop} == {"deleted"}
    assert [i["spec"]["desired"] for i in await instances_of(api, "pay")] == ["running"]
    assert (await api.http.get("/v1/apps/shop")).status_code == 404
    assert await reconcile_once(api.store) == 0
    assert {i["spec"]["desired"] for i in await instances_of(api, "shop")} == {"deleted"}


async def test_deleting_a_cell_in_use_is_a_conflict_naming_the_user(api: Api) -> None:
    """A cell an app still places into cannot be deleted: 409 naming the app; an unused cell can."""
    await apply_ok(api, cell("cell-a"), cell("cell-b"), cell("cell-c"), app("pay", cells={"cell-b": 1, "cell-c": 0}))
    r = await api.http.delete("/v1/cells/cell-b")
    assert r.status_code == 409, r.text
    assert r.json()["message"] == "cell 'cell-b' is used by apps: pay"
    r = await api.http.delete("/v1/cells/cell-c")
    assert r.status_code == 409 and "pay" in r.json()["message"]

    r = await api.http.delete("/v1/cells/cell-a")
    assert r.status_code == 200, r.text
    assert [c["metadata"]["name"] for c in (await get_json(api, "/v1/cells"))["items"]] == ["cell-b", "cell-c"]


async def test_deleting_a_cell_with_nodes_is_a_conflict_naming_them(api: Api) -> None:
    """A cell that still has nodes cannot be deleted: 409 naming the nodes."""
    await apply_ok(api, cell("cell-a"))
    await register_nodes(api, {"n-a1": "cell-a", "n-a2": "cell-a"})
    r = await api.http.delete("/v1/cells/cell-a")
    assert r.status_code == 409, r.text
    assert r.json()["message"] == "cell 'cell-a' still has nodes: n-a1, n-a2"


# --- scheduling through the API --------------------------------------------------------------------------------------


NODES = {"n-a1": "cell-a", "n-a2": "cell-a", "n-b1": "cell-b", "n-b2": "cell-b"}


async def test_replicas_spread_evenly_over_cells_and_never_cross_them(api: Api) -> None:
    """10 replicas over two cells of two nodes each land 5 per cell, on that cell's nodes, with full status."""
    await apply_ok(api, cell("cell-a"), cell("cell-b"), app(replicas=10))
    await register_nodes(api, NODES)
    node_ip = {n["metadata"]["name"]: n["spec"]["ip"] for n in (await get_json(api, "/v1/nodes"))["items"]}
    assert await reconcile_once(api.store) == 10
    assert await reconcile_once(api.store) == 0

    items = await instances_of(api, "shop")
    assert len(items) == 10
    assert Counter(i["status"]["cell"] for i in items) == {"cell-a": 5, "cell-b": 5}
    for i in items:
        status = i["status"]
        assert NODES[status["node"]] == status["cell"], f"{i['metadata']['name']} placed across cells"
        assert status["ip"] == node_ip[status["node"]]
        assert status["zone"] == f"z-{status['cell']}"
        assert (status["revision"], status["phase"], status["restarts"], status["ready"]) == (1, "Pending", 0, False)
        assert "port" in status and status["port"] is None
        assert i["spec"] == {"app": "shop", "revision": 1, "node": status["node"], "cell": status["cell"],
                             "desired": "running"}
    per_node = Counter(i["status"]["node"] for i in items)
    assert sorted(per_node.values()) == [2, 2, 3, 3]

    shop = await get_json(api, "/v1/apps/shop")
    assert shop["status"]["instances"] == 10
    assert {c: v["total"] for c, v in shop["status"]["cells"].items()} == {"cell-a": 5, "cell-b": 5}


async def test_fixed_port_places_one_instance_per_node_and_reports_the_rest(api: Api) -> None:
    """With a fixed port each node takes one instance; the app's status says how many are unplaced and why."""
    await apply_ok(api, cell("cell-a"), cell("cell-b"), app(replicas=6, template={**TEMPLATE, "port": 8080}))
    await register_nodes(api, NODES)
    await reconcile_once(api.store)
    items = await instances_of(api, "shop")
    assert sorted(i["status"]["node"] for i in items) == sorted(NODES)
    assert {i["status"]["port"] for i in items} == {8080}
    unplaced = (await get_json(api, "/v1/apps/shop"))["status"]["unplaced"]
    assert sum(u["count"] for u in unplaced) == 2
    assert all("fixed port 8080" in u["reason"] for u in unplaced)


# --- agent endpoints -------------------------------------------------------------------------------------------------


async def _one_placed_instance(api: Api) -> tuple[httpx.AsyncClient, dict[str, Any]]:
    await apply_ok(api, cell("cell-a"), app(cells={"cell-a": 1}))
    agent = await register_nodes(api, {"n-a1": "cell-a"})
    await reconcile_once(api.store)
    [inst] = await instances_of(api, "shop")
    return agent, inst


def report(instance_id: str, phase: str, **fields: Any) -> dict[str, Any]:
    return {"instances": [{"id": instance_id, "phase": phase, "ready": False, "restarts": 0, **fields}]}


async def test_status_report_updates_phase_ready_and_port(api: Api) -> None:
    """An agent's status report is what the instance then shows."""
    agent, inst = await _one_placed_instance(api)
    iid = inst["metadata"]["name"]
    r = await agent.post("/v1/nodes/n-a1/status", json=report(iid, "Running", ready=True, port=31001, pid=4242,
                                                              restarts=1, message="up"))
    assert r.status_code == 200, r.text
    status = (await get_json(api, f"/v1/instances/{iid}"))["status"]
    assert (status["phase"], status["ready"], status["port"], status["pid"], status["restarts"], status["message"]) == (
        "Running", True, 31001, 4242, 1, "up")
    assert (await get_json(api, "/v1/apps/shop"))["status"]["readyInstances"] == 1


async def test_instances_on_a_node_that_stopped_heartbeating_are_ready_unknown_since_its_last_heartbeat(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ready as reported while the node heartbeats; once it has been silent past the node timeout, `ready` is null
    (not the last report) and `readiness` Unknown since the node's last heartbeat, in the API and the CLI's table."""
    agent, inst = await _one_placed_instance(api)
    iid = inst["metadata"]["name"]
    await agent.post("/v1/nodes/n-a1/status", json=report(iid, "Running", ready=True, port=31001))
    status = (await get_json(api, f"/v1/instances/{iid}"))["status"]
    assert (status["ready"], status["readiness"], status["readinessSince"]) == (True, "True", None)

    node = await get_json(api, "/v1/nodes/n-a1")
    silent_since = api.store.clock()
    monkeypatch.setattr(api.store, "clock", lambda: silent_since + NODE_TIMEOUT_SECONDS + 5)
    assert (await get_json(api, "/v1/nodes/n-a1"))["status"]["ready"] is False
    [listed] = (await get_json(api, "/v1/instances?node=n-a1"))["items"]
    status = (await get_json(api, f"/v1/instances/{iid}"))["status"]
    assert listed["status"] == status
    assert (status["phase"], status["ready"], status["readiness"], status["readinessSince"]) == (
        "Running", None, "Unknown", node["status"]["lastHeartbeat"])
    row = COLUMNS["instances"][1](listed)
    assert row[COLUMNS["instances"][0].index("READY")] == f"Unknown since {node['status']['lastHeartbeat'][11:19]}"


async def test_status_report_of_unknown_instances_is_ignored_and_unknown_node_is_404(api: Api) -> None:
    """Reports about instances the node does not hold change nothing; a node never registered gets 404."""
    agent, inst = await _one_placed_instance(api)
    r = await agent.post("/v1/nodes/n-a1/status", json=report("ghost-000000", "Running", ready=True))
    assert r.status_code == 200, r.text
    assert (await get_json(api, f"/v1/instances/{inst['metadata']['name']}"))["status"]["phase"] == "Pending"
    r = await agent.post("/v1/nodes/n-zz/status", json=report(inst["metadata"]["name"], "Running"))
    assert r.status_code == 404 and "n-zz" in r.json()["message"]


async def test_status_report_with_an_unknown_phase_is_422(api: Api) -> None:
    """A phase outside the known set is refused, naming the allowed phases."""
    agent, inst = await _one_placed_instance(api)
    r = await agent.post("/v1/nodes/n-a1/status", json=report(inst["metadata"]["name"], "Dancing"))
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["value"] == "Dancing" and "Running" in problem["expected"]


async def test_stopped_report_removes_a_deleted_instance_but_not_a_running_one(api: Api) -> None:
    """"Stopped" for an instance whose app was deleted forgets it; for a running instance it is only a phase."""
    agent, inst = await _one_placed_instance(api)
    iid = inst["metadata"]["name"]
    assert (await agent.post("/v1/nodes/n-a1/status", json=report(iid, "Stopped"))).status_code == 200
    assert (await get_json(api, f"/v1/instances/{iid}"))["status"]["phase"] == "Stopped"

    assert (await api.http.delete("/v1/apps/shop")).status_code == 200
    assert (await agent.post("/v1/nodes/n-a1/status", json=report(iid, "Stopped"))).status_code == 200
    held = await get_json(api, f"/v1/instances/{iid}")
    assert (held["spec"]["desired"], held["status"]["grantedDesired"]) == ("deleted", "running"), \
        "until the registry grants the deletion, a Stopped report is only a phase"
    await registry_controller.reconcile_once(api.store)  # never routable: granted without a drain
    assert (await get_json(api, f"/v1/instances/{iid}"))["status"]["grantedDesired"] == "deleted"
    assert (await agent.post("/v1/nodes/n-a1/status", json=report(iid, "Stopping"))).status_code == 200
    assert (await agent.post("/v1/nodes/n-a1/status", json=report(iid, "Stopped"))).status_code == 200
    assert (await api.http.get(f"/v1/instances/{iid}")).status_code == 404
    assert await instances_of(api, "shop") == []


async def test_only_the_nodes_own_credential_may_use_its_node_endpoints(api: Api) -> None:
    """Viewers, operators and admins may not register a node, report status or poll assignments; the node may."""
    agent, inst = await _one_placed_instance(api)
    body = {"cell": "cell-a", "ip": "10.0.0.9", "cpuMillis": 1000, "memoryBytes": 2**30}
    status = report(inst["metadata"]["name"], "Running")
    for user, role in [("vera", "viewer"), ("otto", "operator"), ("ada", "admin")]:
        other = api.as_(await token_for(api, user, role))
        r = await other.put("/v1/nodes/n-x", json=body)
        assert r.status_code == 403 and r.json()["message"].startswith(f"user {user!r} may not act as node 'n-x'")
        assert (await other.post("/v1/nodes/n-a1/status", json=status)).status_code == 403
        assert (await other.get("/v1/nodes/n-a1/assignments")).status_code == 403
    assert (await agent.get("/v1/nodes/n-a1/assignments")).status_code == 200
    assert (await agent.post("/v1/nodes/n-a1/status", json=status)).status_code == 200


async def test_assignments_long_poll_returns_at_timeout_when_nothing_changes(api: Api) -> None:
    """With the current fingerprint as `known`, the poll ends only at its timeout and returns the same assignments,
    even when unrelated writes happen meanwhile."""
    agent, inst = await _one_placed_instance(api)
    first = await agent.get("/v1/nodes/n-a1/assignments", params={"timeout": 0})
    assert first.status_code == 200, first.text
    known = first.json()["fingerprint"]
    assert [a["id"] for a in first.json()["instances"]] == [inst["metadata"]["name"]]
    assert first.json()["instances"][0]["template"]["command"] == TEMPLATE["command"]

    poll = asyncio.create_task(agent.get("/v1/nodes/n-a1/assignments", params={"known": known, "timeout": 1}))
    await apply_ok(api, cell("cell-unrelated"))
    r = await asyncio.wait_for(poll, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == first.json()


async def test_assignments_long_poll_wakes_when_the_scheduler_places_on_the_node(api: Api,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll already waiting with a known fingerprint answers with the new instance as soon as it is placed,
    well before its timeout."""
    await apply_ok(api, cell("cell-a"))
    agent = await register_nodes(api, {"n-a1": "cell-a"})
    empty = (await agent.get("/v1/nodes/n-a1/assignments")).json()
    assert empty["instances"] == []

    waiting = asyncio.Event()
    real_wait = api.store.wait_for_topics

    async def observed_wait(topics: frozenset[str], after: int, timeout: float) -> int:
        waiting.set()
        return int(await real_wait(topics, after, timeout))

    monkeypatch.setattr(api.store, "wait_for_topics", observed_wait)
    poll_timeout = 60  # the route's maximum; the poll must come back long before it
    poll = asyncio.create_task(agent.get("/v1/nodes/n-a1/assignments",
                                         params={"known": empty["fingerprint"], "timeout": poll_timeout}))
    await asyncio.wait_for(waiting.wait(), timeout=10)
    assert not poll.done()

    await apply_ok(api, app(cells={"cell-a": 1}))
    await reconcile_once(api.store)
    [inst] = await instances_of(api, "shop")

    r = await asyncio.wait_for(poll, timeout=poll_timeout / 4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fingerprint"] != empty["fingerprint"]
    assert [(a["id"], a["app"], a["desired"], a["revision"]) for a in body["instances"]] == [
        (inst["metadata"]["name"], "shop", "running", 1)]


async def test_assignments_of_unknown_node_is_404(api: Api) -> None:
    """Polling for a node that never registered is a 404, not an endless wait."""
    agent = await register_nodes(api, {})
    r = await agent.get("/v1/nodes/n-zz/assignments", params={"timeout": 1})
    assert r.status_code == 404 and "n-zz" in r.json()["message"]
