"""Spec of releases through the API over both stores, with the release engine driven in-process.

The app is the issue's example: 10 instances over cell-a and cell-b (5 + 5), four nodes, revision 1 running
everywhere and a changed template recorded as revision 2. Agents are simulated by status reports; the engine
by `ballast.controllers.releases.reconcile_once`, one pass at a time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from ballast.controllers import endpoints as registry_controller
from ballast.controllers import releases as release_engine
from ballast.controllers import scheduler
from ballast.core.manifests import API_VERSION
from tests.conftest import Api, Fleet

TEMPLATE = {"command": ["python", "-m", "shop"], "args": ["--port", "0"]}
NODES = {"n-a1": "cell-a", "n-a2": "cell-a", "n-b1": "cell-b", "n-b2": "cell-b"}
ENGINE = "controller/releases"


def manifests(template: dict[str, Any]) -> list[dict[str, Any]]:
    cells = [{"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": c}, "spec": {"zone": f"z-{c}"}}
             for c in ("cell-a", "cell-b")]
    shop = {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
            "spec": {"cells": {"cell-a": 5, "cell-b": 5}, "template": template}}
    return [*cells, shop]


async def ok(response: Any, status: int = 200) -> Any:
    r = await response
    assert r.status_code == status, r.text
    return r.json()


async def shop_at_revision_1_with_revision_2_recorded(api: Api) -> Fleet:
    """Cells, four nodes, the 5 + 5 app placed and running revision 1; then a changed template (revision 2)."""
    await ok(api.http.post("/v1/apply", json={"items": manifests(TEMPLATE)}))
    agent = Fleet(api)   # each node with its own credential
    for i, (name, cell) in enumerate(sorted(NODES.items()), start=1):
        await ok(agent.put(f"/v1/nodes/{name}", json={"cell": cell, "ip": f"10.0.0.{i}", "cpuMillis": 8000,
                                                      "memoryBytes": 16 * 2**30}))
    assert await scheduler.reconcile_once(api.store) == 10
    await agents_run_desired(api, agent)
    [_, _, result] = (await ok(api.http.post("/v1/apply", json={"items": manifests(
        {**TEMPLATE, "args": ["--port", "0", "--verbose"]})})))["results"]
    assert (result["outcome"], result["revision"]) == ("configured", 2)
    return agent


async def instances(api: Api) -> list[dict[str, Any]]:
    items = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
    return [i for i in items if i["spec"]["desired"] == "running"]


async def desired_at(api: Api, revision: int) -> set[str]:
    """Instances whose desired revision (what the control plane tells agents to run) is `revision`."""
    return {i["metadata"]["name"] for i in await instances(api) if i["spec"]["revision"] == revision}


async def agents_run_desired(api: Api, agent: Fleet) -> None:
    """The data plane settles: the registry grants what the drain protocol allows, every agent runs what it
    was granted (Running and ready; Stopped when retired) and every node's mesh acknowledges the registry."""
    for _ in range(10):
        changed = await registry_controller.reconcile_once(api.store)
        per_node: dict[str, list[dict[str, Any]]] = {}
        items = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
        for k, i in enumerate(sorted(items, key=lambda i: i["metadata"]["name"])):
            retired = i["status"]["grantedDesired"] == "deleted"
            per_node.setdefault(i["spec"]["node"], []).append(
                {"id": i["metadata"]["name"], "phase": "Stopped" if retired else "Running", "ready": not retired,
                 "restarts": 0, "revision": i["status"]["grantedRevision"], "port": 20000 + k})
        for node, reports in per_node.items():
            await ok(agent.post(f"/v1/nodes/{node}/status", json={"instances": reports}))
        changed += await registry_controller.reconcile_once(api.store)
        generation = (await ok(agent.get("/v1/registry")))["generation"]
        for node in NODES:
            await ok(agent.post(f"/v1/nodes/{node}/ack", json={"generation": generation}))
        if not changed and not await registry_controller.reconcile_once(api.store):
            return
    raise AssertionError("the registry did not settle")


async def release_status(api: Api) -> dict[str, Any]:
    return await ok(api.http.get("/v1/apps/shop/release"))  # type: ignore[no-any-return]


async def audit(api: Api) -> list[dict[str, Any]]:
    return (await ok(api.http.get("/v1/audit", params={"limit": 10_000})))["items"]  # type: ignore[no-any-return]


def plan_shape(groups: list[dict[str, Any]]) -> list[tuple[str, dict[str, int]]]:
    return [(g["name"], dict(Counter(s["cell"] for s in g["slots"]))) for g in groups]


def slot_ids(group: dict[str, Any]) -> set[str]:
    return {s["instance"] for s in group["slots"]}


def cells_of(ids: set[str], plan: list[dict[str, Any]]) -> Counter[str]:
    cell = {s["instance"]: s["cell"] for g in plan for s in g["slots"]}
    return Counter(cell[i] for i in ids)


THE_ISSUE_PLAN = [("beta", {"cell-a": 1, "cell-b": 1}), ("group-1", {"cell-a": 2, "cell-b": 2}),
                  ("group-2", {"cell-a": 2, "cell-b": 2})]

# (request body, status, problem path, words in the problem or message): each refused, nothing started.
BAD_STARTS: list[tuple[dict[str, Any], int, str | None, tuple[str, ...]]] = [
    ({"toRevision": 7}, 422, "toRevision", ("[1, 2]",)),
    ({"strategy": {"groups": 0}}, 422, "strategy.groups", ("greater than or equal to 1",)),
    ({"strategy": {"betaSize": 6}}, 422, "strategy.betaSize", ("cell cell-a has only 5",)),
    ({"strategy": {"groupSizes": [2, -1]}}, 422, "strategy.groupSizes[1]", ("greater than or equal to 0",)),
    ({"strategy": {"upgrade": "ordered"}}, 422, "strategy.upgrade", ("ordinal",)),
    ({"strategy": {"pause": "sometimes"}}, 422, "strategy.pause", ()),
    ({"toRevision": 1}, 409, None, ("already runs revision 1",)),
]


async def test_plan_refusals_and_user_actions(api: Api) -> None:
    """The plan is the issue's 1+1 / 2+2 / 2+2 and audits nothing; bad starts change nothing; a second start,
    resuming a running release, pausing twice and a stale expectPhase are 409s naming what is in the way;
    every accepted action is in the history with its actor and on the audit log."""
    await shop_at_revision_1_with_revision_2_recorded(api)
    audited = len(await audit(api))

    preview = await ok(api.http.post("/v1/apps/shop/releases/plan", json={}))
    assert (preview["fromRevision"], preview["toRevision"]) == (1, 2)
    assert plan_shape(preview["groups"]) == THE_ISSUE_PLAN
    assert len(await audit(api)) == audited, "a plan preview must not append to the audit log"

    for body, status, path, words in BAD_STARTS:
        r = await api.http.post("/v1/apps/shop/releases", json=body)
        assert r.status_code == status, (body, r.text)
        answer = r.json()
        if path is not None:
            assert path in [p["path"] for p in answer["problems"]], (body, answer)
        text = answer["message"] + " ".join(p["expected"] for p in answer.get("problems", []))
        for word in words:
            assert word in text, (body, answer)
    assert (await ok(api.http.get("/v1/apps/shop/releases")))["items"] == []
    assert await desired_at(api, 2) == set()
    refused = [a for a in await audit(api) if a["action"] == "POST /v1/apps/shop/releases"]
    assert len(refused) == len(BAD_STARTS) and all(a["result"].startswith("refused: HTTP 4") for a in refused)

    started = await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)
    assert (started["id"], started["fromRevision"], started["toRevision"]) == (1, 1, 2)
    assert plan_shape(started["groups"]) == THE_ISSUE_PLAN

    r = await api.http.post("/v1/apps/shop/releases", json={"toRevision": 2})
    assert r.status_code == 409 and "release 1" in r.json()["message"], r.text
    r = await api.http.post("/v1/apps/shop/release/resume", json={})
    assert r.status_code == 409 and "Running" in r.json()["message"], r.text

    assert (await ok(api.http.post("/v1/apps/shop/release/pause", json={})))["phase"] == "Paused"
    r = await api.http.post("/v1/apps/shop/release/pause", json={})
    assert r.status_code == 409 and "Paused" in r.json()["message"], r.text
    r = await api.http.post("/v1/apps/shop/release/resume", json={"expectPhase": "Running"})
    assert r.status_code == 409 and "Paused" in r.json()["message"], r.text
    assert (await release_status(api))["phase"] == "Paused"
    resumed = await ok(api.http.post("/v1/apps/shop/release/resume", json={"expectPhase": "Paused"}))
    assert (resumed["phase"], resumed["previousPhase"]) == ("Running", "Paused")

    [item] = (await ok(api.http.get("/v1/apps/shop/releases")))["items"]
    assert (item["id"], item["createdBy"], item["phase"]) == (1, "admin", "Running")
    assert [(e["action"], e["actor"], e["phase"]) for e in item["events"]] == [
        ("start", "admin", "Running"), ("pause", "admin", "Paused"), ("resume", "admin", "Running")]
    mine = [(a["action"], a["actor"]) for a in await audit(api) if a["action"].startswith("release.")]
    assert mine == [("release.start", "admin"), ("release.pause", "admin"), ("release.resume", "admin")]


async def test_concurrent_actions_are_serialized(api: Api) -> None:
    """pause, rollback and resume fired together: with expectPhase exactly one wins; without it each gets 200 or
    409 and the phase is the one the recorded events lead to; a second identical action is told the phase."""
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)

    async def fire(actions: tuple[str, ...], expect: str | None = None) -> list[httpx.Response]:
        body = {"expectPhase": expect} if expect else {}
        return list(await asyncio.gather(*(api.http.post(f"/v1/apps/shop/release/{a}", json=body) for a in actions)))

    def replay(events: list[dict[str, Any]], phase: str) -> str:
        for e in events:
            assert e["detail"]["from"] == phase, events  # each change started where the previous one ended
            phase = e["phase"]
        return phase

    answers = await fire(("pause", "rollback", "resume"), expect="Running")
    assert sorted(r.status_code for r in answers) == [200, 409, 409], [r.text for r in answers]
    [winner] = [r.json() for r in answers if r.status_code == 200]
    status = await release_status(api)
    assert len(status["events"]) == 2 and status["phase"] == winner["phase"] == replay(status["events"][1:], "Running")

    seen = len(status["events"])
    answers = await fire(("pause", "rollback", "resume"))
    assert all(r.status_code in (200, 409) for r in answers), [r.text for r in answers]
    status = await release_status(api)
    assert len(status["events"]) - seen == sum(r.status_code == 200 for r in answers)
    phase = replay(status["events"][1:], "Running")
    assert status["phase"] == phase

    action = "resume" if phase == "Paused" else "pause"
    twice = await fire((action, action), expect=phase)
    assert sorted(r.status_code for r in twice) == [200, 409], [r.text for r in twice]
    winner = next(r for r in twice if r.status_code == 200).json()
    loser = next(r for r in twice if r.status_code == 409).json()
    assert winner["phase"] in loser["message"], loser
    status = await release_status(api)
    assert status["phase"] == winner["phase"] == replay(status["events"][1:], "Running")


async def test_the_issue_example_runs_group_by_group(api: Api) -> None:
    """Beta changes 1 per cell, then pauses; group-1 2 per cell, one per cell at a time; pause; group-2 the rest;
    Succeeded, and the app is deployed at revision 2. Every step is in the history and on the audit log."""
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    plan = (await ok(api.http.post("/v1/apps/shop/releases", json={}), 201))["groups"]
    beta, g1, g2 = (slot_ids(g) for g in plan)

    assert await release_engine.reconcile_once(api.store) == 1
    assert await desired_at(api, 2) == beta
    assert await release_engine.reconcile_once(api.store) == 0, "nothing changed; nothing to write"
    await agents_run_desired(api, agent)
    await release_engine.reconcile_once(api.store)
    status = await release_status(api)
    assert (status["phase"], status["completedGroups"]) == ("Paused", 1)
    assert status["groups"][0]["cells"]["cell-a"]["done"] == 1
    await release_engine.reconcile_once(api.store)
    assert await desired_at(api, 2) == beta, "paused: nothing starts"
    assert await scheduler.reconcile_once(api.store) == 0, "an app under release belongs to the release engine"

    done = set(beta)
    for group, completed in ((g1, 2), (g2, 3)):
        await ok(api.http.post("/v1/apps/shop/release/resume", json={}))
        for _ in range(2):  # two instances per cell, at most one per cell at a time
            await release_engine.reconcile_once(api.store)
            started = await desired_at(api, 2) - done
            assert started <= group and cells_of(started, plan) == {"cell-a": 1, "cell-b": 1}, started
            done |= started
            await agents_run_desired(api, agent)
        assert done >= group
        await release_engine.reconcile_once(api.store)
        status = await release_status(api)
        assert (status["phase"], status["completedGroups"]) == (
            "Paused" if completed < 3 else "Succeeded", completed)

    assert await desired_at(api, 2) == beta | g1 | g2 and len(beta | g1 | g2) == 10
    shop = await ok(api.http.get("/v1/apps/shop"))
    assert shop["status"]["deployedRevision"] == 2
    assert await release_engine.reconcile_once(api.store) == 0, "a finished release is left alone"
    assert await scheduler.reconcile_once(api.store) == 0, "the scheduler finds the released app as declared"
    assert len(await instances(api)) == 10

    [item] = (await ok(api.http.get("/v1/apps/shop/releases")))["items"]
    assert [(e["action"], e["actor"]) for e in item["events"]] == [
        ("start", "admin"), ("paused", ENGINE), ("resume", "admin"), ("paused", ENGINE), ("resume", "admin"),
        ("succeeded", ENGINE)]
    steps = [a for a in await audit(api) if a["action"] == "release.step"]
    assert all(a["actor"] == ENGINE for a in steps)
    assert sorted(x["setRevision"] for a in steps for x in a["detail"]["actions"]) == sorted(beta | g1 | g2), \
        "each instance is changed exactly once"
    assert {"release.start", "release.paused", "release.resume", "release.succeeded"} <= {
        a["action"] for a in await audit(api)}


async def test_rollback_from_inside_group_1_goes_back_in_reverse_group_order(api: Api) -> None:
    """Rolled back while group-1 is changing: group-1's changed instances return to revision 1 before beta's,
    the release ends RolledBack and the app stays deployed at revision 1."""
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    plan = (await ok(api.http.post("/v1/apps/shop/releases", json={}), 201))["groups"]
    beta, g1 = slot_ids(plan[0]), slot_ids(plan[1])
    await release_engine.reconcile_once(api.store)
    await agents_run_desired(api, agent)
    await release_engine.reconcile_once(api.store)
    await ok(api.http.post("/v1/apps/shop/release/resume", json={}))
    await release_engine.reconcile_once(api.store)
    changed_in_g1 = await desired_at(api, 2) - beta
    assert changed_in_g1 <= g1 and len(changed_in_g1) == 2
    await agents_run_desired(api, agent)

    rolled = await ok(api.http.post("/v1/apps/shop/release/rollback", json={}))
    assert (rolled["phase"], rolled["previousPhase"]) == ("RollingBack", "Running")
    r = await api.http.post("/v1/apps/shop/release/rollback", json={})
    assert r.status_code == 409 and "RollingBack" in r.json()["message"], r.text

    await release_engine.reconcile_once(api.store)
    assert await desired_at(api, 2) == beta, "group-1 goes back first; beta waits"
    await agents_run_desired(api, agent)
    await release_engine.reconcile_once(api.store)
    assert await desired_at(api, 2) == set(), "then beta"
    await agents_run_desired(api, agent)
    await release_engine.reconcile_once(api.store)

    status = await release_status(api)
    assert (status["phase"], status["direction"]) == ("RolledBack", "rollback")
    assert {i["spec"]["revision"] for i in await instances(api)} == {1}
    assert {i["status"]["revision"] for i in await instances(api)} == {1}
    assert (await ok(api.http.get("/v1/apps/shop")))["status"]["deployedRevision"] == 1
    back = [x["setRevision"] for a in await audit(api) if a["action"] == "release.step"
            for x in a["detail"]["actions"] if x["revision"] == 1]
    assert back[:2] and set(back[:2]) == changed_in_g1 and set(back[2:]) == beta, back
    assert [e["action"] for e in status["events"]][-2:] == ["rollback", "rolled-back"]
    assert {"release.rollback", "release.rolled-back"} <= {a["action"] for a in await audit(api)}


async def release_until(api: Api, agent: httpx.AsyncClient, phase: str) -> dict[str, Any]:
    """Drive the newest release (engine passes, agents settling, resumes after each manual pause) to `phase`."""
    for _ in range(20):
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, agent)
        await release_engine.reconcile_once(api.store)
        status = await release_status(api)
        if status["phase"] == phase:
            return status
        if status["phase"] == "Paused":
            await ok(api.http.post("/v1/apps/shop/release/resume", json={}))
    raise AssertionError(f"release never reached {phase}: {status['phase']} ({status['reason']})")


async def test_rollback_after_success_starts_a_release_back_to_the_last_good_revision(api: Api) -> None:
    """Nothing released: 409. Revision 1 → 2 succeeded: `rollback` starts release 2 (kind rollback) back to revision
    1 with the app's groups and pauses, audited and in the history as the user's rollback; a stale expectPhase is a
    409 and changes nothing. Once that succeeded, `rollback --fast` undoes it: revision 2 again, all 10 at once."""
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    r = await api.http.post("/v1/apps/shop/release/rollback", json={})
    assert r.status_code == 409 and "never been released: nothing to go back to" in r.json()["message"], r.text

    await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)
    await release_until(api, agent, "Succeeded")
    assert (await ok(api.http.get("/v1/apps/shop")))["status"]["deployedRevision"] == 2

    r = await api.http.post("/v1/apps/shop/release/rollback", json={"expectPhase": "Running"})
    assert r.status_code == 409 and "is Succeeded, not Running" in r.json()["message"], r.text
    assert len((await ok(api.http.get("/v1/apps/shop/releases")))["items"]) == 1, "a refused rollback starts nothing"

    back = await ok(api.http.post("/v1/apps/shop/release/rollback", json={"expectPhase": "Succeeded"}))
    assert (back["id"], back["kind"], back["rollbackOf"], back["fromRevision"], back["toRevision"],
            back["previousPhase"], back["phase"]) == (2, "rollback", 1, 2, 1, "Succeeded", "Running"), back
    assert plan_shape(back["groups"]) == THE_ISSUE_PLAN, "the app's strategy: beta 1 per cell, then the groups"
    r = await api.http.post("/v1/apps/shop/releases", json={"toRevision": 1})
    assert r.status_code == 409 and "release 2 of 'shop' is Running" in r.json()["message"], r.text
    r = await api.http.post("/v1/apps/shop/release/rollback", json={"expectPhase": "Succeeded"})
    assert r.status_code == 409 and "release 2 is Running, not Succeeded" in r.json()["message"], r.text

    await release_engine.reconcile_once(api.store)
    assert await desired_at(api, 1) == slot_ids(back["groups"][0]), "the beta group goes back first"
    status = await release_until(api, agent, "Succeeded")
    assert (status["id"], status["kind"], status["direction"]) == (2, "rollback", "forward")
    assert {i["status"]["revision"] for i in await instances(api)} == {1}
    assert (await ok(api.http.get("/v1/apps/shop")))["status"]["deployedRevision"] == 1
    first, second = (await ok(api.http.get("/v1/apps/shop/releases")))["items"]
    assert (first["phase"], second["kind"], second["createdBy"], second["fromRevision"], second["toRevision"]) == (
        "Succeeded", "rollback", "admin", 2, 1)
    assert (second["events"][0]["action"], second["events"][0]["actor"], second["events"][0]["detail"]["rollbackOf"]) \
        == ("rollback", "admin", 1), second["events"]
    assert [e["action"] for e in second["events"]].count("paused") == 2, "paused after beta and group-1, like any"
    [record] = [a for a in await audit(api) if a["action"] == "release.rollback"]
    assert (record["actor"], record["resource"], record["detail"]["release"], record["detail"]["rollbackOf"],
            record["detail"]["to"], record["detail"]["fast"]) == ("admin", "AppService/shop", 2, 1, 1, False), record

    fast = await ok(api.http.post("/v1/apps/shop/release/rollback", json={"fast": True}))
    assert (fast["id"], fast["rollbackOf"], fast["fromRevision"], fast["toRevision"]) == (3, 2, 1, 2), fast
    assert [len(g["slots"]) for g in fast["groups"]] == [10], "--fast: one group of every instance"
    await release_engine.reconcile_once(api.store)
    assert len(await desired_at(api, 2)) == 10, "--fast: every instance set to revision 2 in one step"
    status = await release_until(api, agent, "Succeeded")
    assert [e["action"] for e in status["events"]] == ["rollback", "succeeded"], "no pause, no verification"
    assert (await ok(api.http.get("/v1/apps/shop")))["status"]["deployedRevision"] == 2


async def test_rollback_after_success_is_refused_while_an_order_holds_the_app(api: Api) -> None:
    """An app under an active release order is released by the order: a rollback that would start a new release is
    a 409 naming the order, and no release is recorded."""
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)
    await release_until(api, agent, "Succeeded")
    order = {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "chg-7"},
             "spec": {"title": "hold shop", "ticket": "CHG-7", "releases": [{"app": "shop"}]}}
    # Maker-checker: the approver's binding predates the order, and the order's author (alice) granted none.
    await ok(api.http.post("/v1/users", json={"name": "bob", "role": "approver"}), 201)
    bob = (await ok(api.http.post("/v1/tokens", json={"user": "bob", "name": "bob"}), 201))["token"]
    await ok(api.http.post("/v1/users", json={"name": "alice", "role": "operator"}), 201)
    alice = (await ok(api.http.post("/v1/tokens", json={"user": "alice", "name": "alice"}), 201))["token"]
    await ok(api.as_(alice).post("/v1/apply", json={"items": [order]}))
    await ok(api.as_(bob).post("/v1/orders/chg-7/approve", json={}))
    await ok(api.http.post("/v1/orders/chg-7/start", json={}))

    r = await api.http.post("/v1/apps/shop/release/rollback", json={})
    assert r.status_code == 409 and "release order 'chg-7'" in r.json()["message"], r.text
    assert [i["id"] for i in (await ok(api.http.get("/v1/apps/shop/releases")))["items"]] == [1]
    assert not [a for a in await audit(api) if a["action"] == "release.rollback"]
    assert (await audit(api))[-1]["result"] == "refused: HTTP 409"
