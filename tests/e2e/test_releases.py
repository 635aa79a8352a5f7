"""Grouped releases end to end: the real `ballast up`, the real CLI, real instances.

The release issue's "Done means", in-place mode: the exact example (10
instances over two cells, beta + 2 groups, manual pauses), pausing inside a
group, rolling back from the beta group, between groups and inside a group,
`rollback --fast`, rolling back after a release succeeded (a new release back
to revision 1, grouped or `--fast`), and the CLI refusing what it must refuse.
Every app of this module is applied (revision 1) and updated (revision 2) once at module start,
so the instances of all tests come up together; each test releases its own
app. Polling uses the same HTTP endpoints as the CLI (a CLI call costs ~0.8 s
of interpreter start-up, too slow to sample a release that changes an
instance every second); everything a person would do goes through the CLI.

The helpers here are shared with test_release_modes.py; test_releases_postgres.py runs some of these test
bodies on PostgreSQL.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.e2e.conftest import Platform, eventually, http_get_json, start_platform

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.41.2"
DEMO_APP = Path(__file__).resolve().parents[2] / "src" / "ballast" / "demo" / "app.py"
FIVE_EACH = {"cell-a": 5, "cell-b": 5}
THREE_EACH = {"cell-a": 3, "cell-b": 3}
TWO_EACH = {"cell-a": 2, "cell-b": 2}
# Until its first pass an instance is probed every 0.2 s (readiness and a failing revision show at once); after
# that every 5 s keeps the idle cost of ~60 instances on 2 cores low.
HEALTH = {"path": "/healthz", "periodSeconds": 5, "timeoutSeconds": 1}
# Revision 2 of the apps whose release a test must catch mid-flight: each instance takes >= 2 s to become
# ready, so a group of several instances per cell (one at a time) lasts several seconds.
SLOW_HEALTH = {**HEALTH, "initialDelaySeconds": 2}
NEVER_READY = ["python3", "-c", "import time; time.sleep(3600)"]   # never listens: Starting forever, not failing
Item = dict[str, Any]


# --- manifests ----------------------------------------------------------------------------
def app_spec(*, cells: dict[str, int] | None = None, replicas: int | None = None, greeting: str = "v1",
             env: dict[str, str] | None = None, command: list[str] | None = None, health: Item | None = None,
             strategy: Item | None = None) -> Item:
    spec: Item = {"replicas": replicas} if replicas is not None else {"cells": cells or FIVE_EACH}
    if strategy:
        spec["strategy"] = strategy
    spec["template"] = {"artifact": "./", "command": command or ["python3", "app.py"],
                        "env": {"GREETING": greeting, **(env or {})}, "healthCheck": health or HEALTH,
                        "gracePeriodSeconds": 3}
    return spec


def replica_count(spec: Item) -> int:
    return int(spec["replicas"]) if "replicas" in spec else sum(spec["cells"].values())


# --- fast reads of the API the CLI uses -----------------------------------------------------
class Api:
    """GET the control plane's JSON endpoints directly, with the admin token `ballast up` wrote."""

    def __init__(self, platform: Platform) -> None:
        self.port = platform.port
        self.token = yaml.safe_load((platform.data_dir / "client.yaml").read_text())["token"]

    def get(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, f"GET {path} answered {response.status}: {body[:300]!r}"
        return json.loads(body)

    def instances(self, app: str) -> list[Item]:
        return list(self.get(f"/v1/instances?app={app}")["items"])

    def release(self, app: str) -> Item:
        return dict(self.get(f"/v1/apps/{app}/release"))

    def history(self, app: str) -> list[Item]:
        return list(self.get(f"/v1/apps/{app}/releases")["items"])

    def app(self, app: str) -> Item:
        return dict(self.get(f"/v1/apps/{app}"))


# --- instance facts -----------------------------------------------------------------------
def name(item: Item) -> str:
    return str(item["metadata"]["name"])


def by_id(items: list[Item]) -> dict[str, Item]:
    return {name(i): i for i in items}


def live(items: list[Item]) -> list[Item]:
    """Instances meant to run (a retired one stays listed, desired=deleted, until its agent stopped it)."""
    return [i for i in items if i["spec"]["desired"] == "running"]


def steady_at(item: Item, revision: int) -> bool:
    """Desired and running revision are `revision`, and the instance is Running and ready."""
    s = item["status"]
    return (item["spec"]["revision"] == revision and s["revision"] == revision and s["phase"] == "Running"
            and s["ready"] is True)


def changing(item: Item) -> bool:
    """A live instance not settled: its desired revision is not yet the one running and ready."""
    return item["spec"]["desired"] == "running" and not steady_at(item, item["spec"]["revision"])


def summary(items: list[Item]) -> list[tuple[Any, ...]]:
    return [(name(i), i["status"]["cell"], i["spec"]["revision"], i["status"]["revision"], i["status"]["phase"],
             i["status"]["ready"], i["spec"]["desired"]) for i in items]


def starts(platform: Platform, item: Item) -> list[int]:
    """Revisions this instance's process started at, in order (the demo app's starts.log in its data dir)."""
    path = platform.data_dir / "agents" / item["status"]["node"] / "instances" / name(item) / "starts.log"
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


def start_pids(platform: Platform, item: Item) -> list[int]:
    path = platform.data_dir / "agents" / item["status"]["node"] / "instances" / name(item) / "starts.log"
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


def assert_serving(item: Item, revision: int) -> None:
    """The process itself (not just the record) answers as this instance, at this revision, with this pid."""
    s = item["status"]
    answer = http_get_json(s["ip"], s["port"], "/")
    assert (answer["instance"], answer["revision"], answer["pid"]) == (name(item), str(revision), s["pid"]), answer


def wait_steady(api: Api, app: str, count: int, revision: int, timeout: float = 60) -> dict[str, Item]:
    """Exactly `count` instances of `app`, every one steady at `revision`; returns them by id."""
    def check() -> dict[str, Item]:
        items = api.instances(app)
        assert len(items) == count and all(steady_at(i, revision) for i in items), summary(items)
        return by_id(items)
    return eventually(check, f"{count} instances of {app} ready at revision {revision}", timeout)


def wait_release(api: Api, app: str, what: str, fact: Callable[[Item], bool], timeout: float = 60) -> Item:
    def check() -> Item:
        s = api.release(app)
        assert fact(s), f"phase={s['phase']} completedGroups={s['completedGroups']} reason={s['reason']!r} " \
                        f"waiting={s['waiting']!r}"
        return s
    return eventually(check, f"release of {app}: {what}", timeout)


def phase_is(phase: str, completed: int | None = None) -> Callable[[Item], bool]:
    return lambda s: s["phase"] == phase and (completed is None or s["completedGroups"] == completed)


def plan_groups(groups: list[Item], key: str = "slots") -> list[tuple[str, list[tuple[str, str]]]]:
    """(group name, [(instance, cell)]) from a plan (`slots`) or a status (`instances`)."""
    if key == "slots":
        return [(g["name"], [(s["instance"], s["cell"]) for s in g["slots"]]) for g in groups]
    return [(g["name"], [(s["slot"], s["cell"]) for s in g["instances"]]) for g in groups]


def group_members(status: Item) -> dict[str, set[str]]:
    return {g["name"]: {s["slot"] for s in g["instances"]} for g in status["groups"]}


class Sampler:
    """Reads an app's instances over and over in a thread while a release runs; every read is kept."""

    def __init__(self, api: Api, app: str, period: float = 0.05) -> None:
        self.api, self.app, self.period = api, app, period
        self.samples: list[list[Item]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.api.instances(self.app))
            except Exception as exc:  # noqa: BLE001 - reported by the test, not swallowed
                self.errors.append(exc)
            self._stop.wait(self.period)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, f"sampling {self.app} failed: {self.errors[:3]}"
        assert len(self.samples) >= 3, f"only {len(self.samples)} samples of {self.app}"


# --- the module's platform and apps ---------------------------------------------------------
@dataclass
class Deployed:
    """A platform with apps at revision 1 (all ready) and revision 2 recorded but not released."""

    platform: Platform
    api: Api
    initial: dict[str, dict[str, Item]] = field(default_factory=dict)   # app -> id -> instance at revision 1

    def cli_json(self, *args: str) -> Any:
        return self.platform.cli_json(*args)


def deploy(platform: Platform, root: Path, apps: dict[str, tuple[Item, Item]]) -> Deployed:
    """Write every manifest next to one copy of the demo app first (so `artifact: ./` packs the same files for
    revision 1 and 2), apply all revision-1 manifests, wait for every instance, then apply revision 2."""
    directory = root / "apps"
    directory.mkdir()
    shutil.copy(DEMO_APP, directory / "app.py")
    for app, specs in apps.items():
        for revision, spec in enumerate(specs, start=1):
            doc = {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": app}, "spec": spec}
            (directory / f"{app}-v{revision}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def files(revision: int) -> list[str]:
        return [arg for app in apps for arg in ("-f", str(directory / f"{app}-v{revision}.yaml"))]
    platform.cli("apply", *files(1))
    api = Api(platform)
    deployed = Deployed(platform, api)
    for app, (v1, _) in apps.items():
        deployed.initial[app] = wait_steady(api, app, replica_count(v1), 1, timeout=90)
    out = platform.cli("apply", *files(2)).stdout
    for app in apps:
        assert f"appservice/{app} configured (revision 2)" in out, out
    return deployed


APPS: dict[str, tuple[Item, Item]] = {
    "shop1": (app_spec(), app_spec(greeting="v2")),
    "paused": (app_spec(), app_spec(greeting="v2", health=SLOW_HEALTH)),
    # Three per cell is enough to have a beta group, group-1 and group-2 in each cell.
    "rb-beta": (app_spec(cells=THREE_EACH), app_spec(cells=THREE_EACH, greeting="v2", health=SLOW_HEALTH)),
    "rb-between": (app_spec(cells=THREE_EACH), app_spec(cells=THREE_EACH, greeting="v2")),
    # group-1 changes 2 per cell one at a time, >= 3 s each: a window of >= 6 s to roll back inside it.
    "rb-inside": (app_spec(), app_spec(greeting="v2", health={**SLOW_HEALTH, "initialDelaySeconds": 3})),
    "fast": (app_spec(cells=THREE_EACH), app_spec(cells=THREE_EACH, greeting="v2")),
    "cli": (app_spec(cells=TWO_EACH), app_spec(cells=TWO_EACH, command=NEVER_READY)),
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("releases"), FIRST_IP)


@pytest.fixture(scope="module")
def env(platform: Platform) -> Deployed:
    return deploy(platform, platform.root, APPS)


def roll_back_after_success(d: Deployed, app: str, fast: bool = False) -> None:
    """`ballast release rollback` once the release to revision 2 has succeeded: a new release (kind rollback, by
    admin) back to revision 1 — with the app's strategy, group by group through its manual pauses, or with `--fast`
    every instance in one step; each instance restarts once more, at revision 1, on its node, IP and port."""
    done = d.api.release(app)
    assert (done["phase"], done["toRevision"]) == ("Succeeded", 2), done
    out = d.platform.cli("release", "rollback", app, *(["--fast"] if fast else [])).stdout
    back = d.api.release(app)
    assert back["id"] != done["id"] and (back["kind"], back["fromRevision"], back["toRevision"]) == ("rollback", 2, 1)
    assert f"release {done['id']} of {app} had Succeeded; rollback release {back['id']} started: revision 2 → 1" in out
    groups = [g["name"] for g in back["groups"] if g["instances"]]
    assert groups == (["group-1"] if fast else ["beta", "group-1", "group-2"]), groups
    if not fast:
        for completed in (1, 2):
            wait_release(d.api, app, f"paused after {completed} group(s)", phase_is("Paused", completed))
            d.platform.cli("release", "resume", app)
    wait_release(d.api, app, "the rollback release succeeds", phase_is("Succeeded"))
    now = wait_steady(d.api, app, len(d.initial[app]), 1)
    assert_kept_placement(d, app, now)
    for item in now.values():
        assert starts(d.platform, item)[-2:] == [2, 1], (name(item), starts(d.platform, item))
        assert_serving(item, 1)
    assert d.api.app(app)["status"]["deployedRevision"] == 1
    record = d.api.history(app)[-1]
    assert (record["id"], record["kind"], record["createdBy"], record["phase"]) == (back["id"], "rollback", "admin",
                                                                                   "Succeeded"), record
    first = record["events"][0]
    assert (first["action"], first["actor"], first["detail"]["rollbackOf"], first["detail"]["fast"]) == (
        "rollback", "admin", done["id"], fast), record["events"]
    batches = [[a["setRevision"] for a in r["detail"]["actions"] if "setRevision" in a]
               for action, r in release_steps(d, app, back["id"]) if action == "release.step"]
    if fast:
        assert sorted(batches[0]) == sorted(now), f"--fast sets every instance back in one step: {batches}"
    else:
        assert all(len(b) <= 2 for b in batches), f"one per cell at a time: {batches}"
    audited = [(r["actor"], r["detail"]["rollbackOf"]) for action, r in release_steps(d, app, back["id"])
               if action == "release.rollback"]
    assert audited == [("admin", done["id"])], audited


# --- checks shared by several tests -----------------------------------------------------------
def assert_untouched(d: Deployed, app: str, ids: set[str], now: dict[str, Item]) -> None:
    """These instances never changed: same process (pid), started once, at revision 1."""
    for i in sorted(ids):
        before, after = d.initial[app][i], now[i]
        assert steady_at(after, 1), summary([after])
        assert after["status"]["pid"] == before["status"]["pid"], (i, before["status"]["pid"], after["status"]["pid"])
        assert starts(d.platform, after) == [1], (i, starts(d.platform, after))


def assert_kept_placement(d: Deployed, app: str, now: dict[str, Item]) -> None:
    """In place: the same instance ids, each on its node with its IP and port."""
    assert set(now) == set(d.initial[app])
    for i, item in now.items():
        was, s = d.initial[app][i]["status"], item["status"]
        assert (s["node"], s["cell"], s["ip"], s["port"]) == (was["node"], was["cell"], was["ip"], was["port"]), i


def release_steps(d: Deployed, app: str, release_id: int) -> list[tuple[str, Item]]:
    """The audit log's records about one release of `app`, oldest first: (action, record)."""
    records = d.api.get("/v1/audit?limit=10000")["items"]  # what `ballast audit list -o json` prints
    return [(r["action"], r) for r in records
            if r["resource"] == f"AppService/{app}" and r["action"].startswith("release.")
            and (r["detail"] or {}).get("release") == release_id]


def rollback_batches(d: Deployed, app: str, release_id: int) -> list[list[str]]:
    """After the admin's rollback record: the instances each engine step set back, one list per step."""
    steps = release_steps(d, app, release_id)
    first = next(k for k, (action, r) in enumerate(steps) if action == "release.rollback" and r["actor"] == "admin")
    return [[a["setRevision"] for a in r["detail"]["actions"] if "setRevision" in a]
            for action, r in steps[first + 1:] if action == "release.step"]


def assert_rolled_back(d: Deployed, app: str, release_id: int, fast: bool = False) -> dict[str, Item]:
    """RolledBack; all instances back at revision 1, ready, serving; history and audit name admin's rollback."""
    status = wait_release(d.api, app, "RolledBack", phase_is("RolledBack"))
    assert (status["id"], status["phase"], status["direction"], status["fast"]) == (release_id, "RolledBack",
                                                                                     "rollback", fast), status
    now = by_id(d.api.instances(app))
    assert set(now) == set(d.initial[app])
    for item in now.values():
        assert steady_at(item, 1), summary([item])
        assert_serving(item, 1)
        assert starts(d.platform, item)[-1] == 1, (name(item), starts(d.platform, item))
    assert_kept_placement(d, app, now)

    history = {r["id"]: r for r in d.cli_json("release", "history", app)}
    record = history[release_id]
    assert record["phase"] == "RolledBack" and record["durationSeconds"] is not None, record
    rollbacks = [e for e in record["events"] if e["action"] == "rollback"]
    assert [(e["actor"], e["phase"], e["detail"]["fast"]) for e in rollbacks] == [("admin", "RollingBack", fast)], \
        record
    assert record["events"][-1]["action"] == "rolled-back", record["events"]
    audited = [(r["actor"], r["result"], r["detail"]["fast"]) for action, r in release_steps(d, app, release_id)
               if action == "release.rollback"]
    assert audited == [("admin", "ok", fast)], audited
    return now


# --- the tests ------------------------------------------------------------------------------
def test_the_example_release_goes_beta_then_group_by_group_instance_by_instance_in_place(env: Deployed) -> None:
    """10 instances over two cells, groups 3, beta 1, pause manual: plan == start; 1, then 3, then 5 per cell at
    revision 2 at the pauses, the rest untouched; every instance updated exactly once, on its node, IP and port.
    Then `release rollback` starts a release back to revision 1 through the same groups and pauses."""
    d, app = env, "shop1"
    flags = ["--groups", "3", "--beta-size", "1", "--pause", "manual"]
    plan = d.cli_json("release", "plan", app, *flags)
    assert (plan["fromRevision"], plan["toRevision"]) == (1, 2)
    planned = plan_groups(plan["groups"])
    assert [g for g, _ in planned] == ["beta", "group-1", "group-2"]
    assert [Counter(cell for _, cell in slots) for _, slots in planned] == [
        {"cell-a": 1, "cell-b": 1}, {"cell-a": 2, "cell-b": 2}, {"cell-a": 2, "cell-b": 2}]
    members = [{i for i, _ in slots} for _, slots in planned]
    assert sorted(i for m in members for i in m) == sorted(d.initial[app]), "every instance in exactly one group"
    for _, slots in planned:
        assert all(d.initial[app][i]["status"]["cell"] == cell for i, cell in slots)

    def run_until(cli_args: list[str], phase: str, completed: int, allowed: set[str]) -> dict[str, Item]:
        """Run one step of the release while sampling: only `allowed` instances ever leave revision 1, and no
        cell ever has more than one instance changing (maxUnavailablePerCell 1)."""
        with Sampler(d.api, app) as sampler:
            out = d.platform.cli(*cli_args).stdout
            wait_release(d.api, app, f"{phase} after {completed} group(s)", phase_is(phase, completed))
        for sample in sampler.samples:
            touched = {name(i) for i in sample if i["spec"]["revision"] != 1 or i["status"]["revision"] != 1}
            assert touched <= allowed, (sorted(touched - allowed), summary(sample))
            busy = Counter(i["status"]["cell"] for i in sample if changing(i))
            assert all(n <= 1 for n in busy.values()), (busy, summary(sample))
            for i in sample:  # status reports what runs: the original process runs revision 1, whatever is desired
                if i["status"]["pid"] == d.initial[app][name(i)]["status"]["pid"]:
                    assert i["status"]["revision"] == 1, summary([i])
        assert out
        return by_id(d.api.instances(app))

    now = run_until(["release", "start", app, *flags], "Paused", 1, members[0])
    status = d.cli_json("release", "status", app)
    assert plan_groups(status["groups"], "instances") == planned, "the release follows the plan shown beforehand"
    assert (status["fromRevision"], status["toRevision"]) == (1, 2)
    assert status["reason"] == "beta done; resume to start group-1", status["reason"]
    at2 = {i for i, item in now.items() if steady_at(item, 2)}
    assert at2 == members[0] and Counter(now[i]["status"]["cell"] for i in at2) == {"cell-a": 1, "cell-b": 1}
    assert_untouched(d, app, set(now) - at2, now)
    for i in at2:
        assert_serving(now[i], 2)

    now = run_until(["release", "resume", app], "Paused", 2, members[0] | members[1])
    at2 = {i for i, item in now.items() if steady_at(item, 2)}
    assert at2 == members[0] | members[1]
    assert Counter(now[i]["status"]["cell"] for i in at2) == {"cell-a": 3, "cell-b": 3}
    assert_untouched(d, app, set(now) - at2, now)

    run_until(["release", "resume", app], "Succeeded", 3, set(d.initial[app]))
    now = by_id(d.platform.instances(app))  # what `ballast get instances shop1 -o json` shows
    assert len(now) == 10 and all(steady_at(item, 2) for item in now.values()), summary(list(now.values()))
    assert_kept_placement(d, app, now)
    for item in now.values():
        assert starts(d.platform, item) == [1, 2], (name(item), starts(d.platform, item))  # updated exactly once
        pids = start_pids(d.platform, item)
        assert pids[0] == d.initial[app][name(item)]["status"]["pid"] and pids[1] == item["status"]["pid"]
        assert_serving(item, 2)
    assert d.api.app(app)["status"]["deployedRevision"] == 2
    roll_back_after_success(d, app)


def test_pause_inside_a_group_lets_changing_instances_finish_and_starts_no_new_one(env: Deployed) -> None:
    """pause none, 2 groups: a pause mid-group stops at a safe point (in-flight ones finish, none starts); resume
    finishes the release. Then `release rollback --fast` takes every instance back to revision 1 at once."""
    d, app = env, "paused"
    d.platform.cli("release", "start", app, "--pause", "none", "--groups", "2", "--beta-size", "0")
    eventually(lambda: _assert(any(steady_at(i, 2) for i in d.api.instances(app)), "no instance at revision 2 yet"),
               "the first instance reaches revision 2")
    out = d.platform.cli("release", "pause", app).stdout
    assert "Running → Paused" in out, out
    with Sampler(d.api, app) as sampler:  # every read from here on is after the pause was recorded
        status = d.api.release(app)
        assert status["phase"] == "Paused" and status["reason"] == "paused by admin", status

        def settled() -> dict[str, Item]:
            items = d.api.instances(app)
            assert len(items) == 10 and not [i for i in items if changing(i)], summary(items)
            return by_id(items)
        now = eventually(settled, "instances changing at the pause finish")
        settled_from = len(sampler.samples) + 1  # skip a read that may have begun before the settled one
        # "No new one starts" is a negative fact: it needs an observation window. The engine re-decides at
        # least every second and would start the next instance in its first pass, so 3 s shows the pause holds.
        observe(sampler, 3.0)
    at2 = {i for i, item in now.items() if steady_at(item, 2)}
    assert 0 < len(at2) < 10, at2
    assert_untouched(d, app, set(now) - at2, now)
    for sample in sampler.samples:  # instances changing at the pause finished; none was set to revision 2 after it
        assert {name(i) for i in sample if i["spec"]["revision"] == 2} == at2, summary(sample)
    for sample in sampler.samples[settled_from:]:
        assert not [i for i in sample if changing(i)], summary(sample)
    assert d.api.release(app)["phase"] == "Paused"

    assert "Paused → Running" in d.platform.cli("release", "resume", app).stdout
    wait_release(d.api, app, "Succeeded", phase_is("Succeeded"))
    now = wait_steady(d.api, app, 10, 2)
    assert_kept_placement(d, app, now)
    for item in now.values():
        assert starts(d.platform, item) == [1, 2], (name(item), starts(d.platform, item))
    roll_back_after_success(d, app, fast=True)


def _assert(fact: bool, complaint: str) -> None:
    assert fact, complaint


def observe(sampler: Sampler, seconds: float) -> None:
    """Keep `sampler` reading for an observation window of `seconds` (and at least 10 more reads)."""
    until, enough = time.monotonic() + seconds, len(sampler.samples) + 10
    eventually(lambda: _assert(time.monotonic() >= until and len(sampler.samples) >= enough, "still observing"),
               f"a {seconds:g} s observation window", timeout=seconds + 30)


@pytest.mark.parametrize("where", ["beta", "between", "inside"])
def test_rollback_returns_every_touched_instance_to_revision_1(env: Deployed, where: str) -> None:
    """Rollback from the beta group, from between groups (Paused after group-1) and from inside group-1 (pause
    none, maxUnavailablePerCell 1): RolledBack, all at revision 1, groups never reached untouched, audited."""
    d = env
    app = f"rb-{where}"
    if where == "beta":
        d.platform.cli("release", "start", app, "--pause", "manual")
        eventually(lambda: _assert(any(i["spec"]["revision"] == 2 for i in d.api.instances(app)), "beta not begun"),
                   "the beta group begins")
    elif where == "between":
        d.platform.cli("release", "start", app, "--pause", "manual")
        wait_release(d.api, app, "Paused after beta", phase_is("Paused", 1))
        d.platform.cli("release", "resume", app)
        wait_release(d.api, app, "Paused after group-1", phase_is("Paused", 2))
    else:
        d.platform.cli("release", "start", app, "--pause", "none", "--max-unavailable-per-cell", "1")
        def group1_begun(s: Item) -> bool:
            touched = {n for n, i in by_id(d.api.instances(app)).items() if i["spec"]["revision"] == 2}
            return s["phase"] == "Running" and s["completedGroups"] == 1 and bool(touched & group_members(s)["group-1"])
        wait_release(d.api, app, "group-1 under way", group1_begun)
    before = d.api.release(app)
    out = d.platform.cli("release", "rollback", app).stdout
    assert f"release {before['id']} of {app}: " in out and "→ RollingBack" in out, out
    members = group_members(before)
    untouched = {"beta": members["group-1"] | members["group-2"], "between": members["group-2"],
                 "inside": members["group-2"]}[where]
    if where == "beta":
        assert before["completedGroups"] in (0, 1), before  # during the beta group, or right after it

    now = assert_rolled_back(d, app, before["id"])
    completed = d.api.release(app)["completedGroups"]  # a rollback keeps the count it started from
    assert completed in {"beta": (0, 1), "between": (2,), "inside": (1,)}[where], completed
    assert_untouched(d, app, untouched, now)
    for i in set(now) - untouched:  # touched ones started at revision 2 at most once, and again at 1 after it
        revisions = starts(d.platform, now[i])
        assert revisions[0] == 1 and revisions[-1] == 1 and revisions.count(2) <= 1, (i, revisions)
    if where == "between":  # beta and group-1 were at 2: all went back, newest group first, one per cell at a time
        batches = rollback_batches(d, app, before["id"])
        order = [i for batch in batches for i in batch]
        assert sorted(order) == sorted(members["beta"] | members["group-1"]), batches
        assert set(order[:len(members["group-1"])]) == members["group-1"], batches
        for batch in batches:
            assert max(Counter(now[i]["status"]["cell"] for i in batch).values()) <= 1, batches


def test_fast_rollback_sends_every_touched_group_back_at_once(env: Deployed) -> None:
    """After group-1, `rollback --fast` sets beta and group-1 back to revision 1 in one step → RolledBack."""
    d, app = env, "fast"
    d.platform.cli("release", "start", app, "--pause", "manual")
    wait_release(d.api, app, "Paused after beta", phase_is("Paused", 1))
    d.platform.cli("release", "resume", app)
    before = wait_release(d.api, app, "Paused after group-1", phase_is("Paused", 2))
    members = group_members(before)
    touched = members["beta"] | members["group-1"]
    out = d.platform.cli("release", "rollback", app, "--fast").stdout
    assert "Paused → RollingBack" in out, out
    now = assert_rolled_back(d, app, before["id"], fast=True)
    batches = [b for b in rollback_batches(d, app, before["id"]) if b]
    assert batches and set(batches[0]) == touched, batches  # all at once, not one per cell at a time
    assert_untouched(d, app, members["group-2"], now)
    for i in touched:
        assert starts(d.platform, now[i]) == [1, 2, 1], (i, starts(d.platform, now[i]))


def test_cli_refuses_bad_release_requests_with_a_reason(env: Deployed) -> None:
    """`--groups 0`, a second start while one is Paused, and resume of a Running release exit non-zero and say why."""
    d, app, cli = env, "cli", env.platform.cli
    bad = cli("release", "start", app, "--groups", "0", check=False)
    assert bad.returncode != 0, bad
    assert "strategy.groups: got 0" in bad.stderr and "greater than or equal to 1" in bad.stderr, bad.stderr
    none = cli("release", "status", app, check=False)
    assert none.returncode != 0 and "has no release" in none.stderr, none  # nothing was started

    cli("release", "start", app, "--pause", "manual")
    # Revision 2 never listens, so the beta group stays in progress and the release stays Running.
    running = wait_release(d.api, app, "beta under way",
                           lambda s: s["phase"] == "Running" and any(i["spec"]["revision"] == 2
                                                                     for i in d.api.instances(app)))
    again = cli("release", "resume", app, check=False)
    assert again.returncode != 0, again
    assert f"cannot resume release {running['id']}: it is Running" in again.stderr, again.stderr
    assert d.api.release(app)["phase"] == "Running"

    assert "Running → Paused" in cli("release", "pause", app).stdout
    second = cli("release", "start", app, check=False)
    assert second.returncode != 0, second
    assert f"release {running['id']} of 'cli' is Paused" in second.stderr, second.stderr
    assert [r["id"] for r in d.api.history(app)] == [running["id"]], "no second release recorded"

    cli("release", "rollback", app)
    assert_rolled_back(d, app, running["id"])
    finished = cli("release", "resume", app, check=False)
    assert finished.returncode != 0 and "it is RolledBack" in finished.stderr, finished
