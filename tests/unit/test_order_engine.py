"""The order engine over the real API and store, with the release engine and agents driven in-process:
pausing an order pauses its in-flight release, resuming resumes it, the order succeeds when its app does,
and rolling back a finished order takes the app back with a release to its previous revision."""

from __future__ import annotations

from typing import Any

import httpx

from ballast.controllers import orders as order_engine
from ballast.controllers import releases as release_engine
from ballast.core.manifests import API_VERSION
from tests.conftest import Api
from tests.unit.test_api_releases import agents_run_desired, desired_at, ok, shop_at_revision_1_with_revision_2_recorded

ORDER = {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "chg"},
         "spec": {"title": "shop v2", "releases": [{"app": "shop", "strategy": {"pause": "none"}}]}}


async def settle(api: Api, agent: httpx.AsyncClient, rounds: int = 12, until: str | None = None) -> None:
    for _ in range(rounds):
        await order_engine.reconcile_once(api.store)
        if until is not None and (await order(api))["status"]["phase"] == until:
            return
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, agent)


async def order(api: Api) -> dict[str, Any]:
    return await ok(api.http.get("/v1/orders/chg"))  # type: ignore[no-any-return]


async def as_new_user(api: Api, name: str, role: str) -> httpx.AsyncClient:
    await ok(api.http.post("/v1/users", json={"name": name, "role": role}), 201)
    return api.as_((await ok(api.http.post("/v1/tokens", json={"user": name, "name": name}), 201))["token"])


async def started_order(api: Api) -> httpx.AsyncClient:
    """Shop under order chg: written by alice (an operator), approved by bob (bound by the admin beforehand),
    started; returns the shop's simulated agent."""
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    alice = await as_new_user(api, "alice", "operator")
    bob = await as_new_user(api, "bob", "approver")
    await ok(alice.post("/v1/apply", json={"items": [ORDER]}))
    await ok(bob.post("/v1/orders/chg/approve", json={"comment": "ok"}))
    await ok(api.http.post("/v1/orders/chg/start", json={}))
    return agent


async def test_pause_resume_success_and_rollback_of_a_finished_order(api: Api) -> None:
    agent = await started_order(api)

    assert await order_engine.reconcile_once(api.store) == 1
    [item] = (await order(api))["status"]["apps"]
    assert item["release"]["phase"] == "Running" and item["fromRevision"] == 1
    await release_engine.reconcile_once(api.store)
    assert await desired_at(api, 2), "the beta group starts"

    await ok(api.http.post("/v1/orders/chg/pause", json={}))
    assert (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "Paused", "the order's release pauses too"
    await settle(api, agent, 2)
    assert (await order(api))["status"]["phase"] == "Paused"
    changed = await desired_at(api, 2)
    assert len(changed) < 10, "paused: the release does not go on"

    await ok(api.http.post("/v1/orders/chg/resume", json={}))
    assert (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "Running"
    await settle(api, agent, until="Succeeded")
    done = await order(api)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert len(await desired_at(api, 2)) == 10

    await ok(api.http.post("/v1/orders/chg/rollback", json={}))
    await settle(api, agent, until="RolledBack")
    back = await order(api)
    assert back["status"]["phase"] == "RolledBack", back["status"]
    [item] = back["status"]["apps"]
    assert item["undo"]["toRevision"] == 1 and item["undo"]["phase"] == "Succeeded"
    assert len(await desired_at(api, 1)) == 10
    actions = [e["action"] for e in back["status"]["events"]]
    assert actions == ["created", "approve", "start", "release-started", "pause", "resume", "succeeded", "rollback",
                       "release-back", "rolled-back"], actions
    history = (await ok(api.http.get("/v1/apps/shop/releases")))["items"]
    assert [(h["fromRevision"], h["toRevision"], h["createdBy"]) for h in history] == [(1, 2, "order/chg"),
                                                                                       (2, 1, "order/chg")]
