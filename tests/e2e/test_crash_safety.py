"""Killing the control plane (SIGKILL) at many points of a release loses nothing.

One app of 10 instances over two cells is released 1 → 2 with manual pauses,
then 2 → 3 and rolled back from inside a group. The control plane is killed
at twelve distinct points (right after start, mid-beta, while paused, right
after resume, inside groups, during the rollback); `ballast up` restarts it
each time. At the end every instance was started exactly once per revision
it went through (its starts.log), the release events hold each transition
exactly once, and the audit chain verifies. test_crash_safety_postgres.py
runs the same body on PostgreSQL with fewer instances and kill points.
"""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.e2e.conftest import Platform, eventually, processes_mentioning, proc_argv, start_platform

pytestmark = pytest.mark.e2e
DEMO_APP = Path(__file__).resolve().parents[2] / "src" / "ballast" / "demo" / "app.py"


@dataclass(frozen=True)
class Scenario:
    """How much of the release the test walks: instances per cell, the points where it kills the control plane
    (None: every one) and how many distinct moments those kills must have hit."""

    per_cell: int = 5
    kill_at: frozenset[str] | None = None
    distinct_kills: int = 10


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("crash"), "127.0.51.2")


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario()


def _manifest(root: Path, greeting: str, per_cell: int) -> Path:
    app_dir = root / "crashapp"
    app_dir.mkdir(exist_ok=True)
    shutil.copy(DEMO_APP, app_dir / "app.py")
    path = root / f"crash-{greeting}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: ballast.io/v1alpha1
        kind: AppService
        metadata: {{name: crash}}
        spec:
          cells: {{cell-a: {per_cell}, cell-b: {per_cell}}}
          strategy: {{groups: 3, betaSize: 1, pause: manual, maxUnavailablePerCell: 1}}
          template:
            artifact: ./crashapp
            command: [python3, app.py]
            env: {{GREETING: {greeting}}}
            healthCheck: {{path: /healthz, periodSeconds: 1, timeoutSeconds: 1, initialDelaySeconds: 3}}
            gracePeriodSeconds: 5
        """))
    return path


def _server_pid(platform: Platform) -> int | None:
    for pid in processes_mentioning(str(platform.data_dir)):
        if "server" in proc_argv(pid):
            return pid
    return None


def _healthy(platform: Platform) -> None:
    try:
        with urllib.request.urlopen(f"{platform.server}/healthz", timeout=2) as r:
            assert r.status == 200
    except OSError as exc:
        raise AssertionError(f"control plane not answering: {exc}") from exc


def kill_control_plane(platform: Platform, where: str, kills: list[tuple[Any, ...]]) -> None:
    """SIGKILL the control plane and wait for `ballast up` to bring it back.

    The point is recorded as observed just before the kill (release, phase, groups done, instances at
    each revision), so the test counts the moments it really hit, not the names it meant.
    """
    pid = eventually(lambda: _require(_server_pid(platform)), "the control plane process exists")
    s = api(platform, "/v1/apps/crash/release")
    revisions = sorted((i["spec"]["revision"], i["status"]["revision"], str(i["status"]["ready"]))   # None: Unknown
                       for i in api(platform, "/v1/instances?app=crash")["items"])
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: _require(_server_pid(platform) not in (None, pid)), f"control plane restarted after kill at {where}")
    eventually(lambda: _healthy(platform), "the restarted control plane answers")
    kills.append((where, s["id"], s["phase"], s["completedGroups"], tuple(revisions)))


def _require(value: Any) -> Any:
    assert value, "not yet"
    return value


def api(platform: Platform, path: str) -> Any:
    return platform.api(path)


def status(platform: Platform) -> dict[str, Any]:
    return api(platform, "/v1/apps/crash/release")  # type: ignore[no-any-return]


def wait_phase(platform: Platform, phase: str, completed: int | None = None, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        s = status(platform)
        assert s["phase"] == phase, f"{s['phase']}: {s['reason']} / {s['waiting']}"
        if completed is not None:
            assert s["completedGroups"] == completed, s["completedGroups"]
        return s
    return eventually(check, f"release is {phase}", timeout)


def wait_changing(platform: Platform, group: str, state: str = "in progress") -> None:
    """Until an instance of `group` is in `state` — or the group is past it (a loaded machine may be slow
    to look); the kill is then recorded at the later point it really hit."""
    def check() -> None:
        s = status(platform)
        g = next(g for g in s["groups"] if g["name"] == group)
        states = [i["state"] for i in g["instances"]]
        assert state in states or all(x in ("done", "rolled back") for x in states), states
    eventually(check, f"an instance of {group} is {state}", 60)


def starts(platform: Platform) -> dict[str, list[str]]:
    out = {}
    for log in platform.data_dir.glob("agents/*/instances/crash-*/starts.log"):
        out[log.parent.name] = [line.split()[0] for line in log.read_text().splitlines()]
    return out


def test_killing_the_control_plane_anywhere_in_a_release_loses_nothing(platform: Platform, scenario: Scenario,
                                                                       tmp_path: Path) -> None:
    """SIGKILLs of the control plane across a release and a rollback (twelve by default); the end state is exact."""
    kills: list[tuple[Any, ...]] = []
    total = 2 * scenario.per_cell

    def kill(where: str) -> None:
        if scenario.kill_at is None or where in scenario.kill_at:
            kill_control_plane(platform, where, kills)

    platform.cli("apply", "-f", str(_manifest(tmp_path, "one", scenario.per_cell)))
    platform.wait_ready("crash", total, revision=1)
    platform.cli("apply", "-f", str(_manifest(tmp_path, "two", scenario.per_cell)))

    platform.cli("release", "start", "crash", "--to-revision", "2")
    kill("right after start")
    wait_changing(platform, "beta")
    kill("mid-beta")
    wait_phase(platform, "Paused", completed=1)
    kill("paused after beta")
    platform.cli("release", "resume", "crash")
    kill("right after resume")
    wait_changing(platform, "group-1")
    kill("inside group-1")
    wait_changing(platform, "group-1", "done")
    kill("group-1 partly done")
    wait_phase(platform, "Paused", completed=2)
    kill("paused after group-1")
    platform.cli("release", "resume", "crash")
    wait_changing(platform, "group-2")
    kill("inside group-2")
    wait_changing(platform, "group-2", "done")
    kill("group-2 partly done")
    wait_phase(platform, "Succeeded")
    platform.wait_ready("crash", total, revision=2)

    platform.cli("apply", "-f", str(_manifest(tmp_path, "three", scenario.per_cell)))
    platform.cli("release", "start", "crash", "--to-revision", "3", "--pause", "none")
    wait_changing(platform, "group-1")
    kill("inside group-1 of the second release")
    # The release in flight is turned round (once it had succeeded, a rollback would be a new release).
    platform.cli("release", "rollback", "crash", "--expect-phase", "Running")
    kill("right after rollback")
    if status(platform)["phase"] == "RollingBack":  # instances take >= 3 s each: usually still rolling back
        kill("during the rollback")
    wait_phase(platform, "RolledBack")
    kill("after the rollback ended")
    distinct = {k[1:] for k in kills}  # what was observed at each kill, without the intended name
    assert len(distinct) >= scenario.distinct_kills, kills

    final = platform.wait_ready("crash", total, revision=2)
    assert {i["status"]["cell"] for i in final} == {"cell-a", "cell-b"}
    history = starts(platform)
    assert len(history) == total, history
    for instance, revisions in history.items():
        # Started at 1, updated to 2 exactly once; the second release moved it to 3 at most once and back once.
        assert revisions[:2] == ["1", "2"], (instance, revisions)
        assert revisions[2:] in ([], ["3", "2"]), (instance, revisions)

    first, second = platform.cli_json("release", "history", "crash")
    assert [e["action"] for e in first["events"]] == ["start", "paused", "resume", "paused", "resume",
                                                       "succeeded"], first["events"]
    assert first["phase"] == "Succeeded"
    actions = [e["action"] for e in second["events"]]
    assert actions[0] == "start" and actions[-1] == "rolled-back" and actions.count("rollback") == 1, actions
    assert second["phase"] == "RolledBack"
    platform.cli("audit", "verify")
