"""Release orders end to end on the real platform, through the CLI as its users type it.

Four apps: C after B after A, and D independent. alice (operator) writes the order; her own approval is
refused (maker-checker); bob (approver) approves. A freeze refuses the start; dave (emergency-approver)
gives the extra approval and alice starts it as an emergency. B's new revision fails its health check:
the order pauses with A and D done and C never started. The control plane is killed (SIGKILL) while the
order runs and again while it rolls back; the order carries on each time. Rolling the order back returns
B (in flight) and then A and D (finished) to revision 1, C untouched. The report's audit hashes verify.
`ballast release resume` of the order's paused release is refused naming the order, and a direct `release
start` in the freeze is refused naming the window.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Platform, eventually, start_platform
from tests.e2e.test_crash_safety import _healthy, _require, _server_pid
from tests.e2e.test_releases import DEMO_APP, Api, wait_steady

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.111.2"
APPS = ("a", "b", "c", "d")
Item = dict[str, Any]


def app(name: str, greeting: str, unhealthy: bool = False) -> Item:
    env = {"GREETING": greeting, **({"DEMO_UNHEALTHY": "1"} if unhealthy else {})}
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name},
            "spec": {"cells": {"cell-a": 1, "cell-b": 1},
                     "template": {"artifact": "./", "command": ["python3", "app.py"], "env": env,
                                  "healthCheck": {"path": "/healthz", "periodSeconds": 1, "timeoutSeconds": 1,
                                                  "failureThreshold": 2},
                                  "gracePeriodSeconds": 3}}}


ORDER = {"apiVersion": "ballast.io/v1alpha1", "kind": "ReleaseOrder", "metadata": {"name": "chg-42"},
         "spec": {"title": "payments v2", "ticket": "CHG-42", "reason": "new fee schedule", "maxParallel": 2,
                  "releases": [{"app": "a", "strategy": {"pause": "none"}},
                               {"app": "b", "after": ["a"], "strategy": {"pause": "none", "progressDeadlineSeconds": 60}},
                               {"app": "c", "after": ["b"], "strategy": {"pause": "none"}},
                               {"app": "d", "strategy": {"pause": "none"}}]}}


def freeze() -> Item:
    now = datetime.now(timezone.utc)
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "ChangeWindow", "metadata": {"name": "year-end"},
            "spec": {"timeZone": "Europe/Zurich", "freezes": [{"from": (now - timedelta(hours=1)).isoformat(),
                                                               "to": (now + timedelta(hours=2)).isoformat(),
                                                               "reason": "year-end freeze"}]}}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("orders"), FIRST_IP)


def write(platform: Platform, name: str, *docs: Item) -> str:
    path = platform.root / "apps" / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


class Users:
    def __init__(self, platform: Platform) -> None:
        self.platform, self.tokens = platform, {}
        for name, role in (("alice", "operator"), ("bob", "approver"), ("dave", "emergency-approver")):
            platform.cli("user", "create", name, "--role", role)
            out = platform.cli("token", "create", "--user", name).stdout
            self.tokens[name] = out.strip().splitlines()[-1].strip()

    def cli(self, user: str, *args: str, check: bool = True) -> Any:
        return self.platform.cli("--token", self.tokens[user], *args, check=check)


def order(api: Api) -> Item:
    return api.get("/v1/orders/chg-42")  # type: ignore[no-any-return]


def apps_of(o: Item) -> dict[str, Item]:
    return {a["app"]: a for a in o["status"]["apps"]}


def wait_order(api: Api, phase: str, what: str, timeout: float = 120) -> Item:
    def check() -> Item:
        o = order(api)
        assert o["status"]["phase"] == phase, (o["status"]["phase"], o["status"]["reason"], o["status"]["waiting"],
                                               [(a["app"], a["release"] and a["release"]["phase"]) for a in o["status"]["apps"]])
        return o
    return eventually(check, what, timeout=timeout)


def kill_control_plane(platform: Platform) -> None:
    pid = eventually(lambda: _require(_server_pid(platform)), "the control plane process exists")
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: _require(_server_pid(platform) not in (None, pid)), "the control plane restarted")
    eventually(lambda: _healthy(platform), "the restarted control plane answers")


def test_an_order_approved_started_in_an_emergency_paused_by_a_failure_and_rolled_back(platform: Platform) -> None:
    (platform.root / "apps").mkdir()
    shutil.copy(DEMO_APP, platform.root / "apps" / "app.py")
    api = Api(platform)
    platform.cli("apply", "-f", write(platform, "v1.yaml", *(app(n, "v1") for n in APPS)))
    for n in APPS:
        wait_steady(api, n, 2, 1, timeout=120)
    platform.cli("apply", "-f", write(platform, "v2.yaml", *(app(n, "v2", unhealthy=n == "b") for n in APPS)))
    platform.cli("apply", "-f", write(platform, "window.yaml", freeze()))
    users = Users(platform)

    # A cycle is refused with the field that closes it; nothing is stored.
    cyclic = json.loads(json.dumps(ORDER))
    cyclic["spec"]["releases"][0]["after"] = ["c"]
    bad = users.cli("alice", "apply", "-f", write(platform, "cyclic.yaml", cyclic), check=False)
    assert bad.returncode != 0 and "cycle" in bad.stderr and "spec.releases[0].after" in bad.stderr, bad.stderr
    assert api.get("/v1/orders")["items"] == []

    users.cli("alice", "apply", "-f", write(platform, "order.yaml", ORDER))
    assert [r["toRevision"] for r in order(api)["spec"]["releases"]] == [2, 2, 2, 2]
    mine = users.cli("alice", "order", "approve", "chg-42", check=False)
    assert mine.returncode != 0 and "maker-checker" in mine.stderr, mine.stderr
    users.cli("bob", "order", "approve", "chg-42", "--comment", "fees checked with finance")
    assert order(api)["status"]["phase"] == "Approved"

    frozen = users.cli("alice", "order", "start", "chg-42", check=False)
    assert frozen.returncode != 0 and "year-end freeze" in frozen.stderr, frozen.stderr
    assert order(api)["status"]["phase"] == "Approved", "a refused start changes nothing"
    users.cli("dave", "order", "approve", "chg-42", "--emergency", "--comment", "fee bug costs customers money")
    users.cli("alice", "order", "start", "chg-42", "--emergency")
    assert order(api)["status"]["emergency"] is True

    eventually(lambda: _require(apps_of(order(api))["a"]["release"]), "a's release started", timeout=30)
    kill_control_plane(platform)

    paused = wait_order(api, "Paused", "the order pauses on b's failed health check", timeout=180)
    items = apps_of(paused)
    assert "release" in paused["status"]["reason"] and " b " in f" {paused['status']['reason']}", paused["status"]
    assert items["a"]["release"]["phase"] == "Succeeded" and items["d"]["release"]["phase"] == "Succeeded"
    assert items["b"]["release"]["phase"] == "Paused"
    assert items["c"]["release"] is None, "c waits for b and never started"
    wait_steady(api, "a", 2, 2)
    wait_steady(api, "d", 2, 2)
    assert {i["status"]["revision"] for i in api.instances("c")} == {1}

    # b's paused release is the order's: resuming it alone would move it while the order shows Paused.
    alone = users.cli("alice", "release", "resume", "b", check=False)
    assert alone.returncode != 0 and "ballast order resume chg-42" in alone.stderr, alone.stderr
    assert apps_of(order(api))["b"]["release"]["phase"] == "Paused"

    shown = users.cli("bob", "order", "status", "chg-42").stdout
    assert "Paused" in shown and "EMERGENCY" in shown and "Waiting" in shown, shown
    windows = platform.cli("get", "changewindows").stdout
    assert "year-end" in windows and "frozen" in windows, windows
    assert "chg-42" in platform.cli("get", "orders").stdout
    users.cli("alice", "order", "rollback", "chg-42")
    eventually(lambda: _require(apps_of(order(api))["b"]["release"]["phase"] in ("RollingBack", "RolledBack")),
               "b turns round first", timeout=30)
    kill_control_plane(platform)
    done = wait_order(api, "RolledBack", "the order rolls back", timeout=240)
    items = apps_of(done)
    assert items["b"]["release"]["phase"] == "RolledBack" and items["b"]["undo"] is None
    for n in ("a", "d"):
        assert items[n]["undo"]["phase"] == "Succeeded" and items[n]["undo"]["toRevision"] == 1
        wait_steady(api, n, 2, 1)
    wait_steady(api, "b", 2, 1)
    undo_b_after = {a: items[a]["undo"]["startedAt"] for a in ("a",)}
    assert items["b"]["release"]["finishedAt"] <= undo_b_after["a"], "a goes back only after b (which depends on it)"
    # The order has ended, but the freeze binds a direct release too; its way through is an emergency order.
    frozen = users.cli("alice", "release", "start", "c", check=False)
    assert frozen.returncode != 0 and "year-end freeze" in frozen.stderr and "--emergency" in frozen.stderr, \
        frozen.stderr
    releases_of_c = [r for r in api.get("/v1/apps/c/releases")["items"]]
    assert releases_of_c == [], "c was never released"

    report_file = platform.root / "chg-42.json"
    users.cli("bob", "order", "report", "chg-42", "--format", "json", "--out", str(report_file))
    report = json.loads(report_file.read_text())
    assert [(a["user"], a["decision"], a["emergency"]) for a in report["approvals"]] == \
        [("bob", "approve", False), ("dave", "approve", True)]
    assert report["order"]["status"]["emergency"] is True
    diffs = {a["app"]: a["diff"] for a in report["apps"]}
    assert {"path": "env.DEMO_UNHEALTHY", "before": None, "after": "1"} in diffs["b"]
    assert {"path": "env.GREETING", "before": "v1", "after": "v2"} in diffs["a"]
    actions = [t["action"] for t in report["transitions"]]
    for expected in ("created", "approve", "emergency-approve", "start", "paused", "rollback", "rolled-back"):
        assert expected in actions, (expected, actions)
    assert {r["app"] for r in report["releases"]} == {"a", "b", "d"} and len(report["releases"]) == 5
    audited = {r["action"] for r in report["audit"]["records"]}
    assert {"order.create", "order.approve", "order.emergency-approve", "order.start", "release.start",
            "order.rollback", "order.rolled-back"} <= audited, audited
    assert report["audit"]["chainVerified"] is True
    verified = users.cli("bob", "audit", "verify", "--report", str(report_file))
    assert "all" in verified.stdout and "match" in verified.stdout, verified.stdout

    tampered = json.loads(report_file.read_text())
    tampered["audit"]["records"][0]["hash"] = "0" * 64
    (platform.root / "tampered.json").write_text(json.dumps(tampered))
    refused = users.cli("bob", "audit", "verify", "--report", str(platform.root / "tampered.json"), check=False)
    assert refused.returncode != 0 and "differs" in refused.stderr, refused.stderr

    markdown = users.cli("bob", "order", "report", "chg-42").stdout
    assert "# Release order chg-42: payments v2" in markdown and "EMERGENCY" in markdown
    listed = json.loads(users.cli("bob", "order", "list", "--app", "b", "-o", "json").stdout)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["chg-42"]
    assert listed["stats"]["byPhase"] == {"RolledBack": 1} and listed["stats"]["rollbackRate"] == 1.0

    # What an existing Prometheus scrapes from the real control plane.
    token = yaml.safe_load((platform.data_dir / "client.yaml").read_text())["token"]
    scrape = urllib.request.Request(f"{platform.server}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(scrape, timeout=10) as r:
        text = r.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("ballast_order_phase", (("emergency", "true"), ("order", "chg-42"), ("phase", "RolledBack")))] == 1
    b_release = str(items["b"]["release"]["id"])
    assert samples[("ballast_release_phase", (("app", "b"), ("kind", "release"), ("phase", "RolledBack"),
                                              ("release", b_release)))] == 1
