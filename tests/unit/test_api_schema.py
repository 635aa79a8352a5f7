"""Spec: the API keeps the promises of its own description. schemathesis (a tool nobody here wrote) reads
/v1/openapi.json from a real control plane (`ballast server` as a process, on SQLite and on a fresh PostgreSQL
database), generates requests for every operation, valid and invalid, and sends them once with an admin token and
once with a viewer's: no answer may be a server error, none may break the described statuses, bodies, content
types or headers, an invalid request must be refused and a valid one not refused for its shape.

Checks: all of schemathesis', with `positive_data_acceptance` off for the few operations whose bodies carry rules
a JSON Schema cannot state (CONFIG below says which rule each); those bodies are still sent and held to every
other check. Phases: examples (the schema's path examples name what _seed stores), coverage (the schema's edges:
every bound, every enum, every missing field, every undeclared method) and fuzzing; the stateful phase (chains of
calls) is left out to stay within the test budget. The long-polls (`GET /v1/registry`,
`GET /v1/nodes/{name}/assignments`) wait up to `timeout` seconds by design; their `timeout` is pinned to 0 here, or
a bounded run would spend minutes waiting (their bounds are checked by test_api_fuzz.py). The seed is fixed, so a
failure reproduces; BALLAST_SCHEMA_SEED and BALLAST_SCHEMA_EXAMPLES (examples per operation) widen the hunt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ballast.api.schemas import SUCCESS
from ballast.core.manifests import API_VERSION

EXAMPLES = int(os.environ.get("BALLAST_SCHEMA_EXAMPLES", "8"))
STARTUP_SECONDS = 60
RUN_SECONDS = 600  # the longest one run may take before the test fails (on a busy 2-core machine)

# schemathesis' configuration. Where a body carries a rule a JSON Schema cannot state, a schema-valid body that
# breaks it is a 422 naming the field, which `positive_data_acceptance` would count as a failure.
CONFIG = """
[checks]
enabled = true   # every check schemathesis has; the operations below turn one off where the schema cannot speak

[[operations]]
# a manifest's cross-field rules (cells or replicas, not both; a cell that exists; no dependency cycle; an IANA
# time zone; a change window's from before its to) and references to what is stored
include-name = ["POST /v1/apply"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# a strategy's cross-field rules (group sizes against the instances; a Prometheus query with min or max)
include-name = ["POST /v1/apps/{app}/releases/plan", "POST /v1/apps/{app}/releases"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# a component's addresses (an IP address, IP:PORT) and the cell it names, which must exist
include-name = ["PUT /v1/nodes/{name}", "PUT /v1/gateways/{name}"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# an acknowledged generation beyond the registry's, and a token outliving the token that mints it: the limit is
# the state's, not the shape's
include-name = ["POST /v1/nodes/{name}/ack", "POST /v1/gateways/{name}/ack", "POST /v1/tokens"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# a package must be a gzip-compressed tar archive whose members stay inside it, within the server's limits
include-name = ["POST /v1/artifacts"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# a join token's name needs its kind (the component it names is a node or a gateway)
include-name = ["POST /v1/join-tokens"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# the long-polls: no waiting in a bounded run
include-name = ["GET /v1/registry", "GET /v1/nodes/{name}/assignments"]
parameters = { "query.timeout" = "0" }

[[operations]]
# paged lists: a `continue` token is opaque, only one the server made for the same list and filters is good (400
# otherwise); a watch needs a resourceVersion and takes no paging (422 naming them). The watch does not wait.
include-name = ["GET /v1/instances", "GET /v1/audit", "GET /v1/apps/{app}/endpoints"]
checks.positive_data_acceptance.enabled = false
parameters = { "query.timeout" = "0" }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(fact: str, check, seconds: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{fact} within {seconds}s")
        time.sleep(0.1)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _seed(url: str, admin: str) -> str:
    """The README's world, for the requests to find (the schema's path examples name it): cell-a, the app shop at
    revision 2 with a release in flight, node n1, gateway edge, change window business-hours, release order chg-42,
    and the viewer vic. Returns vic's token."""
    def app(greeting: str) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
                "spec": {"cells": {"cell-a": 1}, "expose": {"host": "shop.local"},
                         "template": {"command": ["python3", "app.py"], "env": {"GREETING": greeting}}}}

    cell = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}}
    window = {"apiVersion": API_VERSION, "kind": "ChangeWindow", "metadata": {"name": "business-hours"},
              "spec": {"allowed": [{"days": ["mon", "tue"], "start": "09:00", "end": "16:00"}], "apps": ["shop"]}}
    order = {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "chg-42"},
             "spec": {"title": "shop v2", "ticket": "CHG-42", "releases": [{"app": "shop"}]}}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as http:
        def ok(r: httpx.Response, status: int = 200) -> Any:
            assert r.status_code == status, r.text
            return r.json()

        ok(http.post("/v1/apply", json={"items": [cell, app("hello")]}))
        ok(http.post("/v1/apply", json={"items": [app("hi"), order]}))
        ok(http.post("/v1/users", json={"name": "vic", "role": "viewer"}), 201)
        viewer = ok(http.post("/v1/tokens", json={"user": "vic"}), 201)["token"]

        def joined(kind: str, name: str) -> dict[str, str]:
            """The component's own credential, got with an admin's one-time join token."""
            made = ok(http.post("/v1/join-tokens", json={"kind": kind, "name": name}), 201)["token"]
            credential = ok(http.post("/v1/join", headers={"Authorization": f"Bearer {made}"},
                                      json={"kind": kind, "name": name}))["token"]
            return {"Authorization": f"Bearer {credential}"}

        ok(http.put("/v1/nodes/n1", headers=joined("node", "n1"),
                    json={"cell": "cell-a", "ip": "127.0.0.2", "cpuMillis": 4000, "memoryBytes": 2**33}))
        ok(http.put("/v1/gateways/edge", headers=joined("gateway", "edge"), json={"address": "127.0.0.1:8080"}))
        _wait_for("the scheduler placed shop's instance", lambda: bool(ok(http.get("/v1/instances"))["items"]), 30)
        ok(http.post("/v1/apps/shop/releases", json={"toRevision": 2}), 201)
        ok(http.post("/v1/apply", json={"items": [window]}))   # after the release: a closed window would refuse it
        return str(viewer)


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_the_api_keeps_its_description(store_url: str, role: str, tmp_path: Path) -> None:
    """schemathesis finds no server error, no undocumented status or body, no accepted invalid request and no
    refused valid one, on every operation, as an admin and as a viewer."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    token_file = tmp_path / "admin-token"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "ballast", "server", "--store", store_url,
                               "--listen", f"127.0.0.1:{port}", "--bootstrap-token-file", str(token_file)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for("the control plane answered", lambda: token_file.exists() and _up(url), STARTUP_SECONDS)
        admin = token_file.read_text().strip()
        viewer = _seed(url, admin)
        token = admin if role == "admin" else viewer
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/v1/openapi.json",
             "--header", f"Authorization: Bearer {token}",
             "--phases", "examples,coverage,fuzzing", "--max-examples", str(EXAMPLES), "--workers", "1",
             "--seed", os.environ.get("BALLAST_SCHEMA_SEED", "20261207"), "--generation-database", "none",
             "--request-timeout", "30", "--no-color", "--output-truncate", "true"],
            capture_output=True, text=True, timeout=RUN_SECONDS, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-2000:]
        assert f"Tested: {len(SUCCESS)}" in run.stdout, run.stdout[-5000:]   # every operation, none skipped
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
