"""What audit digests describe: the changed object itself, for the API's changes and the engines' alike.

Every record of a change carries before/after digests (a creation has no *before*, a deletion no *after*), and
along the records of one object each change begins where the previous one ended.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from ballast.controllers import endpoints as endpoint_controller
from ballast.controllers import orders as order_engine
from ballast.controllers import releases as release_engine
from ballast.controllers import scheduler
from ballast.store import schema
from tests.conftest import Api, Fleet, join_component
from tests.unit.test_api_releases import NODES, shop_at_revision_1_with_revision_2_recorded
from tests.unit.test_api_verification import Agents, Clock, beta, step
from tests.unit.test_api_verification import start as start_verified
from tests.unit.test_role_matrix import WINDOW, app_manifest, manifest, new_user, ok, order_manifest

# Actions whose digests describe one and the same state of their resource, so that along the records of one
# resource each change's `before` is the previous one's `after`.
DIGEST_FAMILIES = [
    {"user.create", "user.bind", "user.unbind", "user.delete"},
    {"token.create", "token.revoke"},
    {"node.register", "node.delete"},
    {"node.drain", "node.uncordon"},
    {"gateway.register", "gateway.delete"},
    {"join-token.create"},
    {"node.join", "gateway.join",        # a component's principal and live credentials
     "node.credentials-revoke", "gateway.credentials-revoke"},
    {"release.start", "release.pause", "release.resume", "release.rollback",   # and the engine's transitions:
     "release.succeeded", "release.rolled-back", "release.failed", "release.paused", "release.group-done",
     "release.auto-rollback"},
    {"order.approve", "order.reject", "order.emergency-approve", "order.start", "order.pause", "order.resume",
     "order.rollback", "order.succeeded", "order.rolled-back", "order.paused", "order.failed"},
    {"apply", "delete"},
]


async def engine_finishes_shop_rollback(api: Api, agent: Fleet) -> None:
    """The data plane reports shop's one instance running and ready where it was granted, every traffic
    component acknowledges, and the release engine ends the rollback (a bounded number of passes)."""
    for _ in range(10):
        await endpoint_controller.reconcile_once(api.store)
        [inst] = (await ok(api.http.get("/v1/instances", params={"app": "shop"})))["items"]
        await ok(agent.post(f"/v1/nodes/{inst['spec']['node']}/status", json={"instances": [
            {"id": inst["metadata"]["name"], "phase": "Running", "ready": True, "restarts": 0, "port": 20000,
             "revision": inst["status"]["grantedRevision"]}]}))
        await endpoint_controller.reconcile_once(api.store)
        generation = (await ok(agent.get("/v1/registry")))["generation"]
        await ok(agent.post("/v1/nodes/n1/ack", json={"generation": generation}))
        await release_engine.reconcile_once(api.store)
        if (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "RolledBack":
            return
    raise AssertionError("the rollback of shop did not end")


async def test_each_change_record_begins_where_the_last_one_of_its_object_ended(api: Api) -> None:
    """Before/after digests describe the changed object itself: along the records of one object a change's
    `before` is the previous change's `after`; a creation has no `before`, a deletion no `after`."""
    admin = api.http
    agent = Fleet(api)   # each node and gateway joins with its own credential
    await new_user(api, "ops", "operator")
    author = api.as_((await new_user(api, "author", "operator"))["token"])
    checker = api.as_((await new_user(api, "checker", "approver"))["token"])
    await ok(admin.post("/v1/users/ops/bindings", json={"role": "viewer"}), 201)
    await ok(admin.delete("/v1/users/ops/bindings/viewer"))
    token = await ok(admin.post("/v1/tokens", json={"user": "checker", "name": "second"}), 201)
    await ok(admin.delete(f"/v1/tokens/{token['id']}"))
    await ok(admin.post("/v1/users", json={"name": "gone", "role": "viewer"}), 201)
    await ok(admin.delete("/v1/users/gone"))

    await ok(admin.post("/v1/apply", json={"items": [manifest("Cell", "cell-a", {"zone": "z"}),
                                                     manifest("ChangeWindow", "cw", WINDOW),
                                                     app_manifest("shop", count=1), app_manifest("ledger")]}))
    for name, ip in (("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n2", "10.0.0.3")):
        await ok(agent.put(f"/v1/nodes/{name}", json={"cell": "cell-a", "ip": ip, "cpuMillis": 8000,
                                                      "memoryBytes": 2**30}))
    await ok(admin.post("/v1/nodes/n2/drain"))
    await ok(admin.post("/v1/nodes/n2/uncordon"))
    await ok(admin.delete("/v1/nodes/n2"))
    await join_component(api, "node", "n2")   # re-joining rotates its credential
    for address in ("127.0.0.1:8080", "127.0.0.1:8081"):
        await ok(agent.put("/v1/gateways/edge", json={"address": address}))
    await ok(admin.delete("/v1/gateways/edge"))
    await ok(admin.post("/v1/apply", json={"items": [manifest("ChangeWindow", "cw", {**WINDOW, "apps": ["x"]})]}))
    await ok(admin.delete("/v1/changewindows/cw"))

    assert await scheduler.reconcile_once(api.store) == 1
    await ok(admin.post("/v1/apply", json={"items": [app_manifest("shop", count=1, greeting="v2"),
                                                     app_manifest("ledger", greeting="v2")]}))
    await ok(admin.post("/v1/apps/shop/releases", json={}), 201)
    for action in ("pause", "resume", "rollback"):
        await ok(admin.post(f"/v1/apps/shop/release/{action}"))
    await engine_finishes_shop_rollback(api, agent)
    await ok(author.post("/v1/apply", json={"items": [order_manifest("chg", "ledger")]}))
    await ok(checker.post("/v1/orders/chg/approve", json={"comment": "ok"}))
    await ok(admin.post("/v1/orders/chg/start", json={}))
    for action in ("pause", "resume", "rollback"):
        await ok(admin.post(f"/v1/orders/chg/{action}", json={}))
    for _ in range(5):  # the order engine takes the order back (no app release had started) and ends it
        await order_engine.reconcile_once(api.store)
    assert (await ok(admin.get("/v1/orders/chg")))["status"]["phase"] == "RolledBack"

    async with api.store.read() as conn:
        records = list((await conn.execute(select(schema.audit).order_by(schema.audit.c.seq))).all())
    def family_of(action: str) -> int:
        return next(k for k, f in enumerate(DIGEST_FAMILIES) if action in f)

    chains: dict[tuple[int, str], list[Any]] = {}
    for rec in records:
        if any(rec.action in f for f in DIGEST_FAMILIES) and rec.result == "ok":
            chains.setdefault((family_of(rec.action), rec.resource), []).append(rec)
    expected = {(family_of(action), resource): n for action, resource, n in [
        ("user.create", "User/ops", 3), ("user.create", "User/gone", 2), ("token.create", f"Token/{token['id']}", 2),
        ("node.register", "Node/n2", 3), ("node.join", "Node/n2", 3), ("node.drain", "Node/n2", 2), ("gateway.register", "Gateway/edge", 3),
        ("apply", "ChangeWindow/cw", 3), ("apply", "AppService/shop", 2),
        ("release.start", "AppService/shop", 5), ("order.start", "ReleaseOrder/chg", 6)]}
    for (family, resource), chain in chains.items():
        assert expected.pop((family, resource), len(chain)) == len(chain), (resource, [r.action for r in chain])
        for previous, rec in zip(chain, chain[1:]):
            assert rec.before == previous.after and rec.before, (
                f"{resource}: {rec.action} begins at {rec.before!r}, {previous.action} ended at {previous.after!r}")
        if chain[0].action.endswith("create") or chain[0].action in ("node.register", "gateway.register"):
            assert chain[0].before == "" and chain[0].after, (resource, chain[0].action)
        if chain[-1].action.endswith("delete"):
            assert chain[-1].after == "" and chain[-1].before, (resource, chain[-1].action)
    assert not expected, f"no chain of records for {expected}"


# Records that observe rather than change (an agent saw a drain time out): they carry no digests.
OBSERVATIONS = {"drain.timeout"}


@pytest.fixture
async def verified_shop(api: Api) -> Agents:
    """The verification tests' app: 5 + 5 instances at revision 1, revision 2 recorded, agents with telemetry."""
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    for k, (name, cell) in enumerate(sorted(NODES.items()), start=1):
        await ok(agent.put(f"/v1/nodes/{name}", json={"cell": cell, "ip": f"10.0.0.{k}", "cpuMillis": 8000,
                                                      "memoryBytes": 16 * 2**30, "metricsAddress": f"10.0.0.{k}:9464"}))
    shop = Agents(api, agent)
    await shop.refresh()
    return shop


async def test_the_engines_records_of_a_verified_release_carry_digests(api: Api, verified_shop: Agents) -> None:
    """Scheduling, grants, steps, verification windows opened, judged and abandoned, and the engine's own
    transitions: every record of a change names what changed with before/after digests."""
    clock = Clock(api.store.clock())
    await start_verified(api, clock)
    assert beta(await step(api, verified_shop, clock))["verification"]["state"] == "verifying"
    await ok(api.http.post("/v1/apps/shop/release/rollback"))  # abandons the open window
    for _ in range(3):
        if (await step(api, verified_shop, clock))["phase"] == "RolledBack":
            break
    await start_verified(api, clock, onFailure="rollback")
    await step(api, verified_shop, clock)
    await verified_shop.serve(100, {2: 0.5})
    await step(api, verified_shop, clock, 11)
    assert (await step(api, verified_shop, clock))["phase"] == "RolledBack"
    # A node whose agent never acknowledges: draining the deleted app's endpoints waits for it until the timeout.
    await ok(verified_shop.fleet.put("/v1/nodes/n-silent", json={"cell": "cell-a", "ip": "10.0.0.9",
                                                                         "cpuMillis": 1000, "memoryBytes": 2**30}))
    await ok(api.http.delete("/v1/apps/shop"))
    await endpoint_controller.reconcile_once(api.store)
    clock.now += 31
    await endpoint_controller.reconcile_once(api.store)

    async with api.store.read() as conn:
        records = list((await conn.execute(select(schema.audit).order_by(schema.audit.c.seq))).all())
    actions = {r.action for r in records}
    assert {"schedule", "drain.grant", "endpoint.ack-timeout", "release.step", "release.verify-start", "release.verify",
            "release.verify-abandon", "release.auto-rollback", "release.rolled-back"} <= actions, actions
    bare = [(r.actor, r.action, r.resource) for r in records
            if not (r.before or r.after) and not r.result.startswith("refused") and r.action not in OBSERVATIONS]
    assert not bare, f"records of changes without before/after digests: {bare}"
