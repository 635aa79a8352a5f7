"""Spec of release verification through the API over both stores, with the controllers driven in-process.

The issue's example app (5 + 5 instances, revision 1 running, revision 2 recorded) is released with `verify`.
The four node agents' telemetry endpoints are played by an httpx MockTransport that answers
`/v1/request-metrics` from counts the test scripts; time is the store's clock, moved by the test. So each
verdict here comes from the same code path as on the real platform: sources read, window opened with their
totals, read again when it ends, judged, recorded, and acted on by the release engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ballast.controllers import releases as release_engine
from ballast.controllers import verification
from ballast.core.request_metrics import BUCKETS, CLASSES, Counts
from tests.conftest import Api, Fleet
from tests.unit.test_api_releases import (NODES, agents_run_desired, audit, instances, ok, release_status,
                                          shop_at_revision_1_with_revision_2_recorded)

VERIFY = {"windowSeconds": 10, "minRequests": 50, "maxErrorRate": 1}
FIVE = CLASSES.index("5xx")


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Agents:
    """What each node's agent has counted, per (instance, revision), and which agents answer."""

    api: Api
    fleet: Fleet
    served: dict[tuple[str, int], Counts] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)

    async def refresh(self) -> None:
        self.node_of = {i["metadata"]["name"]: i["spec"]["node"] for i in await instances(self.api)}

    async def serve(self, requests: int, errors_at: dict[int, float]) -> None:
        """Every live instance serves `requests` more at the revision it runs, failing `errors_at[revision]` of them."""
        for i in await instances(self.api):
            revision = i["status"]["revision"]
            failed = int(requests * errors_at.get(revision, 0.0))
            responses = [0] * len(CLASSES)
            responses[CLASSES.index("2xx")], responses[FIVE] = requests - failed, failed
            latency = [0] * BUCKETS
            latency[5] = requests - failed
            more = Counts(requests, tuple(responses), failed, 0, tuple(latency), 0.004 * (requests - failed))
            key = (i["metadata"]["name"], revision)
            self.served[key] = self.served.get(key, Counts()) + more

    def handle(self, request: httpx.Request) -> httpx.Response:
        node = {f"10.0.0.{k}:9464": n for k, n in enumerate(sorted(NODES), start=1)}[request.url.netloc.decode()]
        if node in self.silent:
            raise httpx.ConnectError("connection refused", request=request)
        series = [{"app": "shop", "instance": inst, "revision": rev, "cell": NODES[node], "total": c.to_json()}
                  for (inst, rev), c in sorted(self.served.items()) if self.node_of.get(inst) == node]
        return httpx.Response(200, json={"source": node, "epoch": "1.0", "at": 0, "series": series})


@pytest.fixture
async def agents(api: Api) -> Agents:
    agent = await shop_at_revision_1_with_revision_2_recorded(api)
    # The agents re-register with their telemetry endpoints.
    for k, (name, cell) in enumerate(sorted(NODES.items()), start=1):
        await ok(agent.put(f"/v1/nodes/{name}", json={"cell": cell, "ip": f"10.0.0.{k}", "cpuMillis": 8000,
                                                      "memoryBytes": 16 * 2**30, "metricsAddress": f"10.0.0.{k}:9464"}))
    a = Agents(api, agent)
    await a.refresh()
    return a


async def step(api: Api, agents: Agents, clock: Clock, seconds: float = 0.0) -> dict[str, Any]:
    """Time passes; the data plane settles; the verification controller and the release engine each take a pass."""
    clock.now += seconds
    transport = httpx.MockTransport(agents.handle)
    for _ in range(3):
        await agents_run_desired(api, agents.fleet)
        await agents.refresh()
        await verification.reconcile_once(api.store, transport)
        await release_engine.reconcile_once(api.store)
    return await release_status(api)


def beta(status: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in status["groups"] if g["name"] == "beta")


async def start(api: Api, clock: Clock, **verify: Any) -> None:
    api.store.clock = clock
    await ok(api.http.post("/v1/apps/shop/releases", json={"strategy": {"pause": "manual",
                                                                         "verify": {**VERIFY, **verify}}}), 201)


async def test_a_failing_beta_is_paused_with_its_numbers_on_the_history_and_the_audit_log(api: Api,
                                                                                         agents: Agents) -> None:
    """Revision 2 fails 10% of its requests: after the beta group's window the release pauses, the second group
    never starts, and the verdict's inputs are on the release and the audit log."""
    clock = Clock(api.store.clock())
    await start(api, clock)
    status = await step(api, agents, clock)
    assert beta(status)["verification"]["state"] == "verifying"
    assert "verifying its traffic" in status["waiting"]
    await agents.serve(100, {1: 0.0, 2: 0.1})
    status = await step(api, agents, clock, 11)
    v = beta(status)["verification"]
    assert (status["phase"], status["completedGroups"], v["state"]) == ("Paused", 0, "failed")
    assert (v["canary"]["revision"], v["canary"]["requests"], v["canary"]["errors"]) == (2, 200, 20)
    assert (v["baseline"]["revision"], v["baseline"]["requests"], v["baseline"]["errors"]) == (1, 800, 0)
    assert {c["name"]: c["outcome"] for c in v["checks"]} == {"data": "pass", "requests": "pass", "error rate": "fail"}
    assert "verification of beta failed: error rate 10.00% (20 of 200)" in status["reason"]
    assert sum(1 for i in await instances(api) if i["spec"]["revision"] == 2) == 2, "group-1 did not start"
    records = await audit(api)
    verdict = next(r for r in records if r["action"] == "release.verify")
    assert verdict["result"] == "failed" and verdict["detail"]["canary"]["errors"] == 20
    paused = next(r for r in reversed(records) if r["action"] == "release.paused")
    assert paused["actor"] == "controller/releases" and "error rate" in paused["detail"]["reason"]


async def test_on_failure_rollback_turns_the_release_round(api: Api, agents: Agents) -> None:
    clock = Clock(api.store.clock())
    await start(api, clock, onFailure="rollback")
    await step(api, agents, clock)
    await agents.serve(100, {2: 0.5})
    status = await step(api, agents, clock, 11)
    assert status["phase"] in ("RollingBack", "RolledBack") and status["direction"] == "rollback"
    status = await step(api, agents, clock)
    assert status["phase"] == "RolledBack"
    assert {i["spec"]["revision"] for i in await instances(api)} == {1}
    assert any(r["action"] == "release.auto-rollback" for r in await audit(api))


async def test_too_few_requests_is_inconclusive_then_a_person_accepts_or_asks_again(api: Api,
                                                                                      agents: Agents) -> None:
    """Fewer requests than minRequests pause for a person even with onFailure rollback; --reverify opens a second
    window; a plain resume accepts and the release goes on to the next group without a second pause."""
    clock = Clock(api.store.clock())
    await start(api, clock, onFailure="rollback")
    await step(api, agents, clock)
    await agents.serve(10, {})
    status = await step(api, agents, clock, 11)
    assert (status["phase"], beta(status)["verification"]["state"]) == ("Paused", "inconclusive")
    await ok(api.http.post("/v1/apps/shop/release/resume", json={"reverify": True}))
    status = await step(api, agents, clock)
    assert (beta(status)["verification"]["attempt"], beta(status)["verification"]["state"]) == (2, "verifying")
    status = await step(api, agents, clock, 11)
    assert status["phase"] == "Paused" and beta(status)["verification"]["state"] == "inconclusive"
    await ok(api.http.post("/v1/apps/shop/release/resume", json={}))
    status = await step(api, agents, clock)
    assert beta(status)["verification"]["acceptedBy"] == "admin"
    assert status["completedGroups"] >= 1 and status["phase"] == "Running", (status["phase"], status["reason"])
    decisions = [r["detail"].get("verification", {}).get("decision") for r in await audit(api)
                 if r["action"] == "release.resume"]
    assert decisions == ["verify again", "accepted by admin"]


async def test_an_agent_that_cannot_be_read_makes_the_verdict_inconclusive_never_a_pass(api: Api,
                                                                                          agents: Agents) -> None:
    """The window's end waits a grace period for a silent agent, then judges without it: inconclusive, naming it."""
    clock = Clock(api.store.clock())
    await start(api, clock)
    await step(api, agents, clock)
    await agents.serve(100, {})
    agents.silent.add("n-b2")
    status = await step(api, agents, clock, 11)
    assert beta(status)["verification"]["state"] == "verifying", "within the grace, the silent agent is waited for"
    status = await step(api, agents, clock, verification.CLOSE_GRACE_SECONDS)
    v = beta(status)["verification"]
    data = next(c for c in v["checks"] if c["name"] == "data")
    assert (status["phase"], v["state"], data["outcome"]) == ("Paused", "inconclusive", "inconclusive")
    assert "n-b2" in data["detail"] and "3 of 4" in data["observed"]


BAD_VERIFY: list[tuple[dict[str, Any], str]] = [
    ({"verify": {"minRequests": 0}}, "strategy.verify.minRequests"),
    ({"verify": {"maxErrorRate": -1}}, "strategy.verify.maxErrorRate"),
    ({"verify": {"onFailure": "explode"}}, "strategy.verify.onFailure"),
    ({"verify": {"webhooks": [{"url": "ftp://checks"}]}}, "strategy.verify.webhooks[0].url"),
    ({"verify": {"prometheus": {"url": "http://p:9090", "queries": [{"name": "q", "query": "up"}]}}},
     "strategy.verify.prometheus.queries[0]"),
    ({"verify": {"windowSecs": 5}}, "strategy.verify.windowSecs"),
    ({"verify": {"maxErrorRate": None, "maxP99Ms": None}, "noVerify": "perhaps"}, "strategy.noVerify"),
]


@pytest.mark.parametrize("strategy, path", BAD_VERIFY)
async def test_a_bad_verification_setting_is_refused_naming_it_and_starts_nothing(api: Api, agents: Agents,
                                                                                  strategy: dict[str, Any],
                                                                                  path: str) -> None:
    r = await api.http.post("/v1/apps/shop/releases", json={"strategy": strategy})
    assert r.status_code == 422, r.text
    assert any(p["path"].startswith(path) for p in r.json()["problems"]), r.json()
    assert (await api.http.get("/v1/apps/shop/release")).status_code == 404, "nothing was started"


async def test_app_metrics_name_unreadable_agents_and_refuse_bad_queries(api: Api, agents: Agents) -> None:
    """`ballast metrics` reads every agent hosting the app; an agent the control plane cannot reach is named in
    the answer (the live platform's agents are the e2e tests'), never a 500."""
    body = await ok(api.http.get("/v1/apps/shop/metrics", params={"by": "cell", "window": 10}))
    assert body["by"] == "cell" and body["rows"] == []
    assert {s["name"] for s in body["sources"]} == set(NODES) and not any(s["ok"] for s in body["sources"])
    assert (await api.http.get("/v1/apps/nope/metrics")).status_code == 404
    for params in ({"by": "node"}, {"window": 0}, {"window": 301}, {"source": "mesh"}):
        r = await api.http.get("/v1/apps/shop/metrics", params=params)
        assert r.status_code == 422, (params, r.text)
    r = await agents.fleet.put("/v1/nodes/n-a1", json={"cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 8000,
                                               "memoryBytes": 2**30, "metricsAddress": "not-an-address"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "metricsAddress"


async def test_an_order_may_set_its_releases_verification_and_a_bad_one_is_refused_at_apply(api: Api) -> None:
    """A release order's strategy override carries `verify` (or `noVerify`) into the release it starts; a bad value
    is refused when the order is applied, naming the field, and nothing is stored."""
    from tests.unit.test_api_orders import four_apps_at_revision_2, order

    await four_apps_at_revision_2(api)
    bad = order("chg", [{"app": "a", "strategy": {"verify": {"minRequests": 0}}}])
    r = await api.http.post("/v1/apply", json={"items": [bad]})
    assert r.status_code == 422, r.text
    assert any("releases[0].strategy.verify.minRequests" in p["path"] for p in r.json()["problems"]), r.json()
    assert (await api.http.get("/v1/orders/chg")).status_code == 404
    good = order("chg", [{"app": "a", "strategy": {"verify": {"maxErrorRate": 5, "onFailure": "rollback"}}},
                         {"app": "b", "strategy": {"noVerify": True}}])
    await ok(api.http.post("/v1/apply", json={"items": [good]}))
    stored = (await ok(api.http.get("/v1/orders/chg")))["spec"]["releases"]
    assert stored[0]["strategy"]["verify"]["maxErrorRate"] == 5 and stored[1]["strategy"]["noVerify"] is True
