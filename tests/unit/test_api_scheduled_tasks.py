"""ScheduledTasks over the API, on both stores: refused input stores nothing, a run is persisted whole before any
call, gateways claim their own shards with a lease and report each outcome once, the controller starts one run per
scheduled time, and who may do what follows the target app."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import update

from ballast.controllers import tasks as task_controller
from ballast.core.manifests import API_VERSION
from ballast.store.schema import endpoints, scheduled_tasks
from tests.conftest import Api, Fleet
from tests.unit.test_api_releases import TEMPLATE, audit, manifests, ok
from tests.unit.test_role_matrix import new_user


def task(name: str = "replenish-batch", **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"schedule": "*/5 * * * *", "timeZone": "Asia/Shanghai",
                            "target": {"service": "shop", "path": "/tasks/replenish", "method": "POST"},
                            "shards": 3, "tags": {"biz": "replenish"}, "timeoutSeconds": 5, "retries": 1}
    spec.update(fields)
    return {"apiVersion": API_VERSION, "kind": "ScheduledTask", "metadata": {"name": name}, "spec": spec}


async def setup(api: Api, *docs: dict[str, Any]) -> None:
    await ok(api.http.post("/v1/apply", json={"items": [*manifests(TEMPLATE), *(docs or [task()])]}))


def outcome(run: int, index: int, **fields: Any) -> dict[str, Any]:
    return {"runId": run, "index": index, "outcome": "succeeded", "statusCode": 200, "durationMs": 12.5,
            "attempts": 1, "instance": "shop-1", **fields}


async def test_a_task_for_an_unknown_app_is_refused_with_its_field_path_and_nothing_is_stored(api: Api) -> None:
    await setup(api, task("other"))
    r = await api.http.post("/v1/apply", json={"items": [task(target={"service": "ghost", "path": "/t"}),
                                                         task("bad-cron", schedule="* * *")]})
    assert r.status_code == 422, r.text
    paths = [p["path"] for p in r.json()["problems"]]
    assert paths == ["items[1].spec.schedule"], "the model's problems are reported first; the store's after"
    r = await api.http.post("/v1/apply", json={"items": [task(target={"service": "ghost", "path": "/t"})]})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "items[0].spec.target.service", r.text
    assert [t["metadata"]["name"] for t in (await ok(api.http.get("/v1/scheduledtasks")))["items"]] == ["other"]


async def test_a_manual_run_is_persisted_with_every_shard_and_waits_for_a_gateway(api: Api) -> None:
    await setup(api)
    run = (await ok(api.http.post("/v1/scheduledtasks/replenish-batch/runs")))["run"]
    [listed] = (await ok(api.http.get("/v1/scheduledtasks/replenish-batch/runs")))["items"]
    assert (listed["id"], listed["trigger"], listed["state"], listed["actor"]) == (run, "manual", "pending", "admin")
    assert listed["reason"] == "waiting: no gateway is registered to make its calls"
    assert [s["state"] for s in listed["items"]] == ["pending"] * 3
    [record] = [a for a in await audit(api) if a["action"] == "task.run"]
    assert (record["actor"], record["resource"], record["detail"]["run"]) == ("admin", "ScheduledTask/replenish-batch",
                                                                              run)


async def test_a_gateway_claims_shards_with_their_call_and_each_outcome_is_recorded_once(api: Api) -> None:
    await setup(api)
    fleet = Fleet(api)
    await ok(fleet.put("/v1/gateways/gw1", json={"address": "127.0.0.1:8080"}))
    async with api.store.write() as tx:   # shop-1 serves in isolation group vostro
        await tx.conn.execute(endpoints.insert().values(
            id="shop-1", service="shop", node="n", cell="cell-a", zone="z", ip="10.0.0.1", port=1, revision=1,
            state="ready", generation=1, since=0.0, required=[], note="", group_code="vostro"))
    run = (await ok(api.http.post("/v1/scheduledtasks/replenish-batch/runs")))["run"]
    claimed = (await ok(fleet.post("/v1/gateways/gw1/task-shards/claim", json={"max": 10})))["items"]
    assert [(c["index"], c["shards"], c["service"], c["path"], c["method"], c["tags"], c["idempotencyKey"])
            for c in claimed] == [(i, 3, "shop", "/tasks/replenish", "POST", {"biz": "replenish"},
                                   f"replenish-batch/{run}/{i}") for i in range(3)]
    assert (await ok(fleet.post("/v1/gateways/gw1/task-shards/claim", json={"max": 10})))["items"] == [], \
        "a leased shard is nobody else's"
    other = await fleet.client("gateway", "gw2")
    assert (await other.post("/v1/gateways/gw1/task-shards/claim", json={"max": 1})).status_code == 403
    refused = await other.post("/v1/gateways/gw2/task-shards/report", json=outcome(run, 0))
    assert refused.status_code == 409, "gw2 never claimed it"

    first = await ok(fleet.post("/v1/gateways/gw1/task-shards/report", json=outcome(run, 0)))
    again = await ok(fleet.post("/v1/gateways/gw1/task-shards/report", json=outcome(run, 0, outcome="failed",
                                                                                   statusCode=503)))
    assert (first["recorded"], again["recorded"], again["state"]) == (True, False, "succeeded")
    for index in (1, 2):
        await ok(fleet.post("/v1/gateways/gw1/task-shards/report",
                            json=outcome(run, index, instance="shop-2", attempts=2)))
    done = await ok(api.http.get(f"/v1/taskruns/{run}"))
    assert done["state"] == "succeeded"
    assert [(s["state"], s["statusCode"], s["instance"], s["group"], s["attempts"]) for s in done["items"]] == [
        ("succeeded", 200, "shop-1", "vostro", 1), ("succeeded", 200, "shop-2", None, 2),
        ("succeeded", 200, "shop-2", None, 2)]
    await ok(fleet.post("/v1/gateways/gw1/task-shards/report", json=outcome(run, 2)))   # late duplicate
    finishes = [a for a in await audit(api) if a["action"] == "task.run-finish"]
    assert [(f["actor"], f["detail"]["run"], f["detail"]["state"]) for f in finishes] == [("admin", run, "succeeded")]


async def test_a_shard_whose_lease_ran_out_is_claimed_again_under_the_same_key(api: Api) -> None:
    await setup(api, task(shards=1))
    fleet = Fleet(api)
    run = (await ok(api.http.post("/v1/scheduledtasks/replenish-batch/runs")))["run"]
    [first] = (await ok(fleet.post("/v1/gateways/gw1/task-shards/claim", json={"max": 5})))["items"]
    real = api.store.clock
    api.store.clock = lambda: real() + first["leaseSeconds"] + 1   # gw1 died mid-call
    [second] = (await ok(fleet.post("/v1/gateways/gw2/task-shards/claim", json={"max": 5})))["items"]
    assert second["idempotencyKey"] == first["idempotencyKey"] == f"replenish-batch/{run}/0"
    late = await (await fleet.client("gateway", "gw1")).post("/v1/gateways/gw1/task-shards/report",
                                                              json=outcome(run, 0))
    assert late.status_code == 409, "the shard is gw2's now"
    await ok(fleet.post("/v1/gateways/gw2/task-shards/report", json=outcome(run, 0)))
    [shard] = (await ok(api.http.get(f"/v1/taskruns/{run}")))["items"]
    assert (shard["state"], shard["claims"], shard["gateway"]) == ("succeeded", 2, "gw2")


async def test_the_controller_starts_one_run_per_scheduled_time_even_when_run_twice(api: Api) -> None:
    await setup(api, task(startingDeadlineSeconds=60))
    real = api.store.clock
    async with api.store.write() as tx:   # the task was created just before a scheduled time
        start = real() - real() % 300 - 1
        await tx.conn.execute(update(scheduled_tasks).values(considered_until=start))
    api.store.clock = lambda: start + 2
    assert await task_controller.reconcile_once(api.store) == 1
    assert await task_controller.reconcile_once(api.store) == 0, "decided already: nothing repeats"
    api.store.clock = lambda: start + 301 + 120   # the next time is 2 minutes late: missed, and said so
    assert await task_controller.reconcile_once(api.store) == 0
    runs = (await ok(api.http.get("/v1/scheduledtasks/replenish-batch/runs")))["items"]
    assert [(r["trigger"], r["state"], r["shards"]) for r in runs] == [("schedule", "missed", 0),
                                                                         ("schedule", "pending", 3)]
    assert "startingDeadlineSeconds" in runs[0]["reason"]
    actions = [(a["actor"], a["action"]) for a in await audit(api) if a["action"].startswith("task.")]
    assert actions == [("system", "task.run"), ("system", "task.missed")]


async def test_forbid_skips_a_due_time_while_a_run_is_active_and_replace_cancels_unclaimed_shards(api: Api) -> None:
    await setup(api, task("forbid", concurrencyPolicy="Forbid"), task("replace", concurrencyPolicy="Replace"))
    for name in ("forbid", "replace"):
        await ok(api.http.post(f"/v1/scheduledtasks/{name}/runs"))
    real = api.store.clock
    start = real() - real() % 300 - 1
    async with api.store.write() as tx:
        await tx.conn.execute(update(scheduled_tasks).values(considered_until=start))
    api.store.clock = lambda: start + 2
    assert await task_controller.reconcile_once(api.store) == 1   # replace's
    forbid = (await ok(api.http.get("/v1/scheduledtasks/forbid/runs")))["items"]
    assert [r["state"] for r in forbid] == ["skipped", "pending"]
    replace = (await ok(api.http.get("/v1/scheduledtasks/replace/runs")))["items"]
    assert [(r["state"], r["shardStates"]) for r in replace] == [("pending", {"pending": 3}),
                                                                 ("failed", {"cancelled": 3})]


async def test_the_target_apps_operators_manage_its_tasks_and_its_readers_read_them(api: Api) -> None:
    await setup(api)
    await ok(api.http.post("/v1/apply", json={"items": [
        {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "other"},
         "spec": {"cells": {"cell-a": 0}, "template": TEMPLATE}}]}))
    mine = api.as_((await new_user(api, "shop-op", "operator", ["shop"]))["token"])
    theirs = api.as_((await new_user(api, "other-op", "operator", ["other"]))["token"])
    reader = api.as_((await new_user(api, "reader", "viewer", ["shop"]))["token"])
    async with mine, theirs, reader:
        assert (await mine.post("/v1/scheduledtasks/replenish-batch/runs")).status_code == 200
        assert (await theirs.post("/v1/scheduledtasks/replenish-batch/runs")).status_code == 403
        assert (await theirs.post("/v1/apply", json={"items": [task(shards=5)]})).status_code == 403
        moved = task(target={"service": "other", "path": "/t"})
        assert (await theirs.post("/v1/apply", json={"items": [moved]})).status_code == 403, \
            "taking a task off an app needs that app's operators too"
        assert (await ok(theirs.get("/v1/scheduledtasks")))["items"] == []
        assert (await theirs.get("/v1/scheduledtasks/replenish-batch/runs")).status_code == 403
        assert len((await ok(reader.get("/v1/scheduledtasks/replenish-batch/runs")))["items"]) == 1
        assert (await reader.post("/v1/scheduledtasks/replenish-batch/runs")).status_code == 403
        assert (await reader.delete("/v1/scheduledtasks/replenish-batch")).status_code == 403
        assert (await mine.delete("/v1/scheduledtasks/replenish-batch")).status_code == 200
    assert (await api.http.get("/v1/scheduledtasks/replenish-batch")).status_code == 404


async def test_a_persons_token_claims_nothing(api: Api) -> None:
    await setup(api)
    r = await api.http.post("/v1/gateways/gw1/task-shards/claim", json={"max": 1})
    assert r.status_code == 403, r.text
    assert isinstance(r, httpx.Response)
