"""The `ballast` command: a thin client of the API, plus the server, agent and `up` entry points.

Entry points are the only place that reads the environment and files; all
errors end as one readable message and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

import click
import yaml

from ballast.cli import instance_cmds, output, packaging
from ballast.cli.task_cmds import task
from ballast.cli.traffic_cmds import traffic
from ballast.cli.common import KINDS, _fail, command, console, print_as
from ballast.cli.manifest_file import MAX_BYTES, ManifestFileError, read_documents
from ballast.client import Client
from ballast.core.archive import ArchiveLimits
from ballast.core.authz import COMPONENT_ROLES, Role
from ballast.core.outbound import OutboundPolicy
from ballast.errors import BallastError
from ballast.owner_only import make_private, read_token, restrict_new_files, sqlite_files

@click.group()
@click.option("--config", envvar="BALLAST_CONFIG", help="client config file (server URL and token)")
@click.option("--server", help="control plane URL, or the replicas' URLs comma-separated (overrides the config file)")
@click.option("--token", help="API token (overrides the config file; prefer BALLAST_TOKEN)")
@click.pass_context
def cli(ctx: click.Context, config: str | None, server: str | None, token: str | None) -> None:
    """Ballast: cell-aware, lossless, audited releases."""
    ctx.obj = {"config": config, "server": server, "token": token}


# --- platform processes ---------------------------------------------------------------
def _run_until_signal(make: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await make(stop)
    try:
        asyncio.run(main())
    except BallastError as exc:
        _fail(f"error: {exc.message}")


@cli.command()
@click.option("--data-dir", default=".ballast", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--zones", default=2, show_default=True, type=int)
@click.option("--nodes-per-zone", default=2, show_default=True, type=int)
@click.option("--port", default=7700, show_default=True, type=click.IntRange(1, 65535), help="control plane port")
@click.option("--store", help="store URL (default: SQLite in the data dir); e.g. postgresql://user@host/db")
@click.option("--first-node-ip", default="127.0.0.2", show_default=True)
@click.option("--node-cpu", default="16", show_default=True, help="capacity of each node")
@click.option("--node-memory", default="16Gi", show_default=True)
@click.option("--no-user-config", is_flag=True, help="do not write ~/.config/ballast/config.yaml")
@click.option("--gateway-port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="port of the north-south gateway (on 127.0.0.1)")
@click.option("--metrics-port", default=9464, show_default=True, type=click.IntRange(0, 65534),
              help="Prometheus /metrics of the agents (on their node IPs; the gateway's one port above, on "
                   "127.0.0.1); 0: off")
@click.option("--trusted-color-network", "trusted_color_networks", multiple=True, metavar="CIDR",
              help="clients in this network keep the baggage (color) they send through the gateway (repeatable)")
@click.option("--node-grace-seconds", type=click.FloatRange(min=2, max=3600), default=4.0, show_default=True,
              help="nodeGraceSeconds: a node silent this long is NotReady; its instances are replaced in its cell")
@click.option("--replicas", default=1, show_default=True, type=int,
              help="control plane replicas on consecutive ports from --port, sharing the --store (PostgreSQL); "
                   "one leads (runs the controllers), all serve the API")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True),
              help="the replicas' leadership lease (ballast server --lease-seconds)")
@click.option("--renew-seconds", type=click.FloatRange(min=0, min_open=True),
              help="how often the leader renews it (ballast server --renew-seconds)")
def up(data_dir: Path, zones: int, nodes_per_zone: int, port: int, store: str | None, first_node_ip: str,
       node_cpu: str, node_memory: str, no_user_config: bool, gateway_port: int, metrics_port: int,
       trusted_color_networks: tuple[str, ...], replicas: int, lease_seconds: float | None,
       renew_seconds: float | None, node_grace_seconds: float) -> None:
    """Start the local platform (control plane, agents in two zones, a gateway) until Ctrl-C."""
    from ballast.cli.up import UpSettings, check_replicas, run
    from ballast.controllers.leadership import LeaseSettings
    from ballast.preflight import require_binaries
    settings = UpSettings(data_dir=data_dir, zones=zones, nodes_per_zone=nodes_per_zone, port=port, store=store,
                          first_node_ip=first_node_ip, node_cpu=node_cpu, node_memory=node_memory,
                          write_user_config=not no_user_config, gateway_port=gateway_port,
                          metrics_port=metrics_port, trusted_color_networks=_networks(trusted_color_networks),
                          replicas=replicas, lease_seconds=lease_seconds, renew_seconds=renew_seconds,
                          node_grace_seconds=node_grace_seconds)
    try:
        check_replicas(settings)
        if lease_seconds or renew_seconds:
            LeaseSettings(seconds=lease_seconds or LeaseSettings.seconds,
                          renew_seconds=renew_seconds or LeaseSettings.renew_seconds).check()
        require_binaries(console)
    except BallastError as exc:
        _fail(f"error: {exc.message}", 2)
    _run_until_signal(lambda stop: run(settings, console, stop))


@cli.command()
@click.option("--store", default="sqlite:///.ballast/ballast.db", show_default=True, envvar="BALLAST_STORE")
@click.option("--listen", default="127.0.0.1:7700", show_default=True)
@click.option("--bootstrap-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="on an empty store, write the first admin token here (else it is printed)")
@click.option("--max-token-ttl", type=click.FloatRange(min=60), default=90 * 86400, show_default=True,
              help="seconds: the longest a token may live (every token but the bootstrap admin's)")
@click.option("--node-disruption-share", type=click.FloatRange(min=0, max=1), default=0.5, show_default=True,
              help="more than this share of a cell's or of all nodes silent at once: the control plane assumes it "
                   "cannot hear them and drains none of them until heartbeats flow again")
@click.option("--node-disruption-min", type=click.IntRange(min=1, max=100_000), default=2, show_default=True,
              help="...and at least this many nodes")
@click.option("--node-grace-seconds", type=click.FloatRange(min=2, max=3600), default=4.0, show_default=True,
              help="nodeGraceSeconds: a node silent this long is NotReady — its endpoints leave routing and its "
                   "instances are replaced in its cell (agents heartbeat every second)")
@click.option("--audit-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 private key (PEM) that signs audit checkpoints (`ballast audit keygen`); keep it off "
                   "the database host. Without it the audit chain is not anchored")
@click.option("--audit-checkpoints", type=click.Path(file_okay=False, path_type=Path),
              help="directory of the append-only checkpoint file (default: audit-checkpoints beside the key)")
@click.option("--audit-checkpoint-interval", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="seconds between checkpoints while the chain grows (one more is signed at shutdown)")
@click.option("--max-artifact-bytes", type=click.IntRange(min=1), default=ArchiveLimits.max_bytes, show_default=True,
              help="the largest artifact (compressed archive) a push may carry")
@click.option("--max-artifact-files", type=click.IntRange(min=1), default=ArchiveLimits.max_files, show_default=True,
              help="the most members (files, directories, links) an artifact may hold")
@click.option("--max-artifact-unpacked-bytes", type=click.IntRange(min=1), default=ArchiveLimits.max_unpacked_bytes,
              show_default=True, envvar="BALLAST_MAX_ARTIFACT_UNPACKED_BYTES",
              help="the most bytes an artifact may unpack to")
@click.option("--allow-outbound", "allow_outbound", multiple=True, metavar="CIDR",
              help="repeatable: a loopback or private range that verification webhooks and Prometheus URLs may "
                   "aim at (refused by default; the control plane's own API port never)")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True),
              help="how long the controllers lease lasts without renewal: replicas sharing one PostgreSQL store run "
                   "the controllers on one of them (the leader); a standby takes over once it expires "
                   "[default: 3; 15 on SQLite when neither is given: it has no standby to hand over to, so a short "
                   "lease only costs a CPU-starved control plane its controllers]")
@click.option("--renew-seconds", type=click.FloatRange(min=0, min_open=True),
              help="how often the leader renews its lease (the lease must be at least twice as long, plus a margin) "
                   "[default: 1; 3 on SQLite when neither is given]")
def server(store: str, listen: str, bootstrap_token_file: Path | None, max_token_ttl: float,
           node_disruption_share: float, node_disruption_min: int, node_grace_seconds: float,
           audit_key: Path | None, audit_checkpoints: Path | None, audit_checkpoint_interval: float,
           max_artifact_bytes: int, max_artifact_files: int, max_artifact_unpacked_bytes: int,
           allow_outbound: tuple[str, ...], lease_seconds: float | None, renew_seconds: float | None) -> None:
    """Run the control plane (one replica of it: several may share a PostgreSQL store)."""
    from ballast.api.server import serve
    from ballast.cli.audit_cmds import load_signer
    from ballast.controllers.checkpoints import AuditAnchor
    from ballast.controllers.leadership import LeaseSettings
    from ballast.core.nodes import DisruptionPolicy
    from ballast.services.access import TokenPolicy
    from ballast.store.checkpoint_file import CheckpointFile
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"error: --listen {listen!r}: expected HOST:PORT with a port in 1..65535", 2)
    if audit_checkpoints is not None and audit_key is None:
        _fail("error: --audit-checkpoints needs --audit-key: checkpoints are signed with it", 2)
    try:
        outbound = OutboundPolicy.parse(allow_outbound, own_ports=frozenset({int(port)}))
    except ValueError as exc:
        _fail(f"error: {exc}", 2)
    limits = ArchiveLimits(max_artifact_bytes, max_artifact_files, max_artifact_unpacked_bytes)
    if store.startswith("sqlite") and lease_seconds is None and renew_seconds is None:
        lease_seconds, renew_seconds = SQLITE_LEASE_SECONDS, SQLITE_RENEW_SECONDS
    lease_seconds = lease_seconds or LeaseSettings.seconds
    renew_seconds = renew_seconds or LeaseSettings.renew_seconds
    try:
        leases = LeaseSettings(seconds=lease_seconds, renew_seconds=renew_seconds,
                               retry_seconds=min(0.5, renew_seconds)).check()
    except BallastError as exc:
        _fail(f"error: {exc.message}", 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The store holds environment values in clear, the bootstrap file an admin token: the owner's alone.
    restrict_new_files()
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    make_private(*sqlite_files(store), *([bootstrap_token_file] if bootstrap_token_file else []))
    try:
        anchor = None
        if audit_key is not None:
            directory = audit_checkpoints or audit_key.parent / "audit-checkpoints"
            anchor = AuditAnchor(load_signer(audit_key), CheckpointFile(directory), audit_checkpoint_interval)
        asyncio.run(serve(store, host or "127.0.0.1", int(port), bootstrap_token_file,
                          TokenPolicy(max_seconds=max_token_ttl), anchor,
                          DisruptionPolicy(max_silent_share=node_disruption_share, min_silent=node_disruption_min,
                                           grace_seconds=node_grace_seconds),
                          artifact_limits=limits, outbound=outbound, lease_settings=leases))
    except BallastError as exc:
        _fail(f"error: {exc.message}")


# A SQLite store has one replica and no standby: its lease only needs to outlast a starved event loop.
SQLITE_LEASE_SECONDS = 15.0
SQLITE_RENEW_SECONDS = 3.0
SERVER_URLS = "the control plane's URL, or its replicas' URLs comma-separated (tried in turn)"


@cli.command()
@click.option("--server", "server_url", required=True, help=SERVER_URLS)
@click.option("--name", required=True)
@click.option("--ip", required=True, help="the node's IP; instances' endpoints (their sidecars) listen on it")
@click.option("--cell", required=True)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--cpu", default="4", show_default=True)
@click.option("--memory", default="8Gi", show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a token given directly (mode 0600, owner only), when the node has no credential of its own; "
                   "else BALLAST_TOKEN, which no child process sees")
@click.option("--instance-user", help="the unprivileged user apps run as (root agents only; default: ballast-app, "
                                      "created when missing)")
@click.option("--credential-file", type=click.Path(dir_okay=False, path_type=Path),
              help="the node's own credential (default: DATA_DIR/credential); written by joining")
@click.option("--join-token", envvar="BALLAST_JOIN_TOKEN",
              help="an admin's one-time join token, exchanged for the credential when the file does not exist yet "
                   "(prefer BALLAST_JOIN_TOKEN)")
@click.option("--stop-instances-on-exit", is_flag=True,
              help="stop instances when the agent exits (default: leave them running for the next agent to adopt)")
@click.option("--haproxy", envvar="BALLAST_HAPROXY", help="the HAProxy binary for sidecars (default: found on PATH)")
@click.option("--instance-nice", default=0, show_default=True, type=click.IntRange(0, 19),
              help="run app processes at this nice level, so the agent and sidecars keep the CPU they need")
@click.option("--metrics-port", default=9464, show_default=True, type=click.IntRange(0, 65535),
              help="serve /metrics (Prometheus) and request metrics on IP:PORT (0: not served)")
@click.option("--metrics-interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="seconds between readings of the sidecars' request statistics")
@click.option("--max-artifact-files", type=click.IntRange(min=1), default=ArchiveLimits.max_files, show_default=True,
              help="the most members an artifact may unpack to on this node")
@click.option("--max-artifact-unpacked-bytes", type=click.IntRange(min=1), default=ArchiveLimits.max_unpacked_bytes,
              show_default=True, envvar="BALLAST_AGENT_MAX_ARTIFACT_UNPACKED_BYTES",
              help="the most bytes an artifact may unpack to on this node")
@click.option("--private-fence", type=click.Choice(["auto", "require", "off"]), default="auto", show_default=True,
              help="when nodes share one machine (a loopback node IP), refuse connections to this node's private "
                   "address (apps' ports, mesh listener) from any source but 127.0.0.1, with nftables; require: "
                   "do not start without it")
def agent(server_url: str, name: str, ip: str, cell: str, data_dir: Path, cpu: str, memory: str,
          token_file: Path | None, instance_user: str | None, credential_file: Path | None,
          join_token: str | None, stop_instances_on_exit: bool, haproxy: str | None, instance_nice: int,
          metrics_port: int, metrics_interval: float, max_artifact_files: int,
          max_artifact_unpacked_bytes: int, private_fence: str) -> None:
    """Run a node agent."""
    from ballast.agent import instance_user as users
    from ballast.agent.agent import Agent, AgentSettings
    from ballast.agent.fence import FenceMode
    from ballast.dataplane.haproxy import find_binary
    from ballast.core.placement import parse_cpu, parse_memory
    restrict_new_files()
    try:
        apps_user = users.resolve(instance_user, os.geteuid())
        users.make_data_dir(data_dir, apps_user, "--data-dir")
    except BallastError as exc:
        _fail(f"error: {exc.message}", 2)
    _same_store(server_url)
    token = _component_token("node", name, server_url, data_dir, credential_file, join_token, token_file)
    try:
        settings = AgentSettings(server=server_url, token=token, name=name, ip=ip, cell=cell, data_dir=data_dir.resolve(),
                                 cpu_millis=parse_cpu(cpu), memory_bytes=parse_memory(memory),
                                 haproxy=find_binary(haproxy), instance_user=apps_user,
                                 stop_instances_on_exit=stop_instances_on_exit,
                                 instance_nice=instance_nice, metrics_port=metrics_port,
                                 metrics_interval=metrics_interval,
                                 artifact_limits=ArchiveLimits.for_unpacking(max_artifact_files,
                                                                             max_artifact_unpacked_bytes),
                                 private_fence=FenceMode(private_fence))
    except ValueError as exc:
        _fail(f"error: {exc}", 2)
    except BallastError as exc:
        _fail(f"error: {exc.message}", 2)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _run_until_signal(lambda stop: Agent(settings).run(stop))


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for network in values:
        try:
            out.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError:
            _fail(f"error: --trusted-color-network {network!r}: expected a network such as 10.0.0.0/8", 2)
    return tuple(out)


@cli.command()
@click.option("--server", "server_url", required=True, help=SERVER_URLS)
@click.option("--name", required=True, help="the gateway's name in the registry")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="IP:PORT to serve on")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--credential-file", type=click.Path(dir_okay=False, path_type=Path),
              help="the gateway's own credential (default: DATA_DIR/credential); written by joining")
@click.option("--join-token", envvar="BALLAST_JOIN_TOKEN",
              help="an admin's one-time join token, exchanged for the credential when the file does not exist yet "
                   "(prefer BALLAST_JOIN_TOKEN)")
@click.option("--haproxy", envvar="BALLAST_HAPROXY", help="the HAProxy binary (default: found on PATH)")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--stop-proxy-on-exit", is_flag=True,
              help="stop HAProxy when this process exits (default: leave it serving for the next one to adopt)")
@click.option("--metrics-listen", default="127.0.0.1:9465", show_default=True,
              help="IP:PORT for /metrics (Prometheus) and request metrics ('off': not served)")
@click.option("--trusted-color-network", "trusted_color_networks", multiple=True, metavar="CIDR",
              help="clients in this network keep the baggage (color) they send; every other client's is removed, "
                   "so nobody outside steers their calls by color (repeatable; default: none)")
def gateway(server_url: str, name: str, listen: str, data_dir: Path, token_file: Path | None,
            credential_file: Path | None, join_token: str | None, haproxy: str | None,
            threads: int, stop_proxy_on_exit: bool, metrics_listen: str,
            trusted_color_networks: tuple[str, ...]) -> None:
    """Run a north-south gateway (HAProxy) for the exposed services."""
    from ballast.dataplane.haproxy import find_binary
    from ballast.dataplane.haproxy_config import Address
    from ballast.gateway.gateway import Gateway, GatewaySettings
    restrict_new_files()
    _same_store(server_url)
    token = _component_token("gateway", name, server_url, data_dir, credential_file, join_token, token_file)
    def address(option: str, value: str) -> Address:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            _fail(f"error: {option} {value!r}: expected IP:PORT with a port in 1..65535", 2)
        return Address(host, int(port))

    metrics = None if metrics_listen == "off" else address("--metrics-listen", metrics_listen)
    trusted = _networks(trusted_color_networks)
    try:
        settings = GatewaySettings(server=server_url, token=token, name=name, listen=address("--listen", listen),
                                   data_dir=data_dir.resolve(), haproxy=find_binary(haproxy), threads=threads,
                                   stop_proxy_on_exit=stop_proxy_on_exit, metrics_listen=metrics,
                                   trusted_color_networks=trusted)
    except BallastError as exc:
        _fail(f"error: {exc.message}", 2)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s gateway/{name} %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _run_until_signal(lambda stop: Gateway(settings).run(stop))


def _same_store(server_url: str) -> None:
    """Refuse to start when the --server URLs that answer serve different stores (not one control plane)."""
    async def check() -> None:
        async with Client(server_url, None) as client:
            await client.check_replicas()
    try:
        asyncio.run(check())
    except BallastError as exc:
        _fail(f"error: --server {server_url}: {exc.message}", 2)


def _component_token(kind: str, name: str, server_url: str, data_dir: Path, credential_file: Path | None,
                     join_token: str | None, token_file: Path | None) -> str:
    """The credential an agent or gateway runs with: its own (the credential file, or joining once with a join
    token); else a token given directly (--token-file or BALLAST_TOKEN)."""
    from ballast.dataplane.credential import CREDENTIAL_FILE, component_credential, read_credential
    path = credential_file or data_dir / CREDENTIAL_FILE
    os.environ.pop("BALLAST_JOIN_TOKEN", None)   # used once, here; no child process inherits it
    if join_token or read_credential(path) is not None:
        try:
            return asyncio.run(component_credential(server_url, kind, name, path, join_token))
        except BallastError as exc:
            _fail(f"error: {kind} {name} could not join: {exc.message}", 2)
    try:
        token = read_token(token_file, os.environ)
    except BallastError as exc:
        _fail(f"error: {exc.message}", 2)
    if not token:
        _fail(f"error: the {kind} needs its credential: {path} (written by 'ballast node join' or by starting once "
              "with --join-token), or a token with --token-file FILE or BALLAST_TOKEN", 2)
    return token


# --- resources ------------------------------------------------------------------------
def _load_documents(path: str) -> list[Any]:
    try:
        data = sys.stdin.buffer.read(MAX_BYTES + 1) if path == "-" else _read_bounded(Path(path))
    except OSError as exc:
        _fail(f"error: cannot read {path}: {exc.strerror}")
    try:
        return read_documents(data, path)
    except ManifestFileError as exc:
        _fail(f"error: {exc}")
    raise AssertionError("unreachable")


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(MAX_BYTES + 1)  # one byte more than allowed is enough to say it is too large


async def _resolve_artifacts(client: Client, docs: list[Any], base: Path) -> None:
    """`artifact: ./dir` in a manifest: pack and push the directory, put its digest in its place."""
    for doc in docs:
        template = (doc.get("spec") or {}).get("template") if isinstance(doc, dict) else None
        artifact = template.get("artifact") if isinstance(template, dict) else None
        if isinstance(template, dict) and isinstance(artifact, str) and not artifact.startswith("sha256:"):
            directory = (base / artifact).resolve()
            if not directory.is_dir():
                raise click.ClickException(f"spec.template.artifact: {artifact!r} is neither a sha256 digest nor a directory")
            data, digest = packaging.pack(directory)
            await client.request("POST", "/v1/artifacts", content=data)
            template["artifact"] = digest


async def apply_documents(client: Client, docs: list[Any], base: Path, dry_run: bool) -> None:
    await _resolve_artifacts(client, docs, base)
    answer = await client.post("/v1/apply", {"items": docs, "dryRun": dry_run})
    for r in answer["results"]:
        rev = f" (revision {r['revision']})" if "revision" in r else ""
        console.print(f"{r['kind'].lower()}/{r['name']} {r['outcome']}{rev}" + (" [dry run]" if dry_run else ""))


@cli.command()
@click.option("-f", "--filename", "files", required=True, multiple=True, help="manifest file ('-' for stdin)")
@click.option("--dry-run", is_flag=True, help="validate and show what would change; store nothing")
@command
async def apply(client: Client, files: tuple[str, ...], dry_run: bool) -> None:
    """Create or update resources from manifests (all documents or none)."""
    docs: list[Any] = []
    for f in files:
        docs.extend(_load_documents(f))
    base = Path(files[0]).parent if files[0] != "-" else Path.cwd()
    await apply_documents(client, docs, base, dry_run)


@cli.command()
@click.option("--replicas", default=None, type=int, help="instances, spread evenly over all cells (default: 5 per cell)")
@click.option("--greeting", default=None, help="change the sample's GREETING (a new template: a new revision)")
@command
async def demo(client: Client, replicas: int | None, greeting: str | None) -> None:
    """Deploy the bundled sample service `shop` (exposed on the gateway as shop.local)."""
    manifest = Path(__file__).resolve().parent.parent / "demo" / "shop.yaml"
    docs = _load_documents(str(manifest))
    if replicas is not None:
        docs[0]["spec"].pop("cells", None)
        docs[0]["spec"]["replicas"] = replicas
    if greeting is not None:
        docs[0]["spec"]["template"]["env"]["GREETING"] = greeting
    with tempfile.TemporaryDirectory() as staging:  # the artifact carries ballast.sdk beside app.py
        await apply_documents(client, docs, packaging.stage_demo(Path(staging)), False)
    console.print("watch it come up: ballast get instances shop")


def _kind(kind: str) -> str:
    resolved = KINDS.get(kind.lower())
    if resolved is None:
        raise click.BadParameter(f"{kind!r}; expected one of cells, nodes, apps, instances, revisions, endpoints, "
                                 "gateways", param_hint="KIND")
    return resolved


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "wide", "yaml", "json"]), default="table",
              help="wide: taskruns also list every shard")
@click.option("--node", help="instances: only those on this node")
@click.option("--cell", help="instances: only those in this cell")
@click.option("--revision", type=click.IntRange(min=1), help="instances: only those meant to run this revision")
@click.option("--phase", help="instances: only those in this phase (Running, Pending, Failed, ...)")
@click.option("--ready", type=click.Choice(["true", "false"]), help="instances: only those (not) ready")
@click.option("--desired", type=click.Choice(["running", "deleted"]), help="instances: only those meant to run "
              "(or being deleted)")
@click.option("--limit", type=click.IntRange(1, 5000), default=instance_cmds.PAGE, show_default=True,
              help="instances: fetched this many at a time")
@click.option("-w", "--watch", is_flag=True, help="instances: after the list, print each change (ADDED, MODIFIED, "
              "DELETED) as it happens, until Ctrl-C")
@command
async def get(client: Client, kind: str, name: str | None, fmt: str, node: str | None, cell: str | None,
              revision: int | None, phase: str | None, ready: str | None, desired: str | None, limit: int,
              watch: bool) -> None:
    """List resources. `get instances APP`, `get revisions APP` and `get endpoints APP` take an app name;
    `get groups APP` lists the app's isolation groups (or names one group); `get taskruns TASK` a scheduled
    task's, with each shard of the newest run (-o wide: of every run): status, attempts, duration, instance and
    its isolation group. Instances are filtered on the server and fetched page by page; `-w` streams changes."""
    resolved = _kind(kind)
    if watch and resolved != "instances":
        raise click.UsageError("--watch: only `get instances` can watch")
    if resolved == "instances":
        filters = {"app": name, "node": node, "cell": cell, "revision": revision, "phase": phase, "ready": ready,
                   "desired": desired}
        await _get_instances(client, {k: v for k, v in filters.items() if v is not None}, fmt, limit, watch)
        return
    if resolved == "taskruns":
        if not name:
            raise click.UsageError("get taskruns TASK: name the scheduled task")
        runs = (await client.get(f"/v1/scheduledtasks/{name}/runs"))["items"]
        output.render("taskruns", runs, "table" if fmt == "wide" else fmt, console)
        if fmt in ("table", "wide") and runs:
            # Each shard of the newest run (of every run with -o wide): status, duration, instance, group.
            console.print()
            output.render("taskshards", output.shard_rows(runs if fmt == "wide" else runs[:1]), "table", console)
        return
    fmt = "table" if fmt == "wide" else fmt
    single = bool(name) and resolved not in ("instances", "revisions", "endpoints")
    if resolved == "isolationgroups" and name:
        items = (await client.get("/v1/isolationgroups", app=name))["items"]
        single = False
        if not items:
            items, single = [await client.get(f"/v1/isolationgroups/{name}")], True
    elif resolved == "revisions":
        if not name:
            raise click.UsageError("get revisions APP: name the app")
        items = (await client.get(f"/v1/apps/{name}/revisions"))["items"]
    elif resolved == "endpoints":
        if not name:
            raise click.UsageError("get endpoints SERVICE: name the app")
        items = (await client.get(f"/v1/apps/{name}/endpoints"))["items"]
    elif name:
        items = [await client.get(f"/v1/{resolved}/{name}")]
    else:
        items = (await client.get(f"/v1/{resolved}"))["items"]
    output.render(resolved, items, fmt, console, single=single)


async def _get_instances(client: Client, filters: dict[str, Any], fmt: str, limit: int, watch: bool) -> None:
    """The list a page at a time (a table prints as it comes; JSON and YAML once whole), then, with `watch`, each
    change as a line (a JSON line with -o json)."""
    fmt = "table" if fmt == "wide" else fmt

    async def listed() -> str:
        collected: list[dict[str, Any]] = []
        pages = 0

        def each_page(items: list[dict[str, Any]]) -> None:
            nonlocal pages
            if fmt == "table" and (items or not pages):
                output.render("instances", items, fmt, console, header=not pages)
            collected.extend(items)
            pages += 1

        version = await instance_cmds.list_pages(client, filters, limit, each_page)
        if fmt != "table":
            output.render("instances", collected, fmt, console)
        if not collected and "app" in filters:
            await client.get(f"/v1/apps/{filters['app']}")  # an unknown app is an error (404), not an empty list
        return version

    version = await listed()
    if watch:
        each = ((lambda event: console.out(json.dumps(event), highlight=False)) if fmt == "json"
                else instance_cmds.printer(console))
        await instance_cmds.watch(client, filters, version, each, listed)


@cli.command()
@click.argument("kind")
@click.argument("name")
@command
async def describe(client: Client, kind: str, name: str) -> None:
    """Show one resource in full (and, for apps, its instances)."""
    resolved = _kind(kind)
    if resolved == "taskruns":
        run = await client.get(f"/v1/taskruns/{name}")
        console.out(yaml.safe_dump({k: v for k, v in run.items() if k != "items"}, sort_keys=False), highlight=False)
        output.render("taskshards", output.shard_rows([run]), "table", console)
        return
    path = {"instances": f"/v1/instances/{name}", "revisions": None}.get(resolved, f"/v1/{resolved}/{name}")
    if path is None:
        app, _, number = name.rpartition("-")
        path = f"/v1/apps/{app}/revisions/{number}"
    obj = await client.get(path)
    console.out(yaml.safe_dump(obj, sort_keys=False), highlight=False)
    if resolved == "apps":
        output.render("instances", (await client.get("/v1/instances", app=name))["items"], "table", console)
    if resolved == "isolationgroups":
        mine = [i for i in (await client.get("/v1/instances", app=obj["app"]))["items"] if i["spec"].get("group") == obj["code"]]
        output.render("instances", mine, "table", console)
    if resolved == "nodes":
        output.render("instances", (await client.get("/v1/instances", node=name))["items"], "table", console)
        decisions = (await client.get("/v1/audit", resource=f"Node/{name}", limit=50))["items"]
        console.out("decisions (audit log, newest last):", highlight=False)
        for d in decisions:
            detail = d.get("detail") or {}
            said = detail.get("reason") or ", ".join(i["instance"] for i in detail.get("instances", ())) or ""
            console.out(f"  {d['seq']:>6}  {d['ts'][:19]}  {d['action']:<24} {d['result']:<10} {said}",
                        highlight=False)


@cli.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-f", "--filename", "files", multiple=True, help="delete what these manifests declare")
@command
async def delete(client: Client, kind: str | None, name: str | None, files: tuple[str, ...]) -> None:
    """Delete an app, cell, node, gateway, traffic rule, coloring rule, isolation group or scheduled task (deleting
    an app or a group drains and stops its instances)."""
    targets: list[tuple[str, str]] = []
    for f in files:
        for doc in _load_documents(f):
            targets.append((_kind(str(doc.get("kind", ""))), str((doc.get("metadata") or {}).get("name", ""))))
    if kind and name:
        targets.append((_kind(kind), name))
    if not targets:
        raise click.UsageError("name KIND NAME or give -f FILE")
    # Apps before cells, so a file holding both deletes cleanly.
    for resolved, target in sorted(targets, key=lambda t: t[0] != "apps"):
        if resolved not in ("apps", "cells", "nodes", "gateways", "trafficrules", "coloringrules", "isolationgroups",
                            "scheduledtasks"):
            raise click.UsageError(f"cannot delete {resolved}; delete the app instead")
        answer = await client.delete(f"/v1/{resolved}/{target}")
        console.print(f"{answer['deleted']} deleted")


@cli.command()
@click.argument("url")
@click.option("--host", "host_header", help="the Host header (default: the URL's host), e.g. shop.local")
@click.option("--path", "paths", multiple=True, help="paths to send in turn (default: the URL's path)")
@click.option("--connections", default=16, show_default=True, type=click.IntRange(1, 2000),
              help="keep-alive connections, each sending requests back to back")
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(0.1, 86_400))
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600))
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="a header sent with every request")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="a tag of the requests' color (the W3C baggage header), e.g. --tag stress=true; the gateway "
                   "keeps it only from a trusted color network")
def load(url: str, host_header: str | None, paths: tuple[str, ...], connections: int, duration: float,
         timeout: float, headers: tuple[str, ...], tags: tuple[str, ...]) -> None:
    """Send continuous GET requests and count every failure (non-2xx, resets, timeouts); exit 1 on any."""
    from urllib.parse import urlsplit

    from ballast.loadgen import Load, Target, percentile
    from ballast.sdk import Color, format_baggage
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        _fail(f"error: URL {url!r}: expected http://HOST[:PORT][/PATH]", 2)
    sent: list[tuple[str, str]] = []
    for option, values in (("--header", headers), ("--tag", tags)):
        for value in values:
            name, sep, rest = value.partition("=" if option == "--tag" else ":")
            if not sep or not _TOKEN.match(name.strip()) or any(c in value for c in "\r\n\x00"):
                _fail(f"error: {option} {value!r}: expected " + ("KEY=VALUE" if option == "--tag" else
                                                                  "'NAME: VALUE'"), 2)
            if option == "--header":
                sent.append((name.strip(), rest.strip()))
    if tags:
        try:
            color = Color().with_tags(dict(t.split("=", 1) for t in tags))
        except ValueError as exc:
            _fail(f"error: --tag: {exc}", 2)
        sent.append(("baggage", format_baggage(color)))
    target = Target("load", str(parts.hostname), parts.port or 80, host_header or parts.netloc,
                    paths or (parts.path or "/",), connections, tuple(sent))

    async def go() -> Load:
        run = Load([target], timeout=timeout)
        run.start()
        await asyncio.sleep(duration)
        await run.stop()
        return run

    run = asyncio.run(go())
    latencies = run.latencies()
    console.print(f"{run.requests} requests in {duration:g}s ({run.requests / duration:.0f}/s), "
                  f"{run.failed} failed; p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
                  f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    for kind, count in sorted(run.failures().items()):
        console.print(f"  {count} × {kind.removeprefix('load: ')}")
    if run.failed:
        sys.exit(1)


_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")   # an HTTP header name or a baggage key


# --- artifacts, access, audit -----------------------------------------------------------
@cli.group()
def artifact() -> None:
    """Content-addressed packages agents fetch and run."""


@artifact.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@command
async def artifact_push(client: Client, directory: Path) -> None:
    data, digest = packaging.pack(directory)
    answer = await client.request("POST", "/v1/artifacts", content=data)
    console.print(f"{answer['digest']}  ({answer['size']} bytes, {'new' if answer['created'] else 'already stored'})")
    assert answer["digest"] == digest


@artifact.command("list")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def artifact_list(client: Client, fmt: str) -> None:
    output.render("artifacts", (await client.get("/v1/artifacts"))["items"], fmt, console)


@cli.group()
def token() -> None:
    """API tokens (shown once, stored hashed)."""


@token.command("create")
@click.option("--user", help="owner (default: you; another user needs the admin role)")
@click.option("--name", default="", help="a label for the token")
@click.option("--ttl", type=float, help="lifetime in seconds (default: no expiry)")
@command
async def token_create(client: Client, user: str | None, name: str, ttl: float | None) -> None:
    answer = await client.post("/v1/tokens", {"user": user, "name": name, "ttlSeconds": ttl})
    console.print(f"token {answer['id']} for {answer['user']} (shown once, store it now):")
    console.out(answer["token"])


@token.command("list")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def token_list(client: Client, fmt: str) -> None:
    output.render("tokens", (await client.get("/v1/tokens"))["items"], fmt, console)


@token.command("revoke")
@click.argument("token_id")
@command
async def token_revoke(client: Client, token_id: str) -> None:
    answer = await client.delete(f"/v1/tokens/{token_id}")
    console.print(f"token {answer['id']} of {answer['user']} revoked")


@cli.group()
def user() -> None:
    """Users and their roles (admin, operator, viewer, agent, approver, emergency-approver), optionally scoped to apps."""


@user.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role if r not in COMPONENT_ROLES]))
@click.option("--app", "apps", multiple=True, help="scope the role to these apps (repeatable)")
@command
async def user_create(client: Client, name: str, role: str, apps: tuple[str, ...]) -> None:
    await client.post("/v1/users", {"name": name, "role": role, "apps": list(apps) or None})
    console.print(f"user {name} created with role {role}" + (f" on {', '.join(apps)}" if apps else ""))


@user.command("list")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def user_list(client: Client, fmt: str) -> None:
    output.render("users", (await client.get("/v1/users"))["items"], fmt, console)


@user.command("delete")
@click.argument("name")
@command
async def user_delete(client: Client, name: str) -> None:
    await client.delete(f"/v1/users/{name}")
    console.print(f"user {name} deleted; their tokens are revoked")


@user.command("bind")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role if r not in COMPONENT_ROLES]))
@click.option("--app", "apps", multiple=True)
@command
async def user_bind(client: Client, name: str, role: str, apps: tuple[str, ...]) -> None:
    await client.post(f"/v1/users/{name}/bindings", {"role": role, "apps": list(apps) or None})
    console.print(f"user {name} bound to {role}" + (f" on {', '.join(apps)}" if apps else ""))


@user.command("unbind")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role if r not in COMPONENT_ROLES]))
@command
async def user_unbind(client: Client, name: str, role: str) -> None:
    await client.delete(f"/v1/users/{name}/bindings/{role}")
    console.print(f"user {name} no longer has role {role}")


@cli.command()
@click.option("-o", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@command
async def leader(client: Client, fmt: str) -> None:
    """Which control plane replica leads (runs the controllers), at which epoch, and which answered."""
    answer = await client.get("/v1/leader")

    def render(a: dict[str, Any]) -> str:
        held = a["lease"]
        lines = [f"store:       {a['store']}", f"answered by: {a['answeredBy']} ({client.server})"]
        if held is None:
            lines.append("leader:      none yet")
        else:
            lines.append(f"leader:      {held['holder']}   epoch {held['epoch']}"
                         + ("   (lease EXPIRED: a standby takes over)" if held["expired"] else ""))
        if a["fencedWrites"]:
            lines.append("fenced writes refused on this replica: "
                         + ", ".join(f"{k}={v}" for k, v in sorted(a["fencedWrites"].items())))
        return "\n".join(lines)

    print_as(answer, fmt, render)


@cli.command()
@command
async def whoami(client: Client) -> None:
    """Who the configured token belongs to."""
    console.out(yaml.safe_dump(await client.get("/v1/whoami"), sort_keys=False))


from ballast.cli.release_cmds import release  # noqa: E402  (registers on the group above)

from ballast.cli.order_cmds import order  # noqa: E402

from ballast.cli.metrics_cmds import metrics  # noqa: E402

from ballast.cli.audit_cmds import audit  # noqa: E402


@cli.group()
def node() -> None:
    """Node operations: drain (cordon and move instances away, losslessly), uncordon, and joining (a node's or
    gateway's own credential)."""


@node.command("drain")
@click.argument("name")
@command
async def node_drain(client: Client, name: str) -> None:
    """Cordon NAME and move its instances to other nodes of its cell, each drained before it stops."""
    answer = await client.post(f"/v1/nodes/{name}/drain")
    console.print(f"node {name} cordoned")
    for r in answer["releases"]:
        console.print(f"  {r['app']}: release {r['release']} moves {len(r['instances'])} instance(s) "
                      f"(`ballast release status {r['app']}`)")


@node.command("uncordon")
@click.argument("name")
@command
async def node_uncordon(client: Client, name: str) -> None:
    """Let new instances land on NAME again."""
    await client.post(f"/v1/nodes/{name}/uncordon")
    console.print(f"node {name} uncordoned")


@cli.group()
def instance() -> None:
    """Instance operations: move (an instance of a NotReady node, without its data)."""


@instance.command("move")
@click.argument("instance_id", metavar="ID")
@click.option("--to", "to_node", help="a ready node of its cell (default: placement chooses)")
@command
async def instance_move(client: Client, instance_id: str, to_node: str | None) -> None:
    """Move instance ID off its NotReady node to a ready node of its cell, WITHOUT its data. Ordered instances wait
    for their node otherwise; the old node stops the old process when it returns."""
    answer = await client.post(f"/v1/instances/{instance_id}/move", {"node": to_node} if to_node else {})
    console.print(f"instance {answer['instance']} moved from {answer['from']} to {answer['to']} (without its data)")


from ballast.cli.join_cmds import join, join_token  # noqa: E402

node.add_command(join_token)
node.add_command(join)
cli.add_command(release)
cli.add_command(order)
cli.add_command(metrics)
cli.add_command(audit)
cli.add_command(traffic)
cli.add_command(task)


def main() -> None:
    cli(prog_name="ballast")
