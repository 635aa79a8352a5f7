"""Artifacts, revisions and machine-readable output, through the CLI against a running platform."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import ballast.demo
from tests.e2e.conftest import Platform, http_get_json, start_platform

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.23.2"
DEMO_APP = Path(ballast.demo.__file__).with_name("app.py")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("manifests"), FIRST_IP)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-app")
    shutil.copy(DEMO_APP, directory / "app.py")
    return directory


@pytest.fixture(scope="module")
def digest(platform: Platform, app_dir: Path) -> str:
    found = DIGEST.findall(platform.cli("artifact", "push", str(app_dir)).stdout)
    assert len(found) == 1, found
    return str(found[0])


@pytest.fixture(scope="module")
def pushed(platform: Platform, digest: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """An app whose manifest names the pushed artifact by digest, once its instances are ready."""
    _apply(platform, tmp_path_factory.mktemp("pushed"), _manifest("pushed", digest, replicas=2))
    return platform.wait_ready("pushed", 2)


def _manifest(name: str, digest: str, replicas: int, greeting: str = "hello") -> dict[str, Any]:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name},
            "spec": {"replicas": replicas, "template": {
                "artifact": digest, "command": ["python3", "app.py"], "env": {"GREETING": greeting},
                "healthCheck": {"path": "/healthz", "periodSeconds": 1, "timeoutSeconds": 1},
                "resources": {"cpu": "100m", "memory": "64Mi"}}}}


def _apply(platform: Platform, tmp_path: Path, manifest: dict[str, Any]) -> str:
    path = tmp_path / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return platform.cli("apply", "-f", str(path)).stdout


def test_pushing_the_same_directory_twice_gives_the_same_digest(platform: Platform, app_dir: Path, digest: str) -> None:
    again = platform.cli("artifact", "push", str(app_dir)).stdout
    assert DIGEST.findall(again) == [digest]
    assert "already stored" in again
    assert digest in {a["digest"] for a in platform.cli_json("artifact", "list")}


def test_a_manifest_naming_the_digest_runs_ready_instances(pushed: list[dict[str, Any]], digest: str) -> None:
    assert len(pushed) == 2
    for inst in pushed:
        s = inst["status"]
        answer = http_get_json(s["ip"], s["port"])
        assert (answer["app"], answer["instance"]) == ("pushed", inst["metadata"]["name"]), answer
        assert Path(f"/proc/{s['pid']}/cwd").resolve().name == digest.replace(":", "-"), "runs from the unpacked artifact"


def test_revisions_change_only_when_the_template_changes(platform: Platform, digest: str, tmp_path: Path) -> None:
    _apply(platform, tmp_path, _manifest("shop", digest, replicas=2))
    running = {i["metadata"]["name"]: i["status"]["pid"] for i in platform.wait_ready("shop", 2, revision=1)}
    again = _apply(platform, tmp_path, _manifest("shop", digest, replicas=2))
    assert "revision 1" in again, again
    assert [r["metadata"]["number"] for r in platform.get("revisions", "shop")] == [1]

    _apply(platform, tmp_path, _manifest("shop", digest, replicas=2, greeting="bonjour"))
    revisions = {r["metadata"]["number"]: r["status"]["deployed"] for r in platform.get("revisions", "shop")}
    assert revisions == {1: True, 2: False}, "a new revision is recorded; a release deploys it"
    assert platform.get("apps", "shop")["status"]["latestRevision"] == 2
    # Recording a revision alone restarts nothing: the same processes still serve revision 1.
    assert {i["metadata"]["name"]: i["status"]["pid"] for i in platform.wait_ready("shop", 2, revision=1)} == running
    for inst in platform.instances("shop"):
        answer = http_get_json(inst["status"]["ip"], inst["status"]["port"])
        assert (answer["greeting"], answer["revision"]) == ("hello", "1"), answer


@pytest.mark.parametrize("kind", ["apps", "cells", "nodes", "instances"])
def test_get_as_yaml_gives_whole_objects(platform: Platform, pushed: list[dict[str, Any]], kind: str) -> None:
    document = yaml.safe_load(platform.cli("get", kind, "-o", "yaml").stdout)
    assert set(document) == {"items"} and document["items"], document
    for item in document["items"]:
        assert {"apiVersion", "kind", "metadata", "spec", "status"} <= set(item), item
        assert item["apiVersion"] == "ballast.io/v1alpha1" and item["metadata"]["name"], item
