"""Changing a running app's instance counts goes through the grouped engine (a scale release).

The first deployment is placed directly; a later change of `cells:` becomes a
release of kind "scale": new instances and retirements per cell, in a beta
group and groups, pausable, resumable and reversible like any release.
"""

from __future__ import annotations

import shutil
import textwrap
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.e2e.conftest import Platform, eventually, start_platform

pytestmark = pytest.mark.e2e
DEMO_APP = Path(__file__).resolve().parents[2] / "src" / "ballast" / "demo" / "app.py"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("scale"), "127.0.43.2")


def apply_counts(platform: Platform, tmp: Path, a: int, b: int) -> None:
    shutil.copy(DEMO_APP, tmp / "app.py")
    path = tmp / f"scale-{a}-{b}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: ballast.io/v1alpha1
        kind: AppService
        metadata: {{name: scaler}}
        spec:
          cells: {{cell-a: {a}, cell-b: {b}}}
          strategy: {{groups: 2, betaSize: 1, pause: manual}}
          template:
            artifact: ./
            command: [python3, app.py]
            healthCheck: {{path: /healthz, periodSeconds: 5, timeoutSeconds: 1}}
            gracePeriodSeconds: 3
        """))
    platform.cli("apply", "-f", str(path))


def api(platform: Platform, path: str) -> Any:
    return platform.api(path)


def ready_per_cell(platform: Platform) -> Counter[str]:
    items = api(platform, "/v1/instances?app=scaler")["items"]
    return Counter(i["status"]["cell"] for i in items if i["status"]["ready"] and i["spec"]["desired"] == "running")


def release(platform: Platform) -> dict[str, Any]:
    try:
        return api(platform, "/v1/apps/scaler/release")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        exc.close()
        assert exc.code != 404, "no release yet"  # the scheduler has not started the scale release yet
        raise


def wait_release(platform: Platform, phase: str, completed: int | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        s = release(platform)
        assert s["phase"] == phase and (completed is None or s["completedGroups"] == completed), \
            (s["phase"], s["completedGroups"], s["reason"], s["waiting"])
        return s
    return eventually(check, f"the scale release is {phase}", 90)


def test_changing_counts_of_a_running_app_is_a_grouped_reversible_scale_release(platform: Platform,
                                                                                 tmp_path: Path) -> None:
    """2+2 → 4+1 runs as a scale release (beta, pause, resume); 4+1 → 2+2 rolled back after beta restores 4+1."""
    apply_counts(platform, tmp_path, 2, 2)
    platform.wait_ready("scaler", 4, revision=1)
    refused = platform.cli("release", "status", "scaler", check=False)
    assert refused.returncode != 0 and "no release" in refused.stderr  # the first deployment is direct

    apply_counts(platform, tmp_path, 4, 1)
    s = wait_release(platform, "Paused", completed=1)
    assert s["kind"] == "scale" and s["fromRevision"] == s["toRevision"] == 1
    beta = s["groups"][0]
    assert sorted((i["cell"], i["state"]) for i in beta["instances"]) == [("cell-a", "done"), ("cell-b", "done")]
    eventually(lambda: _equal(ready_per_cell(platform), {"cell-a": 3, "cell-b": 1}), "beta: +1 in cell-a, -1 in cell-b")
    platform.cli("release", "resume", "scaler")
    wait_release(platform, "Succeeded")
    eventually(lambda: _equal(ready_per_cell(platform), {"cell-a": 4, "cell-b": 1}), "scaled to 4 + 1")

    apply_counts(platform, tmp_path, 2, 2)
    wait_release(platform, "Paused", completed=1)
    eventually(lambda: _equal(ready_per_cell(platform), {"cell-a": 3, "cell-b": 2}), "beta: -1 in cell-a, +1 in cell-b")
    platform.cli("release", "rollback", "scaler")
    wait_release(platform, "RolledBack")
    eventually(lambda: _equal(ready_per_cell(platform), {"cell-a": 4, "cell-b": 1}), "rolled back to 4 + 1")

    held = eventually(lambda: _message(platform), "the app says its declared counts are held back")
    assert "rolled back" in held and "Apply the app again" in held, held
    assert dict(ready_per_cell(platform)) == {"cell-a": 4, "cell-b": 1}  # not redone behind the operator's back

    history = platform.cli_json("release", "history", "scaler")
    assert [(h["kind"], h["phase"]) for h in history] == [("scale", "Succeeded"), ("scale", "RolledBack")]
    assert history[0]["events"][0]["actor"] == "controller/scheduler"
    assert any(e["action"] == "rollback" and e["actor"] == "admin" for e in history[1]["events"])


def _equal(actual: Counter[str], expected: dict[str, int]) -> None:
    assert dict(actual) == expected, dict(actual)


def _message(platform: Platform) -> str:
    message = api(platform, "/v1/apps/scaler")["status"].get("message", "")
    assert "rolled back" in message, message
    return str(message)
