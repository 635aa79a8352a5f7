"""Monitorable releases end to end: verification gates on the real platform, under load through the gateway.

Each app runs 2 instances per cell, released in two groups (a beta of one instance per cell, then the
rest), with `verify:` in its strategy. Load goes through the gateway while a group's window is open, so
the verdicts are made from what the sidecars really counted:
- a revision that answers 500 to a share of its requests is stopped after the beta group: paused, or, with
  `onFailure: rollback`, rolled back on its own (and the control plane is killed while that window is open);
- a healthy revision passes every gate: error rate, against the old revision, p99, a webhook, and a PromQL
  query against a real Prometheus that scrapes the agents' /metrics;
- a group that got too little traffic is inconclusive and pauses, even with `onFailure: rollback`; resuming
  accepts the verdict, `--reverify` judges a new window;
- a webhook that answers 500 fails a group whose traffic alone would not decide.
Every verdict is on the release history and the audit log with its numbers. /metrics of the agents, the
gateway and the control plane parse with prometheus-client's parser.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ballast.loadgen import BackgroundLoad, Target
from tests.e2e import test_lossless as lossless
from tests.e2e.conftest import Platform, eventually, free_port, start_platform
from tests.e2e.test_crash_safety import _healthy, _require, _server_pid
from tests.e2e.test_releases import DEMO_APP, Api, phase_is, wait_release, wait_steady

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.121.2"
NODE_IPS = [f"127.0.121.{k}" for k in range(2, 6)]
TWO_EACH = {"cell-a": 2, "cell-b": 2}
HEALTH = {"path": "/healthz", "periodSeconds": 3, "timeoutSeconds": 1}
WINDOW = 6
ERROR_RATIO_QUERY = ('(sum(rate(ballast_responses_total{app="$app",revision="$revision",code="5xx"}[$window])) '
                     'or vector(0)) / sum(rate(ballast_requests_total{app="$app",revision="$revision"}[$window]))')
Item = dict[str, Any]


# --- a user's webhook ---------------------------------------------------------------------------
class Hooks:
    """A check endpoint on loopback: /ok answers 200, /fail 500; every POSTed payload is kept."""

    def __init__(self) -> None:
        self.payloads: list[tuple[str, Item]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                hooks.payloads.append((self.path, json.loads(body)))
                self.send_response(200 if self.path == "/ok" else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


# --- a real Prometheus, scraping the agents and the gateway --------------------------------------------
@pytest.fixture(scope="module")
def prometheus(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The URL of a Prometheus that scrapes every node agent and the gateway once a second (None: not installed,
    unless BALLAST_REQUIRE_PROMETHEUS=1 makes that a failure)."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("BALLAST_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("BALLAST_REQUIRE_PROMETHEUS=1 but no prometheus binary on PATH")
        yield None
        return
    root = tmp_path_factory.mktemp("prometheus")
    targets = [f"{ip}:{platform.metrics_port}" for ip in NODE_IPS] + [f"127.0.0.1:{platform.metrics_port + 1}"]
    (root / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ballast", "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    with open(root / "prometheus.log", "ab") as log:
        proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def scraping() -> None:
            try:
                body = _get_json(f"{url}/api/v1/query?query=up")
            except OSError as exc:
                raise AssertionError(f"Prometheus not answering yet: {exc}") from None
            ups = {r["metric"]["instance"]: r["value"][1] for r in body["data"]["result"]}
            assert len(ups) == len(targets) and set(ups.values()) == {"1"}, ups
        eventually(scraping, "Prometheus scrapes every agent and the gateway", timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


# --- the platform and its apps ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("verify"), FIRST_IP)


def manifest(app: str, revision: int, verify: Item, *, fail_rate: float = 0.0, exposed: bool = True,
             groups: int = 2) -> Item:
    env = {"GREETING": f"v{revision}", **({"DEMO_FAIL_RATE": str(fail_rate)} if fail_rate else {})}
    spec: Item = {"cells": TWO_EACH, "strategy": {"groups": groups, "pause": "none", "verify": verify},
                  "template": {"artifact": "./", "command": ["python3", "app.py"], "env": env, "healthCheck": HEALTH,
                               "gracePeriodSeconds": 3}}
    if exposed:
        spec["expose"] = {"host": f"{app}.local"}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": app}, "spec": spec}


class Apps(lossless.Apps):
    def __init__(self, platform: Platform) -> None:
        directory = platform.root / "apps"
        directory.mkdir(exist_ok=True)
        shutil.copy(DEMO_APP, directory / "app.py")
        super().__init__(platform, directory)

    def load(self, app: str, connections: int = 4) -> BackgroundLoad:
        return BackgroundLoad([Target(app, "127.0.0.1", self.platform.gateway_port, f"{app}.local", ("/",),
                                      connections)])

    def served(self, app: str) -> None:
        """Every endpoint of the app is ready and acknowledged by every component (the gateway routes to all)."""
        eps = self.api.get(f"/v1/apps/{app}/endpoints")["items"]
        assert len(eps) == 4 and all(e["status"]["state"] == "ready" and not e["status"]["pending"] for e in eps), \
            [(e["metadata"]["name"], e["status"]["state"], e["status"]["pending"]) for e in eps]


BASIC = {"windowSeconds": WINDOW, "minRequests": 100, "maxErrorRate": 2}


@pytest.fixture(scope="module")
def apps(platform: Platform, hooks: Hooks, prometheus: str | None) -> Apps:
    apps = Apps(platform)
    apps.apply(manifest("bad", 1, BASIC), manifest("auto", 1, {**BASIC, "onFailure": "rollback"}),
               manifest("good", 1, BASIC), manifest("quiet", 1, {**BASIC, "onFailure": "rollback"}),
               manifest("hooked", 1, {**BASIC, "webhooks": [{"url": hooks.url("/fail")}]}, exposed=False))
    for app in ("bad", "auto", "good", "quiet", "hooked"):
        wait_steady(apps.api, app, 4, 1, timeout=120)
    for app in ("bad", "auto", "good", "quiet"):
        eventually(lambda app=app: apps.served(app), f"every endpoint of {app} acknowledged everywhere")
    return apps


def release_events(api: Api, app: str) -> list[Item]:
    return list(api.history(app)[-1]["events"])


def audit(platform: Platform, limit: int = 400) -> list[Item]:
    return list(platform.api(f"/v1/audit?limit={limit}")["items"])


def revisions(api: Api, app: str) -> dict[str, int]:
    return {i["metadata"]["name"]: i["status"]["revision"] for i in api.instances(app)
            if i["spec"]["desired"] == "running"}


def group_verification(status: Item, group: str) -> Item:
    return next(g for g in status["groups"] if g["name"] == group)["verification"]


# --- the tests ---------------------------------------------------------------------------------------------
def test_a_revision_that_fails_requests_is_stopped_after_the_beta_group(platform: Platform, apps: Apps,
                                                                        prometheus: str | None) -> None:
    """A fifth of revision 2's answers are 500s: the beta group's verdict fails it and the release pauses with the
    numbers; the second group never starts. With a Prometheus at hand, the PromQL check says the same."""
    verify = {**BASIC, **({"prometheus": {"url": prometheus, "queries": [
        {"name": "error-ratio", "query": ERROR_RATIO_QUERY, "max": 0.01}]}} if prometheus else {})}
    apps.apply(manifest("bad", 2, verify, fail_rate=0.2))
    before = revisions(apps.api, "bad")
    with apps.load("bad") as load:
        platform.cli("release", "start", "bad")
        status = wait_release(apps.api, "bad", "paused by its beta verdict", phase_is("Paused", 0), timeout=90)
    v = group_verification(status, "beta")
    assert v["state"] == "failed", v
    assert v["canary"]["revision"] == 2 and v["canary"]["requests"] >= 100
    assert 10 < v["canary"]["errorRatePercent"] < 35, v["canary"]
    assert v["baseline"]["revision"] == 1 and v["baseline"]["errorRatePercent"] == 0
    failed = {c["name"] for c in v["checks"] if c["outcome"] == "fail"}
    assert "error rate" in failed
    if prometheus:
        assert "prometheus error-ratio" in failed, v["checks"]
    assert "verification of beta failed" in status["reason"]
    assert load.failed > 0, "the gateway's clients saw the bad revision's 500s"
    now = revisions(apps.api, "bad")
    beta = {i["instance"] for g in status["groups"] if g["name"] == "beta" for i in g["instances"]}
    assert {i: r for i, r in now.items() if i in beta} == {i: 2 for i in beta}
    assert {i: r for i, r in now.items() if i not in beta} == {i: r for i, r in before.items() if i not in beta}, \
        "the second group was never touched"
    actions = [e["action"] for e in release_events(apps.api, "bad")]
    assert actions[-3:] == ["verify-start", "verify-failed", "paused"], actions
    records = [r for r in audit(platform) if r["resource"] == "AppService/bad"]
    verdict = next(r for r in reversed(records) if r["action"] == "release.verify")
    assert verdict["result"] == "failed" and verdict["actor"] == "controller/verification"
    assert verdict["detail"]["canary"]["errors"] > 0, "the audit record carries the numbers"
    shown = platform.cli("release", "status", "bad").stdout
    assert "FAILED" in shown and "error rate" in shown and "revision 2:" in shown
    platform.cli("release", "rollback", "bad")
    wait_release(apps.api, "bad", "rolled back", phase_is("RolledBack"), timeout=60)


def test_on_failure_rollback_rolls_the_release_back_by_itself_even_across_a_control_plane_crash(
        platform: Platform, apps: Apps) -> None:
    """With onFailure: rollback, a failed verdict turns the release round without anyone; the control plane is
    killed while the window is open and the verdict still comes, from the window's recorded start."""
    apps.apply(manifest("auto", 2, {**BASIC, "onFailure": "rollback", "windowSeconds": 10}, fail_rate=0.2))
    with apps.load("auto"):
        platform.cli("release", "start", "auto")
        eventually(lambda: _require(any(e["action"] == "verify-start" for e in release_events(apps.api, "auto"))),
                   "the beta group's window is open", timeout=60)
        pid = _server_pid(platform)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: _require(_server_pid(platform) not in (None, pid)), "ballast up restarts the control plane")
        eventually(lambda: _healthy(platform), "the control plane answers again")
        status = wait_release(apps.api, "auto", "rolled back automatically", phase_is("RolledBack"), timeout=90)
    assert set(revisions(apps.api, "auto").values()) == {1}
    v = group_verification(status, "beta")
    assert v["state"] == "failed" and v["attempt"] == 1 and v["window"]["seconds"] >= 10
    actions = [e["action"] for e in release_events(apps.api, "auto")]
    assert ["verify-start", "verify-failed", "auto-rollback", "rolled-back"] == \
        [a for a in actions if a in ("verify-start", "verify-failed", "auto-rollback", "rolled-back")], actions
    rollback = next(r for r in reversed(audit(platform)) if r["action"] == "release.auto-rollback")
    assert rollback["actor"] == "controller/releases" and "verification of beta failed" in rollback["detail"]["reason"]


def test_a_healthy_revision_passes_every_gate(platform: Platform, apps: Apps, hooks: Hooks,
                                              prometheus: str | None) -> None:
    """Error rate, the old revision as baseline, p99, a webhook and (when installed) PromQL: all pass in both
    groups, and the release succeeds. The last group has no old instances left to compare with: the relative
    checks say so instead of passing."""
    verify: Item = {**BASIC, "maxErrorRateIncrease": 1, "maxP99Ms": 2000, "maxP99Ratio": 20,
                    "webhooks": [{"url": hooks.url("/ok")}]}
    if prometheus:
        verify["prometheus"] = {"url": prometheus, "queries": [
            {"name": "error-ratio", "query": ERROR_RATIO_QUERY, "max": 0.01}]}
    apps.apply(manifest("good", 2, verify))
    with apps.load("good") as load:
        platform.cli("release", "start", "good")
        status = wait_release(apps.api, "good", "succeeded", phase_is("Succeeded"), timeout=120)
    assert load.failed == 0
    for group in ("beta", "group-1"):
        v = group_verification(status, group)
        outcomes = {c["name"]: c["outcome"] for c in v["checks"]}
        assert v["state"] == "passed" and v["canary"]["requests"] >= 100, v
        assert outcomes["error rate"] == outcomes["p99"] == outcomes[f"webhook {hooks.url('/ok')}"] == "pass"
        if prometheus:
            assert outcomes["prometheus error-ratio"] == "pass", v["checks"]
    beta = group_verification(status, "beta")["checks"]
    assert {c["name"]: c["outcome"] for c in beta}["error rate vs baseline"] == "pass"
    last = {c["name"]: c for c in group_verification(status, "group-1")["checks"]}
    assert last["error rate vs baseline"]["outcome"] == "skipped" and "no instance" in last["error rate vs baseline"]["detail"]
    payload = next(p for path, p in reversed(hooks.payloads) if path == "/ok" and p["app"] == "good")
    assert payload["revision"] == 2 and payload["baselineRevision"] == 1 and len(payload["instances"]) >= 2
    assert all(":" in i["endpoint"] for i in payload["instances"])
    shown = platform.cli("metrics", "good", "--by", "revision", "-o", "json").stdout
    rows = {r["key"]: r for r in json.loads(shown)["rows"]}
    assert rows["2"]["window"]["requests"] > 0 and rows["2"]["instances"] == 4


def test_too_little_traffic_is_inconclusive_and_pauses_for_a_person(platform: Platform, apps: Apps) -> None:
    """No load at all: the window ends with fewer requests than minRequests; the release pauses (never passes,
    never rolls back on its own), a resume with --reverify judges a new window, a plain resume accepts."""
    apps.apply(manifest("quiet", 2, {**BASIC, "onFailure": "rollback", "windowSeconds": 3}))
    platform.cli("release", "start", "quiet")
    status = wait_release(apps.api, "quiet", "paused, inconclusive", phase_is("Paused", 0), timeout=60)
    v = group_verification(status, "beta")
    assert v["state"] == "inconclusive" and v["canary"]["requests"] < 100
    assert {c["name"]: c["outcome"] for c in v["checks"]}["requests"] == "inconclusive"
    platform.cli("release", "resume", "quiet", "--reverify")
    status = wait_release(apps.api, "quiet", "a second window, inconclusive again",
                          lambda s: s["phase"] == "Paused" and group_verification(s, "beta")["attempt"] == 2,
                          timeout=60)
    platform.cli("release", "resume", "quiet")
    status = wait_release(apps.api, "quiet", "group-1 judged and paused",
                          lambda s: s["phase"] == "Paused" and s["completedGroups"] == 1, timeout=60)
    assert group_verification(status, "beta")["acceptedBy"] == "admin"
    assert group_verification(status, "group-1")["state"] == "inconclusive"
    resume = [r for r in audit(platform) if r["action"] == "release.resume" and r["resource"] == "AppService/quiet"]
    assert [r["detail"]["verification"]["decision"] for r in resume] == ["verify again", "accepted by admin"]
    platform.cli("release", "rollback", "quiet")
    wait_release(apps.api, "quiet", "rolled back", phase_is("RolledBack"), timeout=60)


def test_a_webhook_that_answers_500_fails_the_group(platform: Platform, apps: Apps, hooks: Hooks) -> None:
    """The user's own check says no: the group fails (a failure outweighs the traffic's inconclusive)."""
    apps.apply(manifest("hooked", 2, {**BASIC, "webhooks": [{"url": hooks.url("/fail")}], "windowSeconds": 2},
                        exposed=False))
    platform.cli("release", "start", "hooked")
    status = wait_release(apps.api, "hooked", "paused by the webhook", phase_is("Paused", 0), timeout=60)
    v = group_verification(status, "beta")
    hook = next(c for c in v["checks"] if c["name"].startswith("webhook"))
    assert v["state"] == "failed" and hook["outcome"] == "fail" and hook["observed"] == "answered 500"
    platform.cli("release", "rollback", "hooked")
    wait_release(apps.api, "hooked", "rolled back", phase_is("RolledBack"), timeout=60)


def _families(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_of_agents_gateway_and_control_plane_parse_with_sensible_labels(platform: Platform,
                                                                               apps: Apps) -> None:
    """What Prometheus would scrape: request counters and histograms per instance and revision on the agents and
    the gateway, release state, verdicts and per-app traffic on the control plane."""
    with apps.load("good", connections=2) as load:
        time.sleep(3)
    assert load.requests > 100
    eventually(lambda: _counted(platform, "good", load.requests), "the sidecars counted every request", timeout=20)
    node = _families(_scrape(platform.agent_metrics(NODE_IPS[0]) + "/metrics"))
    good = [s for s in node["ballast_requests"] if s.labels["app"] == "good"]
    assert good and set(good[0].labels) == {"app", "instance", "revision", "cell", "node"}
    assert {s.labels["node"] for s in good} == {"node-a1"}
    buckets = [s for s in node["ballast_response_seconds"] if s.name.endswith("_bucket") and s.labels["app"] == "good"]
    assert buckets and {"le"} <= set(buckets[0].labels) and any(s.labels["le"] == "+Inf" for s in buckets)
    assert {"ballast_responses", "ballast_request_errors", "ballast_connection_errors"} <= set(node)
    gateway = _families(_scrape(platform.gateway_metrics + "/metrics"))
    sent = [s for s in gateway["ballast_gateway_requests"] if s.labels["app"] == "good"]
    assert {s.labels["gateway"] for s in sent} == {"edge"}
    by_revision = {r: {s.labels["instance"] for s in sent if s.labels["revision"] == r} for r in ("1", "2")}
    assert len(by_revision["2"]) == 4, "each instance counted at the revision it now serves"
    assert by_revision["1"] == by_revision["2"], "in place: the same instances served revision 1 before"
    token = yaml.safe_load((platform.data_dir / "client.yaml").read_text())["token"]
    plane = _families(_scrape(platform.server + "/metrics", token))
    phases = {(s.labels["app"], s.labels["phase"]): s.value for s in plane["ballast_release_phase"]}
    assert phases[("good", "Succeeded")] == 1
    states = {(s.labels["app"], s.labels["group"], s.labels["state"]): s.value
              for s in plane["ballast_release_verification_state"]}
    assert states[("good", "beta", "passed")] == 1 and states[("good", "group-1", "passed")] == 1
    rates = {(s.labels["app"], s.labels["revision"], s.labels["cell"]): s.value
             for s in plane["ballast_app_requests_per_second"]}
    assert rates[("good", "2", "cell-a")] > 0 and rates[("good", "2", "cell-b")] > 0
    up = {s.labels["node"]: s.value for s in plane["ballast_request_metrics_source_up"]}
    assert up == {"node-a1": 1, "node-a2": 1, "node-b1": 1, "node-b2": 1}


def _scrape(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        return str(r.read().decode())


def _counted(platform: Platform, app: str, sent: int) -> None:
    """The agents' counters for `app` grew by at least what the load generator sent in the last window."""
    body = platform.api(f"/v1/apps/{app}/metrics?window=60")
    counted = sum(r["window"]["requests"] for r in body["rows"])
    assert counted >= sent, f"counted {counted} of {sent}"
