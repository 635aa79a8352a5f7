"""Spec of authentication and authorization at the API, over both stores: tokens, roles, scopes, users."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ballast.core.manifests import API_VERSION
from ballast.services.access import TOKEN_PREFIX
from ballast.store.schema import tokens
from tests.conftest import Api

TEMPLATE = {"command": ["python", "-m", "app"]}


def cell(name: str = "cell-a") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": name}, "spec": {"zone": "zone-a"}}


def app(name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": name},
            "spec": {"cells": {"cell-a": 1}, "template": TEMPLATE}}


async def new_user(api: Api, name: str, role: str, apps: list[str] | None = None) -> None:
    r = await api.http.post("/v1/users", json={"name": name, "role": role, "apps": apps})
    assert r.status_code == 201, r.text


async def new_token(client: httpx.AsyncClient, user: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "test", **extra}
    if user is not None:
        body["user"] = user
    r = await client.post("/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def client_for(api: Api, name: str, role: str, apps: list[str] | None = None) -> httpx.AsyncClient:
    await new_user(api, name, role, apps)
    return api.as_((await new_token(api.http, name))["token"])


# --- authentication --------------------------------------------------------------------------------------------------


async def test_requests_without_a_token_are_401_but_healthz_is_open(api: Api) -> None:
    """Every /v1 route needs a bearer token and says how to send one; /healthz needs none."""
    anonymous = api.as_(None)
    for method, path in [("GET", "/v1/apps"), ("GET", "/v1/whoami"), ("POST", "/v1/apply"), ("DELETE", "/v1/apps/x")]:
        r = await anonymous.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["message"] == "missing bearer token: send 'Authorization: Bearer <token>'"
    r = await anonymous.get("/v1/apps", headers={"Authorization": f"Basic {api.admin_token}"})
    assert r.status_code == 401, "only the Bearer scheme authenticates"
    r = await anonymous.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "store": api.store.store_id, "replica": ""}
    assert r.headers["X-Ballast-Store"] == api.store.store_id, "which store answered, for clients to pin"


async def test_unknown_token_is_401(api: Api) -> None:
    """A token the store never issued is refused as unknown."""
    r = await api.as_(TOKEN_PREFIX + "x" * 43).get("/v1/whoami")
    assert r.status_code == 401 and r.json()["message"] == "unknown API token"


async def test_revoked_token_is_401_naming_it(api: Api) -> None:
    """After revocation a token stops working, and the refusal says it was revoked."""
    issued = await new_token(api.http)
    client = api.as_(issued["token"])
    assert (await client.get("/v1/whoami")).json()["token"] == issued["id"]
    r = await api.http.delete(f"/v1/tokens/{issued['id']}")
    assert r.status_code == 200, r.text
    r = await client.get("/v1/whoami")
    assert r.status_code == 401 and r.json()["message"] == f"API token {issued['id']} was revoked"
    r = await api.http.delete(f"/v1/tokens/{issued['id']}")
    assert r.status_code == 409 and "already revoked" in r.json()["message"]


async def test_the_last_admin_token_cannot_be_revoked(api: Api) -> None:
    """Revoking the only working token of the only admin would lock the platform out: 409, and it still works;
    with a second admin token minted, the first may go."""
    me = (await api.http.get("/v1/whoami")).json()["token"]
    r = await api.http.delete(f"/v1/tokens/{me}")
    assert r.status_code == 409, r.text
    assert r.json()["message"] == (f"revoking token {me!r} would leave no admin (for all apps) with a token that "
                                   f"works; mint another admin token first")
    assert (await api.http.get("/v1/whoami")).status_code == 200
    spare = await new_token(api.http)
    assert (await api.http.delete(f"/v1/tokens/{me}")).status_code == 200
    assert (await api.as_(spare["token"]).get("/v1/whoami")).status_code == 200


async def test_expired_token_is_401_naming_it(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token with a TTL works until the store's clock passes it, then is refused as expired."""
    issued = await new_token(api.http, ttlSeconds=60)
    client = api.as_(issued["token"])
    assert (await client.get("/v1/whoami")).status_code == 200
    later = time.time() + 61
    monkeypatch.setattr(api.store, "clock", lambda: later)
    r = await client.get("/v1/whoami")
    assert r.status_code == 401 and r.json()["message"] == f"API token {issued['id']} has expired"


# --- authorization ---------------------------------------------------------------------------------------------------


async def test_viewer_may_read_but_not_change(api: Api) -> None:
    """A viewer reads everything and is refused apply and delete with a message naming user and role."""
    assert (await api.http.post("/v1/apply", json={"items": [cell(), app("shop")]})).status_code == 200
    viewer = await client_for(api, "vera", "viewer")
    for path in ["/v1/apps", "/v1/apps/shop", "/v1/cells", "/v1/nodes", "/v1/instances", "/v1/audit",
                 "/v1/apps/shop/revisions", "/v1/users", "/v1/audit/verify", "/v1/whoami"]:
        r = await viewer.get(path)
        assert r.status_code == 200, (path, r.text)

    r = await viewer.post("/v1/apply", json={"items": [app("shop")]})
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "user 'vera' (viewer) may not apply-app on app 'shop'"
    r = await viewer.delete("/v1/apps/shop")
    assert r.status_code == 403 and r.json()["message"] == "user 'vera' (viewer) may not apply-app on app 'shop'"
    r = await viewer.delete("/v1/cells/cell-a")
    assert r.status_code == 403 and r.json()["message"] == "user 'vera' (viewer) may not manage-cells"
    assert (await api.http.get("/v1/apps/shop")).status_code == 200


async def test_operator_scoped_to_shop_changes_shop_only(api: Api) -> None:
    """An operator bound to app "shop" may apply and delete shop, not pay, not Cells; refusals store nothing."""
    assert (await api.http.post("/v1/apply", json={"items": [cell(), app("pay")]})).status_code == 200
    operator = await client_for(api, "otto", "operator", ["shop"])

    r = await operator.post("/v1/apply", json={"items": [app("shop")]})
    assert r.status_code == 200, r.text

    r = await operator.post("/v1/apply", json={"items": [app("shop"), app("pay")]})
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "user 'otto' (operator on apps ['shop']) may not apply-app on app 'pay'"
    r = await operator.post("/v1/apply", json={"items": [cell("cell-b")]})
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "user 'otto' (operator on apps ['shop']) may not manage-cells"
    assert (await operator.delete("/v1/apps/pay")).status_code == 403
    assert [c["metadata"]["name"] for c in (await api.http.get("/v1/cells")).json()["items"]] == ["cell-a"]

    # Reads are scoped too: pay is invisible in lists and refused by name; topology is readable.
    assert [a["metadata"]["name"] for a in (await operator.get("/v1/apps")).json()["items"]] == ["shop"]
    assert (await operator.get("/v1/apps/pay")).status_code == 403
    assert (await operator.get("/v1/instances", params={"app": "pay"})).status_code == 403
    assert (await operator.get("/v1/cells")).status_code == 200

    r = await operator.delete("/v1/apps/shop")
    assert r.status_code == 200, r.text
    assert [a["metadata"]["name"] for a in (await api.http.get("/v1/apps")).json()["items"]] == ["pay"]


# --- tokens ----------------------------------------------------------------------------------------------------------


async def test_token_secret_has_full_entropy_and_only_its_hash_is_stored(api: Api) -> None:
    """A token carries ≥128 random bits, is shown once, and the store keeps only its SHA-256."""
    await new_user(api, "bob", "viewer")
    issued = await new_token(api.http, "bob")
    secret = issued["token"]
    assert secret.startswith(TOKEN_PREFIX)
    assert len(secret.removeprefix(TOKEN_PREFIX)) >= 22  # urlsafe base64: 22 chars carry 132 bits
    assert secret.removeprefix(TOKEN_PREFIX).replace("-", "").replace("_", "").isalnum()

    async with api.store.read() as conn:
        row = (await conn.execute(select(tokens).where(tokens.c.id == issued["id"]))).one()
    stored = row._mapping
    assert all(secret not in str(value) for value in stored.values()), stored
    assert stored["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert (stored["user"], stored["name"]) == ("bob", "test")

    other = await new_token(api.http, "bob")
    assert other["token"] != secret


async def test_token_lists_never_include_secrets(api: Api) -> None:
    """Listing tokens shows ids, owners and dates, never a secret; non-admins see only their own."""
    await new_user(api, "bob", "viewer")
    bob_token = await new_token(api.http, "bob")
    bob = api.as_(bob_token["token"])
    own = await new_token(bob)

    r = await api.http.get("/v1/tokens")
    assert r.status_code == 200, r.text
    for secret in (api.admin_token, bob_token["token"], own["token"]):
        assert secret not in r.text
    assert all("token" not in item and "hash" not in item for item in r.json()["items"])
    assert {i["user"] for i in r.json()["items"]} == {"admin", "bob"}

    r = await bob.get("/v1/tokens")
    assert r.status_code == 200, r.text
    assert {i["id"] for i in r.json()["items"]} == {bob_token["id"], own["id"]}
    assert bob_token["token"] not in r.text and own["token"] not in r.text


async def test_users_revoke_their_own_tokens_but_only_admins_revoke_others(api: Api) -> None:
    """Anyone may revoke their own token; revoking someone else's needs an admin."""
    await new_user(api, "alice", "operator")
    await new_user(api, "bob", "viewer")
    alice_token = await new_token(api.http, "alice")
    bob_token = await new_token(api.http, "bob")
    alice, bob = api.as_(alice_token["token"]), api.as_(bob_token["token"])
    alice_spare = await new_token(alice)

    r = await bob.delete(f"/v1/tokens/{alice_spare['id']}")
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "user 'bob' (viewer) may not manage-access"
    assert (await api.as_(alice_spare["token"]).get("/v1/whoami")).status_code == 200

    r = await alice.delete(f"/v1/tokens/{alice_spare['id']}")
    assert r.status_code == 200 and r.json() == {"id": alice_spare["id"], "user": "alice"}
    assert (await api.as_(alice_spare["token"]).get("/v1/whoami")).status_code == 401

    r = await api.http.delete(f"/v1/tokens/{bob_token['id']}")
    assert r.status_code == 200, r.text
    assert (await bob.get("/v1/whoami")).status_code == 401


async def test_only_admins_issue_tokens_for_others(api: Api) -> None:
    """A non-admin may mint tokens for themself but not for another user."""
    await new_user(api, "alice", "operator")
    bob = await client_for(api, "bob", "viewer")
    r = await bob.post("/v1/tokens", json={"user": "alice", "name": "stolen"})
    assert r.status_code == 403 and r.json()["message"] == "user 'bob' (viewer) may not manage-access"
    mine = await new_token(bob)
    assert mine["user"] == "bob"
    r = await api.http.post("/v1/tokens", json={"user": "nobody"})
    assert r.status_code == 404 and r.json()["message"] == "user 'nobody' not found"


# --- users and bindings ----------------------------------------------------------------------------------------------


async def test_user_create_bind_unbind_delete(api: Api) -> None:
    """An admin creates a user, adds and removes bindings, and deleting the user revokes their tokens."""
    r = await api.http.post("/v1/users", json={"name": "carol", "role": "viewer"})
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "carol", "bindings": [{"role": "viewer", "apps": None}]}
    carol_token = await new_token(api.http, "carol")
    carol = api.as_(carol_token["token"])

    r = await api.http.post("/v1/users/carol/bindings", json={"role": "operator", "apps": ["shop", "pay", "shop"]})
    assert r.status_code == 201 and r.json() == {"user": "carol", "role": "operator", "apps": ["pay", "shop"]}
    assert (await carol.get("/v1/whoami")).json()["bindings"] == [
        {"role": "viewer", "apps": None}, {"role": "operator", "apps": ["pay", "shop"]}]
    users = {u["name"]: u for u in (await api.http.get("/v1/users")).json()["items"]}
    assert set(users) == {"admin", "carol"}
    assert [b["role"] for b in users["carol"]["bindings"]] == ["viewer", "operator"]

    r = await api.http.delete("/v1/users/carol/bindings/viewer")
    assert r.status_code == 200 and r.json() == {"user": "carol", "role": "viewer", "removed": 1}
    r = await api.http.delete("/v1/users/carol/bindings/viewer")
    assert r.status_code == 404 and r.json()["message"] == "user 'carol' has no 'viewer' binding"
    assert (await carol.get("/v1/whoami")).json()["bindings"] == [{"role": "operator", "apps": ["pay", "shop"]}]
    assert (await carol.get("/v1/cells")).status_code == 200
    assert (await carol.get("/v1/users")).status_code == 403

    r = await api.http.delete("/v1/users/carol")
    assert r.status_code == 200 and r.json() == {"deleted": "User/carol"}
    r = await carol.get("/v1/whoami")
    assert r.status_code == 401 and r.json()["message"] == f"API token {carol_token['id']} was revoked"
    assert [u["name"] for u in (await api.http.get("/v1/users")).json()["items"]] == ["admin"]
    listed = {t["id"]: t for t in (await api.http.get("/v1/tokens")).json()["items"]}
    assert listed[carol_token["id"]]["revokedAt"] is not None


BAD_USER_REQUESTS = [
    ("POST", "/v1/users", {"name": "Bad Name", "role": "viewer"}, 422, "name"),
    ("POST", "/v1/users", {"name": "dave", "role": "root"}, 422, "role"),
    ("POST", "/v1/users", {"name": "dave", "role": "viewer", "apps": ["Not_An_App"]}, 422, "apps[0]"),
    ("POST", "/v1/users", {"name": "admin", "role": "viewer"}, 409, "user 'admin' already exists"),
    ("POST", "/v1/users/ghost/bindings", {"role": "viewer"}, 404, "user 'ghost' not found"),
    ("DELETE", "/v1/users/ghost/bindings/viewer", None, 404, "user 'ghost' not found"),
    ("DELETE", "/v1/users/admin/bindings/wizard", None, 422, "role"),
    ("DELETE", "/v1/users/admin", None, 409, "you cannot delete your own user"),
    ("DELETE", "/v1/users/admin/bindings/admin", None, 409, "unbinding 'admin' from 'admin' would leave no admin (a "
     "user with the admin role for all apps); make another admin first"),
]


async def test_bad_user_requests_are_refused_with_reasons(api: Api) -> None:
    """Invalid or conflicting user requests are 4xx naming the field or the conflict, and change nothing."""
    for method, path, body, status, expected in BAD_USER_REQUESTS:
        r = await api.http.request(method, path, json=body)
        assert r.status_code == status, (method, path, body, r.text)
        answer = r.json()
        if status == 422:
            assert [p["path"] for p in answer["problems"]] == [expected], (method, path, body, answer)
        else:
            assert answer["message"] == expected, (method, path, body, answer)
    assert [u["name"] for u in (await api.http.get("/v1/users")).json()["items"]] == ["admin"]
    assert (await api.http.get("/v1/whoami")).json()["bindings"] == [{"role": "admin", "apps": None}]


async def test_only_admins_manage_users(api: Api) -> None:
    """An operator may not create, bind or delete users."""
    operator = await client_for(api, "otto", "operator")
    for method, path, body in [("POST", "/v1/users", {"name": "eve", "role": "admin"}),
                               ("POST", "/v1/users/otto/bindings", {"role": "admin"}),
                               ("DELETE", "/v1/users/admin", None)]:
        r = await operator.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["message"] == "user 'otto' (operator) may not manage-access"
    assert (await operator.get("/v1/whoami")).json()["bindings"] == [{"role": "operator", "apps": None}]
