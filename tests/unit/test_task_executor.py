"""Spec of the gateway's scheduled-task side: the task frontend's exact text (and that HAProxy accepts it), the
request a shard makes, attempts on connection errors and 5xx within the lease, and an outcome reported until the
control plane answers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from ballast.client import Client
from ballast.dataplane.haproxy_config import Address, GatewayConfig, render_gateway
from ballast.dataplane.tables import gateway_rule_tables
from ballast.gateway.tasks import ExecutorSettings, TaskExecutor, shard_request
from ballast.wire.registry import Snapshot
from ballast.wire.tasks import ShardCall, ShardOutcome

SNAPSHOT = Snapshot.from_json({"generation": 7, "services": [
    {"name": "back", "mesh": True, "routes": [], "endpoints": [
        {"id": "back-a", "ip": "10.0.0.1", "port": 20000, "cell": "cell-a", "zone": "za", "state": "ready"}]},
    {"name": "front", "mesh": True, "routes": [{"host": "shop.local", "path": "/"}], "endpoints": []},
    {"name": "batch", "mesh": False, "routes": [], "endpoints": []},
]})


def test_the_task_frontend_reaches_every_mesh_service_and_names_the_server_that_answered(tmp_path: Path) -> None:
    routes, tables = gateway_rule_tables(SNAPSHOT, every_mesh_service=True)
    assert [b.service for b in tables.backends] == ["back", "front"], "every mesh service; not a non-mesh one"
    text = render_gateway(GatewayConfig(name="edge", admin_socket=str(tmp_path / "a.sock"),
                                        listen=Address("127.0.0.1", 18080), routes=routes, backends=tables.backends,
                                        task_socket=str(tmp_path / "tasks.sock")))
    frontend = text[text.index("\nfrontend tasks\n"):text.index("\nbackend no_task_service\n")]
    assert frontend == (
        "\nfrontend tasks\n"
        f"    bind unix@{tmp_path}/tasks.sock mode 600\n"
        "    http-request deny deny_status 400 if { req.fhdr(host) -m sub , }\n"
        "    http-request set-var(txn.service) req.fhdr(host),field(1,:),lower\n"
        "    http-request del-header x-ballast-unit\n"
        "    use_backend svc_back if { var(txn.service) -m str back }\n"
        "    use_backend svc_front if { var(txn.service) -m str front }\n"
        "    http-response set-header x-ballast-served-by %[srv_name]\n"
        "    default_backend no_task_service\n")
    assert "use_backend svc_back if" not in text[:text.index("\nfrontend tasks\n")], \
        "the public frontend still routes only what is exposed"
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("no haproxy")
    (tmp_path / "gw.cfg").write_text(text)
    checked = subprocess.run([binary, "-c", "-f", str(tmp_path / "gw.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


CALL = ShardCall(task="replenish-batch", run_id=7, index=3, shards=8, service="back", path="/tasks/replenish",
                 method="POST", tags={"biz": "replenish", "a": "b"}, timeout_seconds=5, retries=2, lease_until=0.0,
                 lease_seconds=60.0, idempotency_key="replenish-batch/7/3")


def test_a_shard_says_its_index_and_count_its_color_and_its_idempotency_key() -> None:
    method, url, headers = shard_request(CALL)
    assert (method, url) == ("POST", "http://back/tasks/replenish?shard=3&shards=8")
    assert headers == {"Host": "back", "x-ballast-shard": "3", "x-ballast-shards": "8",
                       "idempotency-key": "replenish-batch/7/3", "Connection": "close", "baggage": "a=b,biz=replenish"}


def _executor(mesh: httpx.MockTransport, control: httpx.MockTransport | None = None) -> TaskExecutor:
    client = Client("http://control", "t", transport=control or httpx.MockTransport(lambda r: httpx.Response(200)))
    return TaskExecutor(client, ExecutorSettings("gw1", "/nonexistent"), transport=mesh)


@pytest.mark.parametrize(("answers", "outcome", "attempts", "status"), [
    ([200], "succeeded", 1, 200),
    ([503, 200], "succeeded", 2, 200),
    ([None, 502, 201], "succeeded", 3, 201),
    ([404], "succeeded", 1, 404),            # the app answered: not the mesh's to retry
    ([500, 500, 500], "failed", 3, 500),     # retries: 2 spent
    ([None, None, None], "failed", 3, None),
])
async def test_connection_errors_and_5xx_are_attempted_again_up_to_the_retries(
        answers: list[int | None], outcome: str, attempts: int, status: int | None) -> None:
    pending = list(answers)

    def mesh(request: httpx.Request) -> httpx.Response:
        answer = pending.pop(0)
        if answer is None:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(answer, headers={"x-ballast-served-by": "back-a"})
    executor = _executor(httpx.MockTransport(mesh))
    result = await executor.call(CALL.model_copy(update={"retries": 2}))
    assert (result.outcome, result.attempts, result.status_code) == (outcome, attempts, status)
    assert result.instance == ("back-a" if status is not None else None)
    assert not pending


async def test_no_attempt_starts_that_could_outlast_the_lease() -> None:
    executor = _executor(httpx.MockTransport(lambda r: httpx.Response(503)))
    result = await executor.call(CALL.model_copy(update={"lease_seconds": 5.1, "timeout_seconds": 5}))
    assert (result.outcome, result.attempts) == ("failed", 1) and "no time left in the lease" in result.error


async def test_an_outcome_is_reported_until_the_control_plane_answers() -> None:
    answers = [None, 503, None, 200]
    sent: list[bytes] = []

    def control(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        answer = answers.pop(0)
        if answer is None:
            raise httpx.ConnectError("the control plane is restarting", request=request)
        return httpx.Response(answer, json={"recorded": True})
    executor = _executor(httpx.MockTransport(lambda r: httpx.Response(200)), httpx.MockTransport(control))
    outcome = ShardOutcome(run_id=7, index=3, outcome="succeeded", status_code=200, duration_ms=5, attempts=1)
    await executor.report(outcome)
    assert not answers and len(sent) == 4 and len(set(sent)) == 1, "the same outcome, until it was answered"
