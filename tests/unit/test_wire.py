"""The wire messages are one type each, shared by both planes: what one side writes, the other reads exactly.

A field the control plane starts sending that the data plane's type does not know, or a field of a manifest
that never reaches the agent, fails here rather than in a sidecar.
"""

from __future__ import annotations

from typing import Any

import pytest

from ballast.controllers import endpoints as registry_controller
from ballast.core import manifests
from ballast.wire import assignments as wire
from ballast.wire.message import Message
from ballast.wire.registry import Snapshot
from ballast.wire.reports import DrainReport, InstanceReport, StatusReport
from tests.conftest import Api
from tests.unit.test_api_registry import instances, ok, world


def _same_after_a_round_trip(kind: type[Message], body: dict[str, Any]) -> None:
    assert kind.from_json(body).to_json() == body


async def test_what_the_control_plane_answers_reads_back_exactly(api: Api) -> None:
    agent = await world(api)
    await registry_controller.reconcile_once(api.store)
    snapshot = await ok(agent.get("/v1/registry"))
    assert snapshot["services"] and snapshot["services"][0]["endpoints"], "a snapshot with something in it"
    _same_after_a_round_trip(Snapshot, snapshot)
    node = (await instances(api))[0]["spec"]["node"]
    assigned = await ok(agent.get(f"/v1/nodes/{node}/assignments"))
    assert assigned["instances"] and assigned["instances"][0]["template"] is not None
    _same_after_a_round_trip(wire.Assignments, assigned)


async def test_a_drain_report_the_agent_writes_is_what_the_control_plane_keeps(api: Api) -> None:
    agent = await world(api)
    target = (await instances(api))[0]
    drain = DrainReport(revision=1, waited_seconds=0.25, inflight_at_stop=0, timed_out=False, at=1_700_000_000.5)
    report = InstanceReport(id=target["metadata"]["name"], phase="Running", ready=True, restarts=0, revision=1,
                            port=20000, mesh_port=20001, drain=drain)
    await ok(agent.post(f"/v1/nodes/{target['spec']['node']}/status", json=StatusReport(instances=[report]).to_json()))
    [kept] = [i for i in await instances(api) if i["metadata"]["name"] == target["metadata"]["name"]]
    assert kept["status"]["lastDrain"] == drain.to_json()
    assert DrainReport.from_json(kept["status"]["lastDrain"]) == drain


def test_every_field_of_a_template_reaches_the_agent() -> None:
    """The manifest's template adds rules, never fields: the agent's type knows every field a revision holds."""
    assert set(manifests.Template.model_fields) == set(wire.Template.model_fields)
    assert set(manifests.HealthCheck.model_fields) == set(wire.HealthCheck.model_fields)
    stored = manifests.Template.model_validate({"command": ["app"], "healthCheck": {"path": "/h"},
                                                "artifact": "sha256:" + "ab" * 32, "workingDir": "sub",
                                                "env": {"A": "1"}}).model_dump(
        mode="json", by_alias=True)
    _same_after_a_round_trip(wire.Template, stored)


def test_the_drain_settings_agents_use_are_the_manifests_defaults() -> None:
    traffic = manifests.TrafficSpec()
    assert wire.DrainSettings() == wire.DrainSettings(drain=traffic.drain,
                                                      drain_timeout_seconds=traffic.drain_timeout_seconds)
    assert set(wire.DrainSettings.model_fields) <= set(manifests.TrafficSpec.model_fields)
    assert manifests.Template.model_validate({"command": ["a"]}).grace_period_seconds == \
        wire.DEFAULT_GRACE_PERIOD_SECONDS


@pytest.mark.parametrize("kind", [Snapshot, wire.Assignments, StatusReport, DrainReport])
def test_a_field_the_receiver_does_not_know_is_refused(kind: type[Message]) -> None:
    samples: dict[type[Message], dict[str, Any]] = {
        Snapshot: {"generation": 1}, wire.Assignments: {"fingerprint": "f"}, StatusReport: {},
        DrainReport: {"revision": 1, "waitedSeconds": 0, "inflightAtStop": 0, "timedOut": False, "at": 0}}
    body = samples[kind]
    kind.from_json(body)
    with pytest.raises(ValueError):
        kind.from_json({**body, "somethingNew": 1})
