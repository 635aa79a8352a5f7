"""Release orders through the API over both stores: apply and its refusals, maker-checker approval, change
windows and emergency starts, one order per app at a time, list filters and statistics.

The engine's execution of an order runs on the real platform (tests/e2e/test_orders.py); here the apps
have no instances, so nothing is released and every check is about the records and the refusals.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from ballast.controllers import orders as order_engine
from ballast.core.manifests import API_VERSION
from tests.conftest import Api


async def ok(response: Any, status: int = 200) -> Any:
    r = await response
    assert r.status_code == status, r.text
    return r.json()


def app(name: str, greeting: str = "hi") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": name},
            "spec": {"cells": {"cell-a": 0}, "template": {"command": ["python3", "app.py"], "env": {"G": greeting}}}}


def order(name: str, releases: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": name},
            "spec": {"title": f"change {name}", "ticket": "CHG-1", "releases": releases, **spec}}


def window(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ChangeWindow", "metadata": {"name": name}, "spec": spec}


ABCD = [{"app": "a"}, {"app": "b", "after": ["a"]}, {"app": "c", "after": ["b"]}, {"app": "d"}]


async def user(api: Api, name: str, role: str, apps: list[str] | None = None) -> httpx.AsyncClient:
    await ok(api.http.post("/v1/users", json={"name": name, "role": role, "apps": apps}), 201)
    token = (await ok(api.http.post("/v1/tokens", json={"user": name, "name": name}), 201))["token"]
    return api.as_(token)


async def four_apps_at_revision_2(api: Api) -> None:
    cell = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "z"}}
    await ok(api.http.post("/v1/apply", json={"items": [cell, *(app(n) for n in "abcd")]}))
    await ok(api.http.post("/v1/apply", json={"items": [app(n, "v2") for n in "abcd"]}))


async def audit(api: Api) -> list[dict[str, Any]]:
    return (await ok(api.http.get("/v1/audit", params={"limit": 10_000})))["items"]  # type: ignore[no-any-return]


async def test_bad_orders_are_refused_with_the_field_and_change_nothing(api: Api) -> None:
    await four_apps_at_revision_2(api)
    before = len(await audit(api))
    cases = [
        (order("o", [{"app": "a"}, {"app": "zz"}]), "items[0].spec.releases[1].app", "an existing AppService"),
        (order("o", [{"app": "a", "after": ["b"]}, {"app": "b", "after": ["a"]}]), "items[0].spec.releases[0].after",
         "without a cycle"),
        (order("o", [{"app": "a", "after": ["c"]}]), "items[0].spec.releases[0].after[0]", "an app of this order"),
        (order("o", [{"app": "a", "toRevision": 9}]), "items[0].spec.releases[0].toRevision", "[1, 2]"),
        (order("o", [{"app": "a", "strategy": {"groups": 0}}]), "items[0].spec.releases[0].strategy.groups", ""),
        (order("o", []), "items[0].spec.releases", ""),
        (window("w", timeZone="Mars/Olympus"), "items[0].spec.timeZone", "IANA"),
        (window("w", allowed=[{"days": ["funday"], "start": "09:00", "end": "17:00"}]),
         "items[0].spec.allowed[0].days", "a day of the week"),
    ]
    for doc, path, words in cases:
        r = await api.http.post("/v1/apply", json={"items": [doc]})
        assert r.status_code == 422, (path, r.text)
        problems = r.json()["problems"]
        assert any(p["path"] == path and words in p["expected"] for p in problems), (path, problems)
    assert (await ok(api.http.get("/v1/orders")))["items"] == []
    added = (await audit(api))[before:]
    assert len(added) == len(cases) and all(a["result"] == "refused: HTTP 422" for a in added), \
        "each refusal is recorded as an attempt, nothing else"


async def test_maker_checker_approval_and_voiding(api: Api) -> None:
    await four_apps_at_revision_2(api)
    alice = await user(api, "alice", "operator")
    bob = await user(api, "bob", "approver")
    carol = await user(api, "carol", "viewer")
    scoped = await user(api, "erin", "approver", ["a", "b"])
    [result] = (await ok(alice.post("/v1/apply", json={"items": [order("chg", ABCD, approvals=1)]})))["results"]
    assert result == {"kind": "ReleaseOrder", "name": "chg", "outcome": "created"}
    again = await ok(alice.post("/v1/apply", json={"items": [order("chg", ABCD, approvals=1)]}))
    assert again["results"][0]["outcome"] == "unchanged"
    status = await ok(alice.get("/v1/orders/chg"))
    assert status["status"]["phase"] == "PendingApproval" and status["status"]["author"] == "alice"
    assert [r["toRevision"] for r in status["spec"]["releases"]] == [2, 2, 2, 2], "targets are snapshotted"

    r = await alice.post("/v1/orders/chg/approve", json={"comment": "mine"})
    assert r.status_code == 403 and "maker-checker" in r.json()["message"] and "alice" in r.json()["message"]
    r = await carol.post("/v1/orders/chg/approve", json={})
    assert r.status_code == 403 and "approver" in r.json()["message"]
    r = await scoped.post("/v1/orders/chg/approve", json={})
    assert r.status_code == 403 and "'c'" in r.json()["message"], "an approver must cover every app of the order"
    r = await alice.post("/v1/orders/chg/start", json={})
    assert r.status_code == 409 and "PendingApproval" in r.json()["message"]

    approved = await ok(bob.post("/v1/orders/chg/approve", json={"comment": "looks right"}))
    assert approved["phase"] == "Approved"
    r = await bob.post("/v1/orders/chg/approve", json={})
    assert r.status_code == 409

    changed = [*ABCD[:3], {"app": "d", "toRevision": 1}]
    await ok(alice.post("/v1/apply", json={"items": [order("chg", changed, approvals=1)]}))
    status = await ok(alice.get("/v1/orders/chg"))
    assert status["status"]["phase"] == "PendingApproval", "a change voids the approvals"
    assert [a["valid"] for a in status["status"]["approvals"]] == [False]
    r = await bob.post("/v1/orders/chg/reject", json={"comment": ""})
    assert r.status_code == 422
    rejected = await ok(bob.post("/v1/orders/chg/reject", json={"comment": "d must not go back"}))
    assert rejected["phase"] == "Rejected"
    actions = [a["action"] for a in await audit(api) if a["resource"] == "ReleaseOrder/chg"]
    assert actions == ["order.create", "apply", "order.approve", "order.change", "order.reject"]
    denied = [a for a in await audit(api) if a["resource"] == "/v1/orders/chg/approve"]
    assert len(denied) == 4 and all(a["result"].startswith("refused") for a in denied), \
        "refused approvals are on the record too"


async def test_windows_emergencies_and_one_order_per_app(api: Api) -> None:
    await four_apps_at_revision_2(api)
    alice = await user(api, "alice", "operator")
    bob = await user(api, "bob", "approver")
    dave = await user(api, "dave", "emergency-approver")
    now = datetime.now(timezone.utc)
    freeze = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat(),
              "reason": "year-end freeze"}
    await ok(api.http.post("/v1/apply", json={"items": [window("freeze", freezes=[freeze], apps=["a"])]}))
    r = await alice.post("/v1/apply", json={"items": [window("mine")]})
    assert r.status_code == 403, "change windows are the platform owners'"
    await ok(alice.post("/v1/apply", json={"items": [order("chg", ABCD)]}))
    await ok(bob.post("/v1/orders/chg/approve", json={}))
    before = len(await audit(api))

    r = await alice.post("/v1/orders/chg/start", json={})
    assert r.status_code == 409 and "year-end freeze" in r.json()["message"] and "emergency" in r.json()["message"]
    r = await alice.post("/v1/orders/chg/start", json={"emergency": True})
    assert r.status_code == 403 and "emergency-approver" in r.json()["message"]
    r = await bob.post("/v1/orders/chg/approve", json={"emergency": True})
    assert r.status_code == 403, "an approver is not an emergency approver"
    assert (await ok(alice.get("/v1/orders/chg")))["status"]["phase"] == "Approved"
    assert [a["result"] for a in (await audit(api))[before:]] == ["refused: HTTP 409", "refused: HTTP 403",
                                                                  "refused: HTTP 403"]

    await ok(dave.post("/v1/orders/chg/approve", json={"emergency": True, "comment": "payment outage"}))
    started = await ok(alice.post("/v1/orders/chg/start", json={"emergency": True}))
    assert started == {"name": "chg", "phase": "Running", "emergency": True}
    [record] = [a for a in await audit(api) if a["action"] == "order.start"]
    assert record["actor"] == "alice" and record["detail"]["emergency"] is True
    assert "year-end freeze" in record["detail"]["outsideWindow"][0]

    r = await alice.post("/v1/apps/b/releases", json={})
    assert r.status_code == 409 and "chg" in r.json()["message"], "an app under an order is released by the order"
    await ok(alice.post("/v1/apply", json={"items": [order("second", [{"app": "d"}])]}))
    await ok(bob.post("/v1/orders/second/approve", json={}))
    r = await alice.post("/v1/orders/second/start", json={})
    assert r.status_code == 409 and "'chg'" in r.json()["message"]
    r = await alice.post("/v1/apply", json={"items": [order("chg", ABCD[:2])]})
    assert r.status_code == 409 and "Running" in r.json()["message"], "a running order cannot change"

    paused = await ok(alice.post("/v1/orders/chg/pause", json={}))
    assert paused["phase"] == "Paused"
    r = await alice.post("/v1/orders/chg/pause", json={})
    assert r.status_code == 409
    r = await alice.post("/v1/orders/chg/resume", json={"expectPhase": "Running"})
    assert r.status_code == 409 and "Paused" in r.json()["message"]

    listed = await ok(api.http.get("/v1/orders", params={"app": "d"}))
    assert [o["metadata"]["name"] for o in listed["items"]] == ["chg", "second"]
    assert listed["stats"]["byPhase"] == {"Paused": 1, "Approved": 1}
    assert (await ok(api.http.get("/v1/orders", params={"state": "Approved"})))["items"][0]["metadata"]["name"] == "second"
    assert (await ok(api.http.get("/v1/orders", params={"author": "nobody"})))["items"] == []
    later = (now + timedelta(days=1)).date().isoformat()
    assert (await ok(api.http.get("/v1/orders", params={"since": later})))["items"] == []
    r = await api.http.get("/v1/orders", params={"since": "yesterday"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "since"
    r = await api.http.get("/v1/orders", params={"state": "Happy"})
    assert r.status_code == 422


async def test_bad_requests_to_order_routes_are_4xx_naming_the_field(api: Api) -> None:
    await four_apps_at_revision_2(api)
    await ok(api.http.post("/v1/apply", json={"items": [order("chg", ABCD)]}))
    before = await ok(api.http.get("/v1/orders/chg"))
    cases = [
        ("post", "/v1/orders/chg/approve", {"comment": 5}, 422, "comment"),
        ("post", "/v1/orders/chg/approve", {"emergency": "maybe"}, 422, "emergency"),
        ("post", "/v1/orders/chg/approve", {"extra": 1}, 422, "extra"),
        ("post", "/v1/orders/chg/start", {"emergency": []}, 422, "emergency"),
        ("post", "/v1/orders/chg/pause", {"expectPhase": "x" * 40}, 422, "expectPhase"),
        ("post", "/v1/orders/nope/approve", {}, 404, None),
        ("get", "/v1/orders/chg/report?format=pdf", None, 422, "format"),
        ("post", "/v1/audit/verify", {"records": []}, 422, "records"),
        ("post", "/v1/audit/verify", {"records": [{"seq": 0, "hash": "x"}]}, 422, "records[0].seq"),
        ("delete", "/v1/changewindows/nope", None, 404, None),
    ]
    for method, path, body, status, field in cases:
        r = await (api.http.request(method.upper(), path, json=body) if body is not None
                   else api.http.request(method.upper(), path))
        assert r.status_code == status, (path, body, r.text)
        if field is not None:
            assert any(field in p["path"] for p in r.json()["problems"]), (path, r.json())
    freeze = {"from": "2026-12-24T00:00+01:00", "to": "2026-12-25T00:00"}
    r = await api.http.post("/v1/apply", json={"items": [window("w", freezes=[freeze])]})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "items[0].spec.freezes[0]"
    after = await ok(api.http.get("/v1/orders/chg"))
    assert after == before, "refused requests change nothing"


async def test_an_approval_counts_only_through_a_binding_older_than_the_order_and_granted_by_no_author(api: Api) -> None:
    """Maker-checker is per binding, not per identity: an author cannot approve through an approver it made, and no
    approver made after the order was written counts (rebinding makes a new binding)."""
    await four_apps_at_revision_2(api)
    alice = await user(api, "alice", "operator")
    bob = await user(api, "bob", "approver")               # bound by the admin before any order
    erin = await user(api, "erin", "approver")
    await ok(api.http.post("/v1/apply", json={"items": [order("admins", [{"app": "a"}])]}))
    await ok(alice.post("/v1/apply", json={"items": [order("chg", [{"app": "b"}])]}))
    before = len(await audit(api))

    # The admin wrote "admins", then made an approver and minted its token: that approval does not count.
    mallory = await user(api, "mallory", "approver")
    r = await mallory.post("/v1/orders/admins/approve", json={"comment": "sure"})
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert "binding approver for mallory was granted by admin, an author of order admins" in message, message
    assert "was made after order admins was written (at " in message, message
    # ... and a binding granted by a non-author after the order was written does not count either.
    r = await mallory.post("/v1/orders/chg/approve", json={})
    assert r.status_code == 403 and "was made after order chg was written (at " in r.json()["message"], r.text
    assert "granted by admin" not in r.json()["message"], "the admin is no author of chg"
    # Rebinding makes a new binding: erin's old one counted, the new one is younger than the order.
    await ok(api.http.request("DELETE", "/v1/users/erin/bindings/approver"))
    await ok(api.http.post("/v1/users/erin/bindings", json={"role": "approver"}), 201)
    r = await erin.post("/v1/orders/chg/approve", json={})
    assert r.status_code == 403 and "binding approver for erin was made after order chg was written" in r.text, r.text
    for name in ("admins", "chg"):
        status = await ok(api.http.get(f"/v1/orders/{name}"))
        assert status["status"]["phase"] == "PendingApproval" and status["status"]["approvals"] == []
    refused = (await audit(api))[before:]
    assert [a["result"] for a in refused if "/approve" in a["resource"]] == ["refused: HTTP 403"] * 3

    # An approver bound before the order, by someone who did not write it, counts.
    assert (await ok(bob.post("/v1/orders/chg/approve", json={"comment": "checked"})))["phase"] == "Approved"
    # Older than the order but granted by its author: the admin made every approver there is, so none counts.
    r = await bob.post("/v1/orders/admins/approve", json={})
    assert r.status_code == 403 and "binding approver for bob was granted by admin, an author of order admins" \
        in r.json()["message"] and "made after" not in r.json()["message"], r.text


async def _app_row(api: Api, name: str) -> dict[str, Any]:
    return await ok(api.http.get(f"/v1/apps/{name}"))  # type: ignore[no-any-return]


async def test_an_app_under_an_active_order_refuses_every_direct_change_until_the_order_ends(api: Api) -> None:
    """Running, Paused and RollingBack orders own their apps: a changed template, instance counts, routes or
    traffic settings, a deletion and a direct release are 409 naming the order, the whole apply is refused and
    audited as refused, and nothing is stored; an unchanged re-apply is fine. Before its start and after its end
    the app is the operators' again."""
    await four_apps_at_revision_2(api)
    alice = await user(api, "alice", "operator")
    bob = await user(api, "bob", "approver")
    await ok(alice.post("/v1/apply", json={"items": [order("chg", [{"app": "b"}])]}))
    pending = await ok(alice.post("/v1/apply", json={"items": [app("b", "v3")]}))
    assert pending["results"][0]["revision"] == 3, "an order not yet started does not hold its app"
    await ok(alice.post("/v1/apply", json={"items": [app("b", "v2")]}))
    await ok(bob.post("/v1/orders/chg/approve", json={}))
    await ok(alice.post("/v1/orders/chg/start", json={}))
    before = await _app_row(api, "b")
    audited = len(await audit(api))

    exposed = app("b", "v2")
    exposed["spec"]["expose"] = {"host": "b.local", "path": "/"}
    slower = app("b", "v2")
    slower["spec"]["traffic"] = {"drainTimeoutSeconds": 5}
    scaled = app("b", "v2")
    scaled["spec"]["cells"] = {"cell-a": 3}
    changes = [("template", [app("b", "v4")]), ("instance counts", [scaled]), ("routes (expose)", [exposed]),
               ("traffic settings", [slower]), ("template", [app("e"), app("b", "v4")])]
    for what, items in changes:
        r = await alice.post("/v1/apply", json={"items": items})
        assert r.status_code == 409, (what, r.text)
        message = r.json()["message"]
        assert f"change of {what}" in message and "release order 'chg' (Running)" in message, message
        assert "nothing was applied" in message, message
    r = await alice.delete("/v1/apps/b")
    assert r.status_code == 409 and "app 'b' is under release order 'chg'" in r.json()["message"], r.text
    assert "deletion" in r.json()["message"]
    r = await alice.post("/v1/apps/b/releases", json={})
    assert r.status_code == 409 and "release order 'chg'" in r.json()["message"], r.text
    await ok(alice.post("/v1/orders/chg/pause", json={}))
    r = await alice.post("/v1/apply", json={"items": [scaled]})
    assert r.status_code == 409 and "release order 'chg' (Paused)" in r.json()["message"], r.text

    assert await _app_row(api, "b") == before, "nothing changed"
    r = await api.http.get("/v1/apps/e")
    assert r.status_code == 404, "all or nothing: the other app of a refused apply is not created"
    refused = (await audit(api))[audited:]
    assert [a["result"] for a in refused if a["action"] != "order.pause"] == ["refused: HTTP 409"] * 8
    unchanged = await ok(alice.post("/v1/apply", json={"items": [app("b", "v2")]}))
    assert unchanged["results"][0]["outcome"] == "unchanged"

    # Rolled back (nothing had been released), the order has ended and the app is the operators' again.
    await ok(alice.post("/v1/orders/chg/rollback", json={}))
    await order_engine.reconcile_once(api.store)
    assert (await ok(alice.get("/v1/orders/chg")))["status"]["phase"] == "RolledBack"
    after = await ok(alice.post("/v1/apply", json={"items": [scaled]}))
    assert after["results"][0]["outcome"] == "configured"


async def test_a_change_window_binds_direct_changes_not_only_orders(api: Api) -> None:
    """In a freeze, a direct release start, a change of instance counts, routes or traffic, and a deletion of a
    covered app are 409 naming the window (a release is told the emergency path: an emergency order); a new
    template is only recorded, so it goes through; apps the window does not cover change freely."""
    await four_apps_at_revision_2(api)
    now = datetime.now(timezone.utc)
    freeze = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat(),
              "reason": "year-end freeze"}
    await ok(api.http.post("/v1/apply", json={"items": [window("year-end", freezes=[freeze], apps=["a"])]}))
    before = await _app_row(api, "a")
    audited = len(await audit(api))

    r = await api.http.post("/v1/apps/a/releases", json={})
    assert r.status_code == 409, r.text
    message = r.json()["message"]
    assert "change window 'year-end': frozen until" in message and "year-end freeze" in message, message
    assert "ballast order start NAME --emergency" in message, message
    scaled = app("a", "hi")
    scaled["spec"]["cells"] = {"cell-a": 2}
    exposed = app("a", "hi")
    exposed["spec"]["expose"] = {"host": "a.local", "path": "/"}
    for items in ([scaled], [exposed], [app("b", "v3"), scaled]):
        r = await api.http.post("/v1/apply", json={"items": items})
        assert r.status_code == 409 and "change window 'year-end'" in r.json()["message"], r.text
        assert "no emergency order" in r.json()["message"], r.text
    r = await api.http.delete("/v1/apps/a")
    assert r.status_code == 409 and "change window 'year-end'" in r.json()["message"], r.text
    assert await _app_row(api, "a") == before and (await _app_row(api, "b"))["status"]["latestRevision"] == 2
    refused = (await audit(api))[audited:]
    assert [x["result"] for x in refused] == ["refused: HTTP 409"] * 5, "each refusal is on the record"

    recorded = await ok(api.http.post("/v1/apply", json={"items": [app("a", "v3")]}))
    assert recorded["results"][0]["revision"] == 3, "a new revision is a record: the window lets it through"
    assert (await _app_row(api, "a"))["status"]["deployedRevision"] == 1
    free = await ok(api.http.post("/v1/apply", json={"items": [app("b", "v3")]}))
    assert free["results"][0]["outcome"] == "configured", "b is not covered by the window"
