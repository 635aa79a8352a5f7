"""Artifact limits with real parts: the control plane refuses an archive bomb on push, and an agent whose
node allows less refuses to unpack a package the control plane took, says why on the instance, and keeps
running its other instances."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import ballast.demo
from tests.archives import Entry, targz
from tests.e2e.conftest import Platform, eventually, http_get_json, start_platform

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.161.10"
MiB = 2**20
SERVER_LIMIT = 32 * MiB      # what a push may unpack to
AGENT_LIMIT = 4 * MiB        # what these nodes unpack
DEMO_APP = Path(ballast.demo.__file__).with_name("app.py")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("artifact-limits"), FIRST_IP, settings={
        "BALLAST_MAX_ARTIFACT_UNPACKED_BYTES": str(SERVER_LIMIT),
        "BALLAST_AGENT_MAX_ARTIFACT_UNPACKED_BYTES": str(AGENT_LIMIT)})


def _push(platform: Platform, blob: bytes) -> tuple[int, dict[str, Any]]:
    token = yaml.safe_load((platform.data_dir / "client.yaml").read_text())["token"]
    request = urllib.request.Request(platform.server + "/v1/artifacts", data=blob, method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _apply(platform: Platform, tmp_path: Path, name: str, digest: str, replicas: int) -> None:
    manifest = {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name},
                "spec": {"replicas": replicas, "template": {
                    "artifact": digest, "command": ["python3", "app.py"],
                    "healthCheck": {"path": "/healthz", "periodSeconds": 1, "timeoutSeconds": 1},
                    "resources": {"cpu": "100m", "memory": "64Mi"}}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    platform.cli("apply", "-f", str(path))


def test_a_bomb_is_refused_on_push_and_a_package_too_big_for_a_node_fails_only_its_instance(
        platform: Platform, tmp_path: Path) -> None:
    app_dir = tmp_path / "steady"
    app_dir.mkdir()
    shutil.copy(DEMO_APP, app_dir / "app.py")
    pushed = platform.cli("artifact", "push", str(app_dir)).stdout
    steady_digest = next(w for w in pushed.split() if w.startswith("sha256:"))
    _apply(platform, tmp_path, "steady", steady_digest, replicas=4)
    steady = platform.wait_ready("steady", 4)

    # 64 MiB of zeros in well under 1 MB: the control plane refuses it at the member's header.
    app_py = DEMO_APP.read_bytes()
    bomb = targz(Entry("app.py", app_py), Entry("zeros", zeros=64 * MiB))
    assert len(bomb) < MiB
    status, body = _push(platform, bomb)
    assert status == 422, body
    assert body["problems"][0]["value"] == "member zeros"
    assert body["problems"][0]["expected"] == f"at most {SERVER_LIMIT} bytes unpacked"
    bomb_digest = "sha256:" + hashlib.sha256(bomb).hexdigest()
    assert bomb_digest not in {a["digest"] for a in platform.cli_json("artifact", "list")}

    # 16 MiB: within the control plane's limit, beyond what the nodes unpack.
    heavy = targz(Entry("app.py", app_py), Entry("zeros", zeros=16 * MiB))
    status, body = _push(platform, heavy)
    assert status == 201, body
    heavy_digest = body["digest"]
    _apply(platform, tmp_path, "heavy", heavy_digest, replicas=1)

    def refused_on_the_instance() -> dict[str, Any]:
        [inst] = platform.instances("heavy")
        message = inst["status"]["message"]
        assert inst["status"]["phase"] in ("Failed", "BackOff"), inst["status"]
        assert "cannot be unpacked" in message and f"at most {AGENT_LIMIT} bytes unpacked" in message, message
        return inst
    eventually(refused_on_the_instance, "the heavy instance says why it cannot start")

    # The agent went on serving: every steady instance still answers, and the steady app is still ready.
    for inst in steady:
        s = inst["status"]
        assert http_get_json(s["ip"], s["port"])["app"] == "steady"
    platform.wait_ready("steady", 4)
    # Nothing of the refused package is left on any node: no unpacked tree, no half-unpacked one.
    leftovers = [p for p in (platform.data_dir / "agents").glob("*/artifacts/*")
                 if p.name.startswith(heavy_digest.replace(":", "-"))]
    assert leftovers == [], leftovers
    # The package itself stays stored: a node with room for it could run it.
    assert heavy_digest in {a["digest"] for a in platform.cli_json("artifact", "list")}
