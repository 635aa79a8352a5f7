"""Direct changes of an app beside release orders and change windows, over the API and both stores, with the
release and order engines driven in-process on the 5 + 5 `shop` of tests/unit/test_api_releases.py.

A release that belongs to an order is steered through the order only (`release pause|resume|rollback` are 409
naming it), while the order's own engine keeps pausing, resuming and finishing it; a scale change applied while
the order runs is refused instead of being run, unapproved, when the order's release ends. In a freeze a direct
release start is refused naming the window, while pausing and rolling back a release stay possible.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ballast.controllers import orders as order_engine
from ballast.controllers import releases as release_engine
from ballast.core.manifests import API_VERSION
from tests.conftest import Api
from tests.unit.test_api_releases import (TEMPLATE, audit, manifests, ok, release_status,
                                          shop_at_revision_1_with_revision_2_recorded)
from tests.unit.test_order_engine import order, settle, started_order

REVISION_2 = {**TEMPLATE, "args": ["--port", "0", "--verbose"]}


def scaled_shop(per_cell: int) -> list[dict[str, Any]]:
    docs = manifests(REVISION_2)
    docs[-1]["spec"]["cells"] = {"cell-a": per_cell, "cell-b": per_cell}
    return docs


def freeze(apps: list[str]) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {"apiVersion": API_VERSION, "kind": "ChangeWindow", "metadata": {"name": "year-end"},
            "spec": {"freezes": [{"from": (now - timedelta(hours=1)).isoformat(),
                                  "to": (now + timedelta(hours=1)).isoformat(), "reason": "year-end freeze"}],
                     "apps": apps}}


async def test_an_orders_release_is_steered_only_through_the_order(api: Api) -> None:
    agent = await started_order(api)
    assert await order_engine.reconcile_once(api.store) == 1
    release = await release_status(api)
    assert release["phase"] == "Running" and release["createdBy"] == "order/chg"
    audited = len(await audit(api))

    for action in ("pause", "rollback"):
        r = await api.http.post(f"/v1/apps/shop/release/{action}", json={})
        assert r.status_code == 409, r.text
        message = r.json()["message"]
        assert f"release {release['id']} of 'shop' belongs to release order 'chg' (Running)" in message, message
        assert f"ballast order {action} chg" in message, message
    r = await api.http.post("/v1/apply", json={"items": scaled_shop(6)})
    assert r.status_code == 409 and "release order 'chg' (Running)" in r.json()["message"], r.text
    assert "change of instance counts" in r.json()["message"]
    assert (await release_status(api))["phase"] == "Running", "nothing changed"

    # The order steers its release through the services, unhindered by the guard.
    await ok(api.http.post("/v1/orders/chg/pause", json={}))
    assert (await release_status(api))["phase"] == "Paused"
    r = await api.http.post("/v1/apps/shop/release/resume", json={})
    assert r.status_code == 409 and "ballast order resume chg" in r.json()["message"], r.text
    assert (await release_status(api))["phase"] == "Paused"
    await ok(api.http.post("/v1/orders/chg/resume", json={}))
    await settle(api, agent, until="Succeeded")
    assert (await order(api))["status"]["phase"] == "Succeeded"

    r = await api.http.post("/v1/apps/shop/release/rollback", json={})
    assert r.status_code == 409 and "release order 'chg' (Succeeded)" in r.json()["message"], r.text
    refused = [a for a in (await audit(api))[audited:] if a["result"].startswith("refused")]
    assert [(a["action"], a["result"]) for a in refused] == [
        ("POST /v1/apps/shop/release/pause", "refused: HTTP 409"),
        ("POST /v1/apps/shop/release/rollback", "refused: HTTP 409"),
        ("POST /v1/apply", "refused: HTTP 409"),
        ("POST /v1/apps/shop/release/resume", "refused: HTTP 409"),
        ("POST /v1/apps/shop/release/rollback", "refused: HTTP 409")]
    shop = await ok(api.http.get("/v1/apps/shop"))
    assert shop["spec"]["cells"] == {"cell-a": 5, "cell-b": 5}, "the refused scale change was never stored"
    assert len((await ok(api.http.get("/v1/apps/shop/releases")))["items"]) == 1, "and no scale release ran"


async def test_a_freeze_refuses_a_direct_release_but_never_a_pause_or_a_rollback(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apply", json={"items": [freeze(["shop"])]}))
    r = await api.http.post("/v1/apps/shop/releases", json={})
    assert r.status_code == 409, r.text
    assert "change window 'year-end': frozen until" in r.json()["message"] and "--emergency" in r.json()["message"]
    r = await api.http.post("/v1/apply", json={"items": scaled_shop(6)})
    assert r.status_code == 409 and "change window 'year-end'" in r.json()["message"], r.text
    assert (await ok(api.http.get("/v1/apps/shop/releases")))["items"] == [], "nothing started"

    # A release started before the freeze is stopped and undone in it.
    await ok(api.http.delete("/v1/changewindows/year-end"))
    await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)
    await release_engine.reconcile_once(api.store)
    await ok(api.http.post("/v1/apply", json={"items": [freeze(["shop"])]}))
    assert (await ok(api.http.post("/v1/apps/shop/release/pause", json={})))["phase"] == "Paused"
    assert (await ok(api.http.post("/v1/apps/shop/release/rollback", json={})))["phase"] == "RollingBack"
