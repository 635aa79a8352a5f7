"""Spec of the API client against several control plane replicas: it sticks to the one that answers, tries the
next on a transport error or a 503 of a replica whose store is down, never repeats a request the server may have
acted on elsewhere, and refuses an answer from a store other than the one it first heard from."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import httpx
import pytest

from ballast.cli import config as client_config
from ballast.client import Client, StoreMismatch, Unreachable, server_list

A, B, C = "http://a:7700", "http://b:7700", "http://c:7700"


def replicas(answers: dict[str, Callable[[httpx.Request], httpx.Response]], calls: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        calls.append(f"{request.method} {base}{request.url.path}")
        return answers[base](request)
    return httpx.MockTransport(handle)


def ok(store: str = "s1") -> Callable[[httpx.Request], httpx.Response]:
    return lambda r: httpx.Response(200, json={"answered": str(r.url.host)}, headers={"X-Ballast-Store": store})


def down(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def fail(r: httpx.Request) -> httpx.Response:
        raise exc("gone", request=r)
    return fail


def store_down(r: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": "StoreUnavailable", "message": "the store is unavailable"},
                          headers={"X-Ballast-Store": "s1"})


@pytest.mark.parametrize("given, urls", [
    ("http://a:7700", [A]),
    ("http://a:7700/, http://b:7700", [A, B]),
    ([A, f"{B},{C}"], [A, B, C]),
])
def test_one_url_or_several(given: str | list[str], urls: list[str]) -> None:
    assert server_list(given) == urls


async def test_a_dead_replica_is_skipped_and_the_one_that_answers_is_kept() -> None:
    calls: list[str] = []
    transport = replicas({A: down(httpx.ConnectError), B: ok(), C: ok()}, calls)
    async with Client([A, B, C], "t", transport=transport) as client:
        assert (await client.get("/v1/apps"))["answered"] == "b"
        assert (await client.get("/v1/nodes"))["answered"] == "b"
        assert client.server == B
    assert calls == [f"GET {A}/v1/apps", f"GET {B}/v1/apps", f"GET {B}/v1/nodes"]


async def test_a_replica_whose_store_is_down_passes_the_request_on() -> None:
    calls: list[str] = []
    async with Client(f"{A},{B}", "t", transport=replicas({A: store_down, B: ok()}, calls)) as client:
        assert (await client.post("/v1/apply", {}))["answered"] == "b"


async def test_a_request_the_server_may_have_acted_on_is_not_repeated_elsewhere() -> None:
    calls: list[str] = []
    async with Client([A, B], "t", transport=replicas({A: down(httpx.ReadError), B: ok()}, calls)) as client:
        with pytest.raises(Unreachable, match="not repeated"):
            await client.post("/v1/tokens", {})
        assert calls == [f"POST {A}/v1/tokens"]
        assert (await client.post("/v1/tokens", {}))["answered"] == "b", "the next request goes to the next replica"


async def test_requests_in_flight_on_a_paused_replica_all_leave_it_for_the_same_next_one() -> None:
    """A paused replica holds every request sent to it (the agent's report, its assignments and registry polls)
    until each times out. The first failure moves the client on; the later ones find it moved already and must not
    step it further: three steps round three replicas would land it back on the paused one, again and again."""
    calls: list[str] = []
    release = asyncio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        calls.append(f"{base}{request.url.path}")
        if base == A:
            await release.wait()
            raise httpx.ReadTimeout("paused", request=request)
        return httpx.Response(200, json={"answered": str(request.url.host)}, headers={"X-Ballast-Store": "s1"})

    async with Client([A, B, C], "t", transport=httpx.MockTransport(handle)) as client:
        held = [asyncio.create_task(client.get(path)) for path in ("/v1/report", "/v1/assignments", "/v1/registry")]
        while len(calls) < 3:
            await asyncio.sleep(0)
        release.set()
        answers = await asyncio.gather(*held)
        assert [a["answered"] for a in answers] == ["b", "b", "b"]
        assert client.server == B
        assert (await client.get("/v1/later"))["answered"] == "b"
    assert [c for c in calls if c.startswith(A)] == [f"{A}/v1/report", f"{A}/v1/assignments", f"{A}/v1/registry"]


async def test_every_replica_down_is_one_error_naming_each() -> None:
    calls: list[str] = []
    transport = replicas({A: down(httpx.ConnectError), B: down(httpx.ConnectError)}, calls)
    async with Client([A, B], "t", transport=transport) as client:
        with pytest.raises(Unreachable) as failed:
            await client.get("/v1/apps")
    assert A in failed.value.message and B in failed.value.message


async def test_an_answer_from_another_store_is_refused_naming_both() -> None:
    calls: list[str] = []
    transport = replicas({A: down(httpx.ConnectError), B: ok("s2"), C: ok("s1")}, calls)
    async with Client([C, A, B], "t", transport=transport) as client:
        await client.get("/v1/apps")                       # pins s1 at C
        client._current = 1                               # as if C had failed since
        with pytest.raises(StoreMismatch) as refused:
            await client.get("/v1/apps")
    assert all(s in refused.value.message for s in ("s1", "s2", B, C)), refused.value.message


async def test_replicas_of_different_stores_are_found_at_start() -> None:
    calls: list[str] = []
    transport = replicas({A: ok("s1"), B: down(httpx.ConnectError), C: ok("s2")}, calls)
    async with Client([A, B, C], None, transport=transport) as client:
        with pytest.raises(StoreMismatch, match="different stores"):
            await client.check_replicas()
    transport = replicas({A: ok("s1"), B: down(httpx.ConnectError), C: ok("s1")}, calls)
    async with Client([A, B, C], None, transport=transport) as client:
        assert await client.check_replicas() == {A: "s1", B: None, C: "s1"}


def test_the_client_config_holds_one_url_or_a_list(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    client_config.write(path, f"{A},{B}", "tok")
    assert "- http://a:7700" in path.read_text()
    assert client_config.load(str(path)).server == f"{A},{B}"
    client_config.write(path, A, "tok")
    assert client_config.load(str(path)).server == A


def test_with_several_replicas_a_long_poll_is_short_so_a_paused_one_is_left_within_seconds() -> None:
    from ballast.client import Client
    from ballast.dataplane.component import POLL_SECONDS, REPLICATED_POLL_SECONDS, poll_seconds
    assert poll_seconds(Client("http://127.0.0.1:1", None)) == POLL_SECONDS
    assert poll_seconds(Client(["http://127.0.0.1:1", "http://127.0.0.1:2"], None)) == REPLICATED_POLL_SECONDS
    assert REPLICATED_POLL_SECONDS < POLL_SECONDS
