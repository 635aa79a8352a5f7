"""Scheduled tasks end to end: the real `ballast up` (control plane, agents, HAProxy sidecars and gateway), the demo
app, and the gateway's executor calling every shard through its own HAProxy's task frontend.

`back` runs 4 instances over two cells; a TrafficRule whose caller is the gateway sends calls colored
`biz=replenish` to cell-a only, so the batch's routing is visible in which instance served each shard. The demo
app counts each task call's idempotency key and keeps what it carried (target, baggage, shard headers), so the
app's side of "exactly once" is counted where it happens. One platform serves the module.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ballast.cli.packaging import stage_demo
from tests.e2e.conftest import Platform, eventually, http_get_json, proc_argv, processes_mentioning, start_platform
from tests.e2e.test_releases import HEALTH, Api, wait_steady

pytestmark = pytest.mark.e2e
FIRST_IP = "127.0.172.2"
PORTS = {"port": 27200, "gateway_port": 27201, "metrics_port": 27202}   # metrics: 27202 and 27203
SHARDS = 8
TASK_MS = 3000   # each call takes this long at the app: a kill lands while calls are in flight
Item = dict[str, Any]


def doc(kind: str, name: str, spec: Item) -> Item:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


BACK = doc("AppService", "back", {
    "cells": {"cell-a": 2, "cell-b": 2},
    "template": {"artifact": "./", "command": ["python3", "app.py"], "env": {"GREETING": "v1",
                                                                            "DEMO_TASK_MS": str(TASK_MS)},
                 "healthCheck": HEALTH, "gracePeriodSeconds": 3}})
BATCH_RULE = doc("TrafficRule", "back-batch", {"service": "back", "from": {"apps": ["gateway"]}, "routes": [
    {"name": "batch", "match": {"tags": {"biz": "replenish"}}, "to": [{"cells": ["cell-a"]}], "fallback": "fail"}]})
TASK = doc("ScheduledTask", "replenish-batch", {
    "schedule": "* * * * *", "timeZone": "Asia/Shanghai",
    "target": {"service": "back", "path": "/tasks/replenish", "method": "POST"}, "shards": SHARDS,
    "tags": {"biz": "replenish"}, "concurrencyPolicy": "Allow", "startingDeadlineSeconds": 60,
    "timeoutSeconds": 20, "retries": 2})


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = Path("/tmp/helper-tasks")
    base.mkdir(exist_ok=True)
    base.chmod(0o711)
    parent = Path(tempfile.mkdtemp(prefix="e2e-", dir=base))
    parent.chmod(0o711)   # apps run as another user: they must enter (not list) it
    yield from start_platform(tmp_path_factory.mktemp("tasks"), FIRST_IP, data_parent=parent, **PORTS)


class Deployed:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.api = Api(platform)

    def get(self, path: str) -> Any:
        """GET, where a control plane that is down (killed, restarting) is a fact not yet true, not an error."""
        try:
            return self.api.get(path)
        except (OSError, urllib.error.URLError) as exc:
            raise AssertionError(f"GET {path}: {exc!r}") from None

    def run(self, run_id: int) -> Item:
        return dict(self.get(f"/v1/taskruns/{run_id}"))

    def seen(self) -> dict[str, Item]:
        """What every instance of back saw of task calls: idempotency key -> count and what it carried, with the
        instance that saw it (a key seen by two instances counts twice)."""
        out: dict[str, Item] = {}
        for inst in self.api.instances("back"):
            answer = http_get_json(inst["status"]["ip"], inst["status"]["port"], "/tasks-seen")
            for key, seen in answer["seen"].items():
                if key in out:
                    out[key] = {**seen, "count": out[key]["count"] + seen["count"], "instance": "several"}
                else:
                    out[key] = {**seen, "instance": answer["instance"]}
        return out


@pytest.fixture(scope="module")
def deployed(platform: Platform) -> Deployed:
    directory = stage_demo(platform.root / "apps")
    path = directory / "tasks.yaml"
    path.write_text(yaml.safe_dump_all([BACK, BATCH_RULE, TASK], sort_keys=False))
    platform.cli("apply", "-f", str(path))
    d = Deployed(platform)
    wait_steady(d.api, "back", 4, 1, timeout=90)
    eventually(lambda: _assert(d.get("/v1/trafficrules/back-batch")["inEffect"], "the batch rule in effect"),
               "the batch rule is in effect on every component")
    return d


def _assert(value: Any, what: str) -> Any:
    assert value, what
    return value


def manual_run(platform: Platform) -> int:
    out = platform.cli("task", "run", "replenish-batch").stdout
    assert "run " in out, out
    return int(out.split("run ", 1)[1].split()[0])


def finished(d: Deployed, run_id: int, timeout: float = 60) -> Item:
    def check() -> Item:
        run = d.run(run_id)
        assert run["state"] in ("succeeded", "failed"), (run["state"], run["reason"], run["shardStates"])
        return run
    return eventually(check, f"task run {run_id} finished", timeout)


def cell_a(d: Deployed) -> set[str]:
    return {i["metadata"]["name"] for i in d.api.instances("back") if i["status"]["cell"] == "cell-a"}


def test_a_manual_run_lands_every_shard_on_the_app_through_the_gateway_colored_and_routed(
        platform: Platform, deployed: Deployed) -> None:
    run_id = manual_run(platform)
    run = finished(deployed, run_id)
    assert run["state"] == "succeeded", run
    shards = run["items"]
    assert [s["index"] for s in shards] == list(range(SHARDS))
    assert all(s["statusCode"] == 200 and s["attempts"] == 1 and s["group"] == "" for s in shards), shards
    assert {s["instance"] for s in shards} <= cell_a(deployed), "the gateway's rule sent the colored batch to cell-a"
    seen = deployed.seen()
    for s in shards:
        call = seen[f"replenish-batch/{run_id}/{s['index']}"]
        assert call["count"] == 1 and call["instance"] == s["instance"], (s, call)
        assert call["baggage"] == "biz=replenish", call
        assert (call["shard"], call["shards"]) == (str(s["index"]), str(SHARDS)), call
        assert call["target"] == f"/tasks/replenish?shard={s['index']}&shards={SHARDS}", call
    wide = platform.cli("get", "taskruns", "replenish-batch", "-o", "wide").stdout
    assert f"{run_id}  " in wide and "INSTANCE" in wide and "default" in wide, wide
    described = platform.cli("describe", "taskrun", str(run_id)).stdout
    assert "state: succeeded" in described and "trigger: manual" in described, described
    audit = deployed.get("/v1/audit?limit=10000")["items"]
    mine = [(a["actor"], a["action"]) for a in audit if a["action"].startswith("task.run")
            and a["detail"].get("run") == run_id]
    assert mine == [("admin", "task.run"), ("admin", "task.run-finish")], mine


def _server_pid(platform: Platform) -> int | None:
    for pid in processes_mentioning(str(platform.data_dir)):
        if "server" in proc_argv(pid):
            return pid
    return None


def test_killing_the_control_plane_mid_run_loses_and_duplicates_no_shard(platform: Platform,
                                                                       deployed: Deployed) -> None:
    run_id = manual_run(platform)

    def in_flight() -> None:
        run = deployed.run(run_id)
        assert run["shardStates"].get("claimed") == SHARDS, run["shardStates"]
    eventually(in_flight, "every shard claimed: its call in flight", timeout=15)
    pid = _server_pid(platform)
    assert pid is not None
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: _assert(_server_pid(platform) not in (None, pid), "a new control plane"),
               "ballast up restarts the control plane", timeout=30)
    run = finished(deployed, run_id, timeout=60)
    assert time.monotonic() - killed_at < TASK_MS / 1000 + 60
    assert run["state"] == "succeeded", run
    assert all(s["attempts"] == 1 and s["claims"] == 1 and s["statusCode"] == 200 for s in run["items"]), run["items"]
    seen = deployed.seen()
    keys = {f"replenish-batch/{run_id}/{i}" for i in range(SHARDS)}
    assert {k: seen[k]["count"] for k in keys} == {k: 1 for k in keys}, "the app saw each shard exactly once"
    audit = deployed.get("/v1/audit?limit=10000")["items"]
    finishes = [a for a in audit if a["action"] == "task.run-finish" and a["detail"].get("run") == run_id]
    assert len(finishes) == 1, finishes


def test_the_schedule_starts_runs_by_itself_one_per_minute_and_each_key_reaches_the_app_once(
        platform: Platform, deployed: Deployed) -> None:
    def scheduled() -> list[Item]:
        runs = [r for r in deployed.get("/v1/scheduledtasks/replenish-batch/runs")["items"]
                if r["trigger"] == "schedule" and r["state"] == "succeeded"]
        assert runs, "no scheduled run has finished yet"
        return runs
    runs = eventually(scheduled, "a scheduled run finished", timeout=90)
    times = [r["scheduledFor"] for r in deployed.get("/v1/scheduledtasks/replenish-batch/runs")["items"]
             if r["trigger"] == "schedule"]
    assert len(times) == len(set(times)), "at most one run per scheduled time"
    assert all(t.endswith(":00+00:00") for t in times), times
    audit = deployed.get("/v1/audit?limit=10000")["items"]
    assert ("system", "task.run") in {(a["actor"], a["action"]) for a in audit}
    counts = Counter(v["count"] for v in deployed.seen().values())
    assert set(counts) == {1}, f"some key reached the app more than once: {counts}"
    assert all(s["instance"] in cell_a(deployed) for s in runs[0]["items"]), runs[0]["items"]
