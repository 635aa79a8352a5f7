"""Node evacuation through the API: refused while an app is under release (nothing cordoned), otherwise a
cordon and one `evacuate` release per app: new instances elsewhere in the cell first, then the old retired."""

from __future__ import annotations

from ballast.controllers import releases as release_engine
from tests.conftest import Api
from tests.unit.test_api_releases import agents_run_desired, instances, ok, shop_at_revision_1_with_revision_2_recorded


async def test_drain_refusals_and_the_evacuation_plan(api: Api) -> None:
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    r = await api.http.post("/v1/nodes/n-zz/drain")
    assert r.status_code == 404
    await ok(api.http.post("/v1/users", json={"name": "val", "role": "viewer"}), 201)
    token = (await ok(api.http.post("/v1/tokens", json={"user": "val", "name": "val"}), 201))["token"]
    assert (await api.as_(token).post("/v1/nodes/n-a1/drain")).status_code == 403

    await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)
    r = await api.http.post("/v1/nodes/n-a1/drain")
    assert r.status_code == 409 and "shop" in r.json()["message"]
    assert (await ok(api.http.get("/v1/nodes/n-a1")))["status"]["cordoned"] is False, "a refused drain changes nothing"
    await ok(api.http.post("/v1/apps/shop/release/rollback", json={}))
    for _ in range(6):
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, agent)
    assert (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "RolledBack"

    on_a1 = {i["metadata"]["name"] for i in await instances(api) if i["spec"]["node"] == "n-a1"}
    answer = await ok(api.http.post("/v1/nodes/n-a1/drain"))
    assert answer["cordoned"] is True and set(answer["releases"][0]["instances"]) == on_a1
    status = await ok(api.http.get("/v1/apps/shop/release"))
    assert status["kind"] == "evacuate"
    first, second = status["groups"]
    assert first["cells"] == {"cell-a": {"done": 0, "in progress": 0, "waiting": len(on_a1), "failed": 0}}
    assert {s["slot"] for s in second["instances"]} == on_a1, "the old instances go in the second group"
    for _ in range(8):
        await release_engine.reconcile_once(api.store)
        await agents_run_desired(api, agent)
    assert (await ok(api.http.get("/v1/apps/shop/release")))["phase"] == "Succeeded"
    now = await instances(api)
    assert len(now) == 10 and not [i for i in now if i["spec"]["node"] == "n-a1"]
    assert sum(1 for i in now if i["spec"]["cell"] == "cell-a") == 5
