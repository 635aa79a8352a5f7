"""Shared fixtures: real stores (SQLite file, PostgreSQL database) and the API in-process.

PostgreSQL tests need BALLAST_TEST_PG_URL (scripts/postgres-for-tests.sh prints one);
without it they are skipped, unless BALLAST_REQUIRE_PG=1 (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from ballast.api.app import create_app
from ballast.services.access import bootstrap_admin
from ballast.store.engine import Store

PG_URL = os.environ.get("BALLAST_TEST_PG_URL")


def _require_pg() -> str:
    if not PG_URL:
        if os.environ.get("BALLAST_REQUIRE_PG") == "1":
            pytest.fail("BALLAST_REQUIRE_PG=1 but BALLAST_TEST_PG_URL is not set")
        pytest.skip("PostgreSQL not configured (set BALLAST_TEST_PG_URL)")
    return PG_URL


async def _pg_admin(sql: str) -> None:
    import asyncpg  # the driver the store uses; no extra dependency

    url = make_url(_require_pg())
    conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host or "127.0.0.1",
                                 port=url.port or 5432, database=url.database or "postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store_url(store_kind: str, tmp_path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A new, empty store per test: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if store_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ballast.db'}"
        return
    base = _require_pg()
    name = "ballast_t_" + secrets.token_hex(4)
    await _pg_admin(f'CREATE DATABASE "{name}"')
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    await _drop_database(name)


async def _drop_database(name: str) -> None:
    """Drop a test database; an autovacuum worker that just started there can refuse FORCE once, so retry."""
    import asyncpg

    for attempt in range(5):
        try:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (asyncpg.exceptions.InsufficientPrivilegeError, asyncpg.exceptions.ObjectInUseError):
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await Store.open(store_url)
    yield s
    await s.close()


@dataclass
class Api:
    store: Store
    admin_token: str
    http: httpx.AsyncClient

    def as_(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.http._transport.app),  # type: ignore[attr-defined]
                                 base_url="http://ballast", headers=headers)


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    """The real API app over a real store, called in-process (no sockets)."""
    token = await bootstrap_admin(store)
    assert token is not None
    app = create_app(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ballast",
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        yield Api(store=store, admin_token=token, http=http)


async def join_component(api: Api, kind: str, name: str) -> dict[str, str]:
    """An admin's join token for `kind`/`name`, exchanged for its own credential: {"token", "id", "user"}."""
    made = await api.http.post("/v1/join-tokens", json={"kind": kind, "name": name})
    assert made.status_code == 201, made.text
    async with api.as_(made.json()["token"]) as joiner:
        joined = await joiner.post("/v1/join", json={"kind": kind, "name": name})
    assert joined.status_code == 200, joined.text
    return {k: joined.json()[k] for k in ("token", "id", "user")}


class Fleet:
    """Nodes and gateways each with its own credential (joined on first use), the one a path names speaking for
    it: `/v1/nodes/NAME/...` as node NAME, `/v1/gateways/NAME/...` as gateway NAME, anything else as the first
    component that joined."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.clients: dict[tuple[str, str], httpx.AsyncClient] = {}

    async def client(self, kind: str, name: str) -> httpx.AsyncClient:
        if (kind, name) not in self.clients:
            self.clients[(kind, name)] = self.api.as_((await join_component(self.api, kind, name))["token"])
        return self.clients[(kind, name)]

    async def _for(self, path: str) -> httpx.AsyncClient:
        parts = path.split("/")
        if len(parts) > 3 and parts[1] == "v1" and parts[2] in ("nodes", "gateways"):
            return await self.client("node" if parts[2] == "nodes" else "gateway", parts[3])
        return next(iter(self.clients.values())) if self.clients else await self.client("node", "reader")

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await (await self._for(path)).get(path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return await (await self._for(path)).put(path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await (await self._for(path)).post(path, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await (await self._for(path)).request(method, path, **kwargs)
