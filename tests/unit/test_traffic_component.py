"""Spec of the one traffic-component loop, against the real control plane in-process: it applies each new
generation, acknowledges what is in effect with the configuration's digest, and registers again when the
control plane has forgotten it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from ballast.api.app import create_app
from ballast.client import Client
from ballast.core.backoff import Backoff
from ballast.dataplane.component import Applied, TrafficComponent, combined_digest, register
from ballast.store.schema import components
from ballast.wire.registry import Snapshot
from tests.conftest import Api, join_component
from tests.unit.test_api_registry import ok, shop

CELLS = [{"apiVersion": "ballast.io/v1alpha1", "kind": "Cell", "metadata": {"name": c}, "spec": {"zone": "z"}}
         for c in ("cell-a", "cell-b")]


class Recorder:
    """An applier that records what it was given and claims it in effect, or refuses while `refuse` is set."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.refuse = ""
        self.applied = asyncio.Event()

    async def apply(self, snapshot: Snapshot) -> Applied:
        self.seen.append(snapshot.generation)
        self.applied.set()
        if self.refuse:
            return Applied(0, "", self.refuse)
        return Applied(snapshot.generation, f"digest-{snapshot.generation}")


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not true within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def test_it_applies_acknowledges_with_the_digest_and_registers_again_when_forgotten(api: Api) -> None:
    credential = (await join_component(api, "gateway", "edge"))["token"]
    client = Client("http://ballast", credential, transport=httpx.ASGITransport(app=create_app(api.store)))
    recorder = Recorder()
    stop = asyncio.Event()

    async def registration(stop: asyncio.Event) -> None:
        await register(stop, lambda: client.put("/v1/gateways/edge", {"address": "127.0.0.1:8080"}), "gateway edge")

    component = TrafficComponent(client, recorder, ack_path="/v1/gateways/edge/ack", label="gateway edge",
                                 reregister=registration)
    await registration(stop)
    task = asyncio.create_task(component.run(stop))

    async def gateway() -> dict[str, Any]:
        r = await api.http.get("/v1/gateways/edge")
        return r.json()["status"] if r.status_code == 200 else {}  # type: ignore[no-any-return]

    async def acknowledged(generation: int) -> bool:
        status = await gateway()
        return status.get("acknowledgedGeneration") == generation and status["appliedHash"] == f"digest-{generation}"

    try:
        await until(lambda: acknowledged(0), "the first snapshot is applied and acknowledged")
        await ok(api.http.post("/v1/apply", json={"items": [*CELLS, shop()]}))
        generation = (await ok(api.http.get("/v1/registry")))["generation"]
        assert generation > 0
        await until(lambda: acknowledged(generation), "a new generation is applied and acknowledged")
        assert recorder.seen[-1] == generation

        recorder.refuse = "HAProxy said no"
        recorder.applied.clear()
        component.poke()
        await asyncio.wait_for(recorder.applied.wait(), 5)

        async def refused() -> bool:
            return (await gateway()).get("error") == "HAProxy said no"
        await until(refused, "a refusal is reported on the acknowledgement")
        recorder.refuse = ""

        # A control plane that lost the registration (its credential still good): the gateway registers again.
        async with api.store.write() as tx:
            await tx.conn.execute(delete(components).where(components.c.kind == "gateway",
                                                           components.c.name == "edge"))
        assert await gateway() == {}
        component.poke()
        await until(lambda: acknowledged(generation), "a forgotten gateway registers again and acknowledges")

        # Deleted by an admin, it is gone for good: its credential was revoked with it.
        await ok(api.http.delete("/v1/gateways/edge"))
        component.poke()
        r = await api.as_(credential).put("/v1/gateways/edge", json={"address": "127.0.0.1:8080"})
        assert r.status_code == 401, r.text
        assert await gateway() == {}
    finally:
        stop.set()
        await task
        await client.close()


def test_backoff_doubles_to_its_ceiling_and_a_stable_run_forgets_failures() -> None:
    b = Backoff(1.0, 5.0, stable_seconds=60)
    delays = []
    for _ in range(5):
        delays.append(b.delay)
        b = b.failed()
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert b.after_run(59).delay == 5.0, "a short run keeps the backoff"
    assert b.after_run(60).delay == 1.0, "a stable run starts over"
    assert b.reset().delay == 1.0 and Backoff(0.2, 5.0).after_run(1000).delay == 0.2


@pytest.mark.parametrize(("parts", "same_as"), [
    ([("a", "1"), ("b", "2")], [("b", "2"), ("a", "1")]),
])
def test_a_combined_digest_does_not_depend_on_order(parts: list[tuple[str, str]], same_as: list[tuple[str, str]]) -> None:
    assert combined_digest(parts) == combined_digest(same_as) != combined_digest(parts[:1])
