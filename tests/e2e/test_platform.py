"""`ballast up` + `ballast demo` on SQLite: the platform comes up, runs real instances, and the CLI
reports, refuses and audits the way the foundation issue promises."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.e2e.conftest import Platform, find_agent, http_get_json, proc_environ, start_platform

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.21.2"
NODES = {  # node -> (cell, zone, ip)
    "node-a1": ("cell-a", "zone-a", "127.0.21.2"), "node-a2": ("cell-a", "zone-a", "127.0.21.3"),
    "node-b1": ("cell-b", "zone-b", "127.0.21.4"), "node-b2": ("cell-b", "zone-b", "127.0.21.5"),
}
# Each node's loopback address for its apps and mesh listeners (on one machine: one per node, not its IP).
PRIVATE = {"node-a1": "127.128.21.2", "node-a2": "127.128.21.3", "node-b1": "127.128.21.4", "node-b2": "127.128.21.5"}
ALLOWED_ENV = {"PATH", "LANG", "HOME", "HOST", "PORT", "GREETING", "DEMO_LATENCY_PROFILE", "BALLAST_ENDPOINT",
               "BALLAST_MESH_URL", "BALLAST_INSTANCE_ID", "BALLAST_APP", "BALLAST_GROUP", "BALLAST_CELL", "BALLAST_ZONE",
               "BALLAST_REVISION", "BALLAST_NODE", "BALLAST_NODE_IP", "BALLAST_DATA_DIR"}
AS_ROOT = os.geteuid() == 0   # CI runs as root: only then can apps run as another user than the agents


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("platform"), FIRST_IP)


@pytest.fixture(scope="module")
def shop(platform: Platform) -> list[dict[str, Any]]:
    """The demo app with 10 replicas, once every instance is Running and ready."""
    platform.cli("demo", "--replicas", "10")
    return platform.wait_ready("shop", 10)


def test_up_registers_four_ready_nodes_in_two_cells_on_distinct_ips(platform: Platform) -> None:
    nodes = {n["metadata"]["name"]: n for n in platform.get("nodes")}
    assert set(nodes) == set(NODES)
    for name, (cell, zone, ip) in NODES.items():
        assert (nodes[name]["spec"]["cell"], nodes[name]["spec"]["zone"], nodes[name]["spec"]["ip"]) == (cell, zone, ip)
        assert nodes[name]["status"]["ready"] is True, nodes[name]
    assert len({n["spec"]["ip"] for n in nodes.values()}) == 4
    cells = {c["metadata"]["name"]: c for c in platform.get("cells")}
    assert {name: (c["spec"]["zone"], sorted(c["status"]["nodes"])) for name, c in cells.items()} == {
        "cell-a": ("zone-a", ["node-a1", "node-a2"]), "cell-b": ("zone-b", ["node-b1", "node-b2"])}
    assert (platform.data_dir / "client.yaml").is_file()
    assert not (platform.home / ".config" / "ballast").exists(), "--no-user-config leaves $HOME alone"


def test_up_gives_each_node_and_the_gateway_its_own_credential(platform: Platform) -> None:
    """Each agent and the gateway joined with a join token of its own: its credential file (mode 0600) speaks for
    it alone, no agent runs with a token in its environment, and no shared agent token is left."""
    seen = set()
    for name, kind, directory in [*[(n, "node", platform.data_dir / "agents" / n) for n in NODES],
                                  ("edge", "gateway", platform.data_dir / "gateway")]:
        path = directory / "credential"
        assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
        who = httpx.get(f"{platform.server}/v1/whoami", timeout=10,
                        headers={"Authorization": f"Bearer {path.read_text().strip()}"}).json()
        assert (who["user"], [b["role"] for b in who["bindings"]]) == (f"{kind}/{name}", [kind]), who
        seen.add(who["token"])
    assert len(seen) == 5, "five credentials, one each"
    assert not (platform.data_dir / "agent-token").exists()
    for name in NODES:
        pid = find_agent(platform.data_dir, name)
        assert pid is not None
        assert "BALLAST_TOKEN" not in proc_environ(pid), "the agent's credential is in its file, not its environment"


def test_node_join_exchanges_an_admins_join_token_once_for_a_credential_file(platform: Platform, tmp_path: Path) -> None:
    """`ballast node join-token create --node N` prints a one-time token; `ballast node join N` writes N's own
    credential (0600) and names it; the same token a second time exits non-zero naming why, writing nothing."""
    join_token = platform.cli("node", "join-token", "create", "--node", "node-x9", "--ttl", "120").stdout.strip()
    assert join_token.startswith("bjt_")
    path = tmp_path / "node-x9.credential"
    env = platform.env(BALLAST_JOIN_TOKEN=join_token)
    joined = platform.cli("node", "join", "node-x9", "--server", platform.server, "--credential-file", str(path), env=env)
    assert "node/node-x9 joined" in joined.stdout, joined.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    who = httpx.get(f"{platform.server}/v1/whoami", timeout=10,
                    headers={"Authorization": f"Bearer {path.read_text().strip()}"}).json()
    assert who["user"] == "node/node-x9" and who["token"] in joined.stdout, who
    again = platform.cli("node", "join", "node-x9", "--server", platform.server, "--credential-file",
                         str(tmp_path / "again"), env=env, check=False)
    assert again.returncode != 0 and "used already" in again.stdout + again.stderr, again
    assert not (tmp_path / "again").exists()


def test_demo_runs_ten_ready_instances_five_per_cell_listening_on_their_node_ip(shop: list[dict[str, Any]]) -> None:
    by_cell: dict[str, int] = {}
    for inst in shop:
        s = inst["status"]
        by_cell[s["cell"]] = by_cell.get(s["cell"], 0) + 1
        cell, zone, ip = NODES[s["node"]]
        assert (s["cell"], s["zone"], s["ip"]) == (cell, zone, ip), inst
        assert s["revision"] == 1 and s["restarts"] == 0, inst
        assert 20000 <= s["port"] <= 29999, inst
    assert by_cell == {"cell-a": 5, "cell-b": 5}
    assert len({(i["status"]["ip"], i["status"]["port"]) for i in shop}) == 10


def test_each_instance_answers_http_with_its_own_identity(shop: list[dict[str, Any]]) -> None:
    for inst in shop:
        s = inst["status"]
        answer = http_get_json(s["ip"], s["port"], "/")
        assert answer["instance"] == inst["metadata"]["name"], answer
        assert answer["app"] == "shop" and answer["revision"] == "1", answer
        assert (answer["cell"], answer["zone"], answer["node"]) == (s["cell"], s["zone"], s["node"]), answer
        assert answer["pid"] == s["pid"], "the process answering is the one the status names"


def test_instance_processes_carry_ballast_identity(shop: list[dict[str, Any]], platform: Platform) -> None:
    for inst in shop:
        s = inst["status"]
        env = proc_environ(s["pid"])
        assert {k: env.get(k) for k in ("BALLAST_INSTANCE_ID", "BALLAST_APP", "BALLAST_GROUP", "BALLAST_CELL", "BALLAST_ZONE",
                                        "BALLAST_REVISION", "BALLAST_NODE", "BALLAST_NODE_IP", "HOST",
                                        "BALLAST_ENDPOINT", "BALLAST_MESH_URL")} == {
            "BALLAST_INSTANCE_ID": inst["metadata"]["name"], "BALLAST_APP": "shop", "BALLAST_GROUP": "",
            "BALLAST_CELL": s["cell"],
            "BALLAST_ZONE": s["zone"], "BALLAST_REVISION": "1", "BALLAST_NODE": s["node"],
            "BALLAST_NODE_IP": s["ip"], "HOST": PRIVATE[s["node"]], "BALLAST_ENDPOINT": f"{s['ip']}:{s['port']}",
            "BALLAST_MESH_URL": s["meshUrl"]}
        # The app listens on a private port of its own, on loopback; the registered endpoint is its sidecar's.
        assert env["PORT"].isdigit() and int(env["PORT"]) != s["port"], env["PORT"]
        assert http_get_json(env["HOST"], int(env["PORT"]), "/")["instance"] == inst["metadata"]["name"]
        assert urlsplit(s["meshUrl"]).hostname == PRIVATE[s["node"]], s["meshUrl"]
        assert "BALLAST_TOKEN" not in env, "the agent's token is not the app's"
        assert "BALLAST_JOIN_TOKEN" not in env, "nor its join token"
        data_dir = Path(env["BALLAST_DATA_DIR"])
        assert data_dir.is_relative_to(platform.data_dir / "agents" / s["node"]), data_dir
        assert ipaddress.ip_address(s["ip"]).is_loopback



# --- apps cannot read the platform's secrets ----------------------------------------------
def _ids(pid: int, field: str) -> set[int]:
    """The real, effective, saved and filesystem ids ("Uid" or "Gid") of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return {int(v) for v in line.split()[1:]}
    raise AssertionError(f"no {field} line for pid {pid}")


def _secrets(platform: Platform) -> dict[str, Path]:
    d = platform.data_dir
    return {"client config": d / "client.yaml", "node-a1's credential": d / "agents" / "node-a1" / "credential",
            "the gateway's credential": d / "gateway" / "credential", "database": d / "ballast.db",
            "database journal": d / "ballast.db-wal", "database shared memory": d / "ballast.db-shm",
            "server log": d / "logs" / "server.log", "agent state": d / "agents" / "node-a1" / "state.json"}


def test_instances_run_as_an_unprivileged_user_with_no_credential_in_their_environment(
        shop: list[dict[str, Any]], platform: Platform) -> None:
    tokens = {yaml.safe_load((platform.data_dir / "client.yaml").read_text())["token"],
              *((platform.data_dir / "agents" / n / "credential").read_text().strip() for n in NODES)}
    for inst in shop:
        s = inst["status"]
        env = proc_environ(s["pid"])
        agent = find_agent(platform.data_dir, s["node"])
        assert agent is not None
        if AS_ROOT:
            app_user = pwd.getpwnam("ballast-app")
            assert _ids(s["pid"], "Uid") == {app_user.pw_uid} != _ids(agent, "Uid"), inst["metadata"]["name"]
            assert _ids(s["pid"], "Gid") == {app_user.pw_gid} and app_user.pw_uid != 0
            assert env["HOME"] == app_user.pw_dir
            # Exactly what the agent gives (as another user, no wrapper of the agent's user, such as pyenv's
            # shims, runs in between and adds its own).
            assert set(env) <= ALLOWED_ENV, f"{inst['metadata']['name']}: unexpected {set(env) - ALLOWED_ENV}"
        assert not any(token in value for token in tokens for value in env.values()), "a token reached the app"
        assert "BALLAST_TOKEN" not in proc_environ(agent), "ballast up gives agents their credential in a file"
        data_dir = Path(env["BALLAST_DATA_DIR"])
        assert (data_dir.stat().st_uid, stat.S_IMODE(data_dir.stat().st_mode)) == (_ids(s["pid"], "Uid").pop(), 0o700)


def test_the_data_dir_and_its_secrets_are_the_owners_alone(platform: Platform, shop: list[dict[str, Any]]) -> None:
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    # Enterable (not listable) on the way to the apps' own files when they run as another user.
    assert mode(platform.data_dir) == (0o711 if AS_ROOT else 0o700)
    for what, path in _secrets(platform).items():
        assert mode(path) == 0o600, f"{what} {path}: {mode(path):04o}"
    for node in NODES:
        agent_dir = platform.data_dir / "agents" / node
        assert mode(agent_dir) == mode(platform.data_dir / "agents") == mode(platform.data_dir), node
        for private in ("logs", "sidecars"):   # the apps' output, the proxies' configurations and sockets
            assert mode(agent_dir / private) == 0o700, f"{agent_dir / private}: {mode(agent_dir / private):04o}"
    assert mode(platform.data_dir / "logs") == 0o700
    # The control plane writes it owner-only; `ballast up` moves the admin token into the client config.
    assert not (platform.data_dir / "bootstrap-token").exists()


PROBE = """
import json, os, sys
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        open(path, "rb").close() if os.path.isfile(path) or not os.path.exists(path) else os.listdir(path)
        out[name] = "read"
    except OSError as exc:
        out[name] = type(exc).__name__
for name, path in (("own data dir", os.environ["BALLAST_DATA_DIR"]), ("artifact", os.getcwd())):
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
        os.unlink(os.path.join(path, ".probe"))
        out["write " + name] = "written"
    except OSError as exc:
        out["write " + name] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.mark.skipif(not AS_ROOT, reason="apps run as another user only when the agents run as root")
def test_as_the_instance_user_the_platforms_secrets_cannot_be_read(platform: Platform,
                                                                  shop: list[dict[str, Any]]) -> None:
    """A process of the apps' user, where an app runs, reading what an operator scoped to one app once got."""
    inst = shop[0]["status"]
    env = proc_environ(inst["pid"])
    targets = {**{k: str(v) for k, v in _secrets(platform).items()},
               "data dir listing": str(platform.data_dir), "agents' data dir listing": str(platform.data_dir / "agents")}
    assert all(Path(p).exists() for p in targets.values()), targets
    app_user = pwd.getpwnam("ballast-app")
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")   # one any user may run
    assert python is not None
    done = subprocess.run([python, "-I", "-c", PROBE, json.dumps(targets)], capture_output=True, text=True,
                          timeout=30, env=env, cwd=os.readlink(f"/proc/{inst['pid']}/cwd"),
                          user=app_user.pw_uid, group=app_user.pw_gid, extra_groups=[], check=True)
    seen = json.loads(done.stdout)
    assert seen == {**{k: "PermissionError" for k in targets}, "write own data dir": "written",
                    "write artifact": "PermissionError"}, seen


# --- only the endpoint faces the network ---------------------------------------------------
def _first_line(host: str, port: int, service: str, source: str | None = None) -> bytes:
    """The first line answered to a GET from `source` (default: the kernel's choice), b"" if closed or reset."""
    try:
        with socket.create_connection((host, port), timeout=5, source_address=(source, 0) if source else None) as c:
            c.sendall(f"GET / HTTP/1.1\r\nHost: {service}\r\nConnection: close\r\n\r\n".encode())
            return c.makefile("rb").readline()
    except ConnectionRefusedError:
        raise
    except (ConnectionError, TimeoutError):   # reset, or a broken pipe: turned away after the handshake
        return b""


def _refused(host: str, port: int, source: str) -> bool:
    try:
        _first_line(host, port, "shop", source)
    except ConnectionRefusedError:
        return True
    return False


def test_only_the_endpoint_faces_another_nodes_address(shop: list[dict[str, Any]]) -> None:
    for inst in shop:
        s = inst["status"]
        app_port = int(proc_environ(s["pid"])["PORT"])
        mesh = urlsplit(s["meshUrl"])
        assert mesh.hostname is not None and mesh.port is not None
        other = next(ip for _, _, ip in NODES.values() if ip != s["ip"])   # another node's address
        # Nothing but the endpoint listens on the node's IP.
        assert _refused(s["ip"], app_port, other), f"{inst['metadata']['name']}: app port on the node's IP"
        assert _refused(s["ip"], mesh.port, other), f"{inst['metadata']['name']}: mesh listener on the node's IP"
        # The app's own port on the node's private address: only the instance's host side reaches it (the fence);
        # another node's address is refused, and so is a source on the node's own IP (that is the network's side).
        assert _refused(mesh.hostname, app_port, other), f"{inst['metadata']['name']}: app port from another node"
        assert _refused(mesh.hostname, app_port, s["ip"]), f"{inst['metadata']['name']}: app port from the node IP"
        assert _first_line(mesh.hostname, app_port, "shop").startswith(b"HTTP/1.1 200"), "the app answers its host"
        # The mesh listener (loopback) turns away a caller that speaks from another node's address (the fence
        # refuses it first; HAProxy's own source check stands behind it where there is no fence) ...
        assert _refused(mesh.hostname, mesh.port, other), inst["metadata"]["name"]
        # ... and serves the instance's own calls, whose source is the kernel's for loopback.
        assert _first_line(mesh.hostname, mesh.port, "shop").startswith(b"HTTP/1.1 200"), inst["metadata"]["name"]
        assert _first_line(s["ip"], s["port"], "shop", other).startswith(b"HTTP/1.1 200"), "the endpoint answers"


# --- bad input is refused with an actionable message, and nothing half-written stays ----
BAD_MULTI_DOC = """\
apiVersion: ballast.io/v1alpha1
kind: AppService
metadata: {name: fine-app}
spec:
  replicas: 2
  template: {command: [python3, app.py]}
---
apiVersion: ballast.io/v1alpha1
kind: AppService
metadata: {name: broken-app}
spec:
  replicas: -3
  template: {command: [python3, app.py]}
"""

UNKNOWN_KIND = """\
apiVersion: ballast.io/v1alpha1
kind: Gadget
metadata: {name: gizmo}
spec: {}
"""

VALID_CELL = """\
apiVersion: ballast.io/v1alpha1
kind: Cell
metadata: {name: cell-viewer}
spec: {zone: zone-viewer}
"""


def _app_names(platform: Platform) -> set[str]:
    return {a["metadata"]["name"] for a in platform.get("apps")}


def test_apply_with_one_invalid_document_stores_nothing_and_names_the_problem(platform: Platform, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_MULTI_DOC)
    result = platform.cli("apply", "-f", str(bad), check=False)
    assert result.returncode != 0
    assert "items[1].spec.replicas" in result.stderr, result.stderr  # the field path
    assert "-3" in result.stderr, result.stderr                      # the value
    assert "greater than or equal to 0" in result.stderr, result.stderr  # what was expected
    assert not {"fine-app", "broken-app"} & _app_names(platform)


def test_apply_of_an_unknown_kind_is_refused(platform: Platform, tmp_path: Path) -> None:
    manifest = tmp_path / "gadget.yaml"
    manifest.write_text(UNKNOWN_KIND)
    result = platform.cli("apply", "-f", str(manifest), check=False)
    assert result.returncode != 0
    assert "kind" in result.stderr and "Gadget" in result.stderr and "AppService" in result.stderr, result.stderr


@pytest.mark.parametrize("args", [("apps", "no-such-app"), ("revisions", "no-such-app")])
def test_get_of_an_unknown_app_fails_with_a_clear_message(platform: Platform, args: tuple[str, str]) -> None:
    result = platform.cli("get", *args, check=False)
    assert result.returncode != 0
    assert "404" in result.stderr and "'no-such-app' not found" in result.stderr, result.stderr


def test_a_viewer_may_read_but_apply_is_forbidden(platform: Platform, tmp_path: Path) -> None:
    platform.cli("user", "create", "viewer-v", "--role", "viewer")
    token = platform.cli("token", "create", "--user", "viewer-v").stdout.strip().splitlines()[-1]
    manifest = tmp_path / "cell.yaml"
    manifest.write_text(VALID_CELL)

    as_viewer = platform.env(BALLAST_TOKEN=token, BALLAST_SERVER=platform.server)
    del as_viewer["BALLAST_CONFIG"]
    assert platform.cli("get", "cells", env=as_viewer).returncode == 0  # the token itself is good
    by_env = platform.cli("apply", "-f", str(manifest), env=as_viewer, check=False)
    by_flags = platform.cli("--token", token, "--server", platform.server, "apply", "-f", str(manifest),
                            env={k: v for k, v in as_viewer.items() if k not in ("BALLAST_TOKEN", "BALLAST_SERVER")},
                            check=False)
    for result in (by_env, by_flags):
        assert result.returncode != 0
        assert "403" in result.stderr and "viewer" in result.stderr, result.stderr
    assert "cell-viewer" not in {c["metadata"]["name"] for c in platform.get("cells")}


def test_hostile_manifest_files_are_refused_in_one_line_and_nothing_is_sent(platform: Platform, tmp_path: Path) -> None:
    """An alias bomb, a binary file and a deeply nested file each end the CLI at once with one line."""
    files = {"bomb.yaml": 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'.encode()
             + b"".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n".encode() for p, k in zip("abcdefgh", "bcdefghi")),
             "binary.yaml": bytes(range(256)) * 8, "deep.yaml": b"[" * 100_000 + b"]" * 100_000}
    before = platform.api("/v1/audit/verify")["records"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        result = platform.cli("apply", "-f", str(tmp_path / name), check=False, timeout=20)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and name in result.stderr, result.stderr
    assert platform.api("/v1/audit/verify")["records"] == before, "nothing reached the server"


def test_stored_values_reach_the_terminal_escaped(platform: Platform) -> None:
    platform.cli("token", "create", "--name", "x\x1b]0;pwned\x07\x1b[2J")
    shown = platform.cli("token", "list").stdout
    assert "\x1b" not in shown and "\x07" not in shown
    assert "x\\x1b]0;pwned\\x07\\x1b[2J" in shown, shown


# --- audit ----------------------------------------------------------------------------------
def test_audit_shows_the_apply_and_detects_tampering(platform: Platform, shop: list[dict[str, Any]]) -> None:
    records = platform.cli_json("audit", "list", "--limit", "10000")
    assert any(r["action"] == "apply" and r["resource"] == "AppService/shop" and r["actor"] == "admin"
               and r["result"] == "ok" for r in records), records
    assert platform.cli("audit", "verify").returncode == 0

    db = sqlite3.connect(platform.data_dir / "ballast.db", timeout=30)
    original = db.execute("SELECT actor FROM audit WHERE seq = 2").fetchone()[0]
    try:
        with db:
            assert db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2").rowcount == 1
        broken = platform.cli("audit", "verify", check=False)
        assert broken.returncode != 0
        assert "record 2:" in broken.stderr and "BROKEN" in broken.stderr, broken.stderr
        assert "record 3:" not in broken.stderr, "only the edited record is named"
    finally:
        with db:  # put the record back so the store is whole again for anything after this test
            db.execute("UPDATE audit SET actor = ? WHERE seq = 2", (original,))
        db.close()
    assert platform.cli("audit", "verify").returncode == 0
