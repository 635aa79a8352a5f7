"""Killing the control plane (SIGKILL) at many points of a release loses nothing.

One app of 10 instances over two cells is released 1 → 2 with manual pauses,
then 2 → 3 and rolled back from inside a group. The control plane is killed
at twelve distinct points (right after start, mid-beta, while paused, right
after resume, inside groups, during the rollback); `ballast up` restarts it
each time. At the end every instance was started exactly once per revision
it went through (its starts.log), the release events hold each transition
exactly once, and the audit chain verifies.
"""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.e2e.conftest import Platform, eventually, processes_mentioning, proc_argv, start_platform

pytestmark = pytest.mark.e2e
DEMO_APP = Path(__file__).resolve().parents[2] / "src" / "ballast" / "demo" / "app.py"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("crash"), "127.0.51.2")


def _manifest(root: Path, greeting: str) -> Path:
    app_dir = root / "crashapp"
    app_dir.mkdir(exist_ok=True)
    shutil.copy(DEMO_APP, app_dir / "app.py")
    path = root / f"crash-{greeting}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: ballast.io/v1alpha1
        kind: AppService
        metadata: {{name: crash}}
        spec:
          cells: {{cell-a: 5, cell-b: 5}}
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
    revisions = sorted((i["spec"]["revision"], i["status"]["revision"], i["status"]["ready"])
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


def test_killing_the_control_plane_anywhere_in_a_release_loses_nothing(platform: Platform, tmp_path: Path) -> None:
    """Twelve SIGKILLs of the control plane across a release and a rollback; the end state is exact."""
    kills: list[tuple[Any, ...]] = []
    platform.cli("apply", "-f", str(_manifest(tmp_path, "one")))
    platform.wait_ready("crash", 10, revision=1)
    platform.cli("apply", "-f", str(_manifest(tmp_path, "two")))

    platform.cli("release", "start", "crash", "--to-revision", "2")
    kill_control_plane(platform, "right after start", kills)
    wait_changing(platform, "beta")
    kill_control_plane(platform, "mid-beta", kills)
    wait_phase(platform, "Paused", completed=1)
    kill_control_plane(platform, "paused after beta", kills)
    platform.cli("release", "resume", "crash")
    kill_control_plane(platform, "right after resume", kills)
    wait_changing(platform, "group-1")
    kill_control_plane(platform, "inside group-1", kills)
    wait_changing(platform, "group-1", "done")
    kill_control_plane(platform, "group-1 partly done", kills)
    wait_phase(platform, "Paused", completed=2)
    kill_control_plane(platform, "paused after group-1", kills)
    platform.cli("release", "resume", "crash")
    wait_changing(platform, "group-2")
    kill_control_plane(platform, "inside group-2", kills)
    wait_changing(platform, "group-2", "done")
    kill_control_plane(platform, "group-2 partly done", kills)
    wait_phase(platform, "Succeeded")
    platform.wait_ready("crash", 10, revision=2)

    platform.cli("apply", "-f", str(_manifest(tmp_path, "three")))
    platform.cli("release", "start", "crash", "--to-revision", "3", "--pause", "none")
    wait_changing(platform, "group-1")
    kill_control_plane(platform, "inside group-1 of the second release", kills)
    platform.cli("release", "rollback", "crash")
    kill_control_plane(platform, "right after rollback", kills)
    if status(platform)["phase"] == "RollingBack":  # instances take >= 3 s each: usually still rolling back
        kill_control_plane(platform, "during the rollback", kills)
    wait_phase(platform, "RolledBack")
    kill_control_plane(platform, "after the rollback ended", kills)
    distinct = {k[1:] for k in kills}  # what was observed at each kill, without the intended name
    assert len(distinct) >= 10, kills

    final = platform.wait_ready("crash", 10, revision=2)
    assert {i["status"]["cell"] for i in final} == {"cell-a", "cell-b"}
    history = starts(platform)
    assert len(history) == 10, history
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
