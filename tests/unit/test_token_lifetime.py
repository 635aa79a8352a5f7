"""Spec of token lifetimes: a token mints only tokens that expire no later than itself, every token but the
bootstrap admin's has the platform's longest lifetime at most, and revoking says nothing of others' tokens."""

from __future__ import annotations

import time
from typing import AsyncIterator

import httpx
import pytest

from ballast.api.app import create_app
from ballast.services.access import DEFAULT_MAX_TOKEN_SECONDS, TokenPolicy
from tests.conftest import Api
from tests.unit.test_api_access import client_for, new_token


async def test_a_short_lived_token_cannot_mint_a_longer_one(api: Api) -> None:
    viewer = await client_for(api, "vera", "viewer")
    short = await new_token(viewer, ttlSeconds=60)
    short_client = api.as_(short["token"])
    child = await new_token(short_client)
    assert child["expiresAt"] == pytest.approx(short["expiresAt"]), "without a ttl it ends with its parent"
    r = await short_client.post("/v1/tokens", json={"ttlSeconds": 3600})
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "ttlSeconds" and "may not outlive the token that mints it" in problem["expected"]
    shorter = await new_token(short_client, ttlSeconds=30)
    assert shorter["expiresAt"] <= short["expiresAt"]
    tokens = (await api.http.get("/v1/tokens")).json()["items"]
    assert len([t for t in tokens if t["user"] == "vera"]) == 4, "the refused one was not created (client_for minted one)"


async def test_every_token_but_the_bootstraps_has_the_longest_lifetime_at_most(api: Api) -> None:
    before = time.time()
    minted = await new_token(api.http)   # minted with the bootstrap token, which never expires itself
    assert before + DEFAULT_MAX_TOKEN_SECONDS - 5 <= minted["expiresAt"] <= time.time() + DEFAULT_MAX_TOKEN_SECONDS
    r = await api.http.post("/v1/tokens", json={"ttlSeconds": DEFAULT_MAX_TOKEN_SECONDS + 60})
    assert r.status_code == 422 and "longest token lifetime" in r.json()["problems"][0]["expected"], r.text
    bootstrap = [t for t in (await api.http.get("/v1/tokens")).json()["items"] if t["name"] == "bootstrap"]
    assert [t["expiresAt"] for t in bootstrap] == [None]


@pytest.fixture
async def strict(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api.store, token_policy=TokenPolicy(max_seconds=120))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ballast",
                                 headers={"Authorization": f"Bearer {api.admin_token}"}) as client:
        yield client


async def test_the_platform_sets_the_longest_lifetime(strict: httpx.AsyncClient) -> None:
    r = await strict.post("/v1/tokens", json={"ttlSeconds": 121})
    assert r.status_code == 422, r.text
    r = await strict.post("/v1/tokens", json={})
    assert r.status_code == 201 and r.json()["expiresAt"] <= time.time() + 120


async def test_revoking_a_token_not_ones_own_is_403_whether_or_not_it_exists(api: Api) -> None:
    viewer = await client_for(api, "vera", "viewer")
    other = await new_token(api.http)
    own = await new_token(viewer)
    missing = await viewer.delete("/v1/tokens/tok_000000000000")
    foreign = await viewer.delete(f"/v1/tokens/{other['id']}")
    assert missing.status_code == foreign.status_code == 403
    assert missing.json()["message"] == foreign.json()["message"], "the answer does not tell which ids exist"
    assert (await viewer.delete(f"/v1/tokens/{own['id']}")).status_code == 200
    assert (await api.http.delete("/v1/tokens/tok_000000000000")).status_code == 404, "an admin may know"
