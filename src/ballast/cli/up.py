"""`ballast up`: the whole platform on this machine, in the foreground.

Starts the control plane (SQLite in the data dir unless --store says
otherwise), one Cell per zone, node agents on distinct loopback IPs and a
gateway, and keeps them alive until Ctrl-C, which stops instances, agents,
the gateway and the server in that order and leaves no process behind.
Nothing it starts outlives it, even when it is killed: the kernel stops its
children when it dies, and the next `ballast up` on the data dir stops what
the last one left (it holds a lock on the data dir while it runs, so it
never stops a platform that is still up).
"""

from __future__ import annotations

import asyncio
import hashlib
import fcntl
import ipaddress
import json
import os
import signal
import socket
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ballast.processes import adopt, exit_with_parent, port_holder, start_time
from ballast.agent import instance_user as users
from ballast.agent.state import StateFile
from ballast.cli import config as client_config
from ballast.cli.audit_cmds import write_key_pair
from ballast.client import ApiError, Client, Unreachable
from ballast.core.audit_signing import Ed25519Signer
from ballast.errors import BallastError
from ballast.owner_only import make_private, restrict_new_files, sqlite_files

JOIN_SECONDS = 600.0   # how long a join token `ballast up` makes for its own node or gateway may wait unused
AUDIT_KEY = "audit-key.pem"                 # its public key: audit-key.pem.pub
AUDIT_CHECKPOINTS = "audit-checkpoints"     # the signed checkpoints: audit-checkpoints/checkpoints.jsonl
GATEWAY_NAME = "edge"


class UpFailed(BallastError):
    status = 1


@dataclass(frozen=True)
class UpSettings:
    data_dir: Path
    zones: int = 2
    nodes_per_zone: int = 2
    host: str = "127.0.0.1"
    port: int = 7700
    store: str | None = None
    first_node_ip: str = "127.0.0.2"
    node_cpu: str = "16"
    node_memory: str = "16Gi"
    write_user_config: bool = True
    gateway_port: int = 8080
    metrics_port: int = 9464       # agents on their node IPs, the gateway on `host` one above; 0: not served
    trusted_color_networks: tuple[str, ...] = ()   # clients whose own baggage the gateway keeps
    node_grace_seconds: float = 4.0
    replicas: int = 1              # control plane replicas, on consecutive ports from `port` (PostgreSQL only)
    lease_seconds: float | None = None    # `ballast server --lease-seconds` (None: its default)
    renew_seconds: float | None = None

    @property
    def gateway_metrics(self) -> str:
        return f"{self.host}:{self.metrics_port + 1}" if self.metrics_port else "off"

    @property
    def servers(self) -> list[str]:
        """Every replica's URL."""
        return [f"http://{self.host}:{self.port + i}" for i in range(self.replicas)]

    @property
    def server(self) -> str:
        """What clients are given: every replica's URL, comma-separated (client.Client tries them in turn)."""
        return ",".join(self.servers)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=out, stderr=out,
                                                             stdin=asyncio.subprocess.DEVNULL,
                                                             env={**_without_token(os.environ), **self.env},
                                                             start_new_session=True,
                                                             preexec_fn=exit_with_parent)

    async def stop(self, grace: float) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _without_token(environ: Any) -> dict[str, str]:
    """What a part inherits: not a token of the person who ran `ballast up` (each part gets its own, by file)."""
    return {k: v for k, v in environ.items() if k != "BALLAST_TOKEN"}


def _apps_user() -> users.InstanceUser:
    """Root: `ballast-app` (created when missing, else `nobody`). Not root: this user (apps cannot be switched)."""
    root = os.geteuid() == 0
    return users.resolve(users.ensure_system_user(users.DEFAULT_INSTANCE_USER) if root else None, os.geteuid())


ELSEWHERE = Path("/var/lib/ballast")


def agents_root(data_dir: Path, apps_user: users.InstanceUser) -> Path:
    """Where the agents keep their instances' files: in the data dir, or, when the apps' user cannot enter it (a
    checkout under a home directory only its owner may enter), in a directory named for the data dir under
    /var/lib/ballast, so that `make up` works from any checkout without opening anybody's home."""
    if users.blocked_ancestor(data_dir, apps_user) is None:
        return data_dir / "agents"
    return ELSEWHERE / f"up-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]}" / "agents"


def _prepare_data_dir(data_dir: Path, agents: Path, apps_user: users.InstanceUser) -> None:
    """Owner-only data dir with its secrets; on the way to the apps' files when they run as another user."""
    if agents.is_relative_to(data_dir):
        users.open_the_way(data_dir, apps_user)
    users.create_enterable(agents, apps_user)
    users.open_the_way(agents, apps_user)
    # What an earlier version may have left readable to others.
    make_private(data_dir / "client.yaml", data_dir / "agent-token", data_dir / "bootstrap-token",
                 data_dir / "up-children.json", data_dir / "logs", data_dir / "gateway",
                 *sqlite_files(f"sqlite:///{data_dir / 'ballast.db'}"))


def node_plan(settings: UpSettings) -> list[tuple[str, str, str, str]]:
    """(node name, ip, cell, zone) for every node, on consecutive loopback IPs."""
    if not 1 <= settings.zones <= 26:
        raise UpFailed(f"--zones {settings.zones}: expected 1..26")
    if not 1 <= settings.nodes_per_zone <= 50:
        raise UpFailed(f"--nodes-per-zone {settings.nodes_per_zone}: expected 1..50")
    first = ipaddress.ip_address(settings.first_node_ip)
    if not first.is_loopback:
        raise UpFailed(f"--first-node-ip {first}: expected a loopback address (127.0.0.0/8)")
    plan = []
    for z in range(settings.zones):
        letter = string.ascii_lowercase[z]
        for n in range(settings.nodes_per_zone):
            ip = first + z * settings.nodes_per_zone + n
            if not ip.is_loopback:
                raise UpFailed(f"node address {ip} leaves the loopback range; choose a lower --first-node-ip")
            plan.append((f"node-{letter}{n + 1}", str(ip), f"cell-{letter}", f"zone-{letter}"))
    return plan


def _ballast(*args: str) -> list[str]:
    return [sys.executable, "-m", "ballast", *args]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _wait_healthy(client: Client, server: Child, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if server.proc is not None and server.proc.returncode is not None:
            raise UpFailed(f"control plane exited with code {server.proc.returncode}:\n{_tail(server.log)}")
        try:
            await client.get("/healthz")
            return
        except (Unreachable, ApiError):
            await asyncio.sleep(0.1)
    raise UpFailed(f"control plane did not answer within the start timeout:\n{_tail(server.log)}")


async def _admin_token(settings: UpSettings, client_file: Path, bootstrap_file: Path) -> str:
    candidates = []
    if bootstrap_file.exists():
        candidates.append(bootstrap_file.read_text().strip())
    try:
        candidates.append(client_config.load(str(client_file)).token or "")
    except BallastError:
        pass
    for token in candidates:
        async with Client(settings.server, token) as c:
            try:
                await c.get("/v1/whoami")
                return token
            except ApiError:
                continue
    raise UpFailed(f"the store already has users but no token in {client_file} or {bootstrap_file} is valid; "
                   "pass a valid token with BALLAST_TOKEN or use a fresh --data-dir")


async def _join_env(admin: Client, server: str, kind: str, name: str, data_dir: Path) -> dict[str, str]:
    """What a node or gateway `ballast up` starts needs to join: nothing when its credential file holds a valid
    credential, else a fresh one-time join token for its name (a stale file is removed: the token re-joins it)."""
    from ballast.dataplane.credential import CREDENTIAL_FILE, read_credential
    path = data_dir / CREDENTIAL_FILE
    token = read_credential(path)
    if token is not None:
        async with Client(server, token) as c:
            try:
                if (await c.get("/v1/whoami"))["user"] == f"{kind}/{name}":
                    return {}
            except ApiError:
                pass
        path.unlink()
    made = await admin.post("/v1/join-tokens", {"kind": kind, "name": name, "ttlSeconds": JOIN_SECONDS})
    return {"BALLAST_JOIN_TOKEN": str(made["token"])}


def sweep_instances(data_dir: Path, agents: Path) -> int:
    """Last line of defence against orphans: stop any instance, sidecar or gateway proxy left behind."""
    found: list[tuple[int, int]] = []
    for state in agents.glob("*/state.json"):
        for local in StateFile(state).load().values():
            found += [(local.pid, local.started)] if local.pid is not None and local.started is not None else []
            if local.sidecar_pid is not None and local.sidecar_started is not None:
                found.append((local.sidecar_pid, local.sidecar_started))
    try:
        gateway = json.loads((data_dir / "gateway" / "state.json").read_text())
        if gateway.get("pid") and gateway.get("started"):
            found.append((int(gateway["pid"]), int(gateway["started"])))
    except (FileNotFoundError, ValueError):
        pass
    killed = 0
    for pid, started in found:
        handle = adopt(pid, started)
        if handle is not None:
            handle.signal_group(signal.SIGKILL)
            killed += 1
    return killed


def audit_signing_key(data_dir: Path) -> Path:
    """The key the server signs audit checkpoints with: made once, mode 0600, beside the store but not in it
    (production keeps it off the database host, or behind a KMS)."""
    key = data_dir / AUDIT_KEY
    if not key.exists():
        write_key_pair(key, Ed25519Signer.generate())
    return key


def _lock(data_dir: Path) -> int:
    """Hold the data dir for as long as this process lives (the kernel lets go when it dies, however it dies)."""
    fd = os.open(data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise UpFailed(f"another `ballast up` (pid {holder or 'unknown'}) is running with the data dir {data_dir}; "
                       "stop it (Ctrl-C) or use another --data-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def check_replicas(settings: UpSettings) -> None:
    """Several replicas share one store, which only PostgreSQL can be (SQLite is one process's file)."""
    if settings.replicas < 1 or settings.replicas > 9:
        raise UpFailed(f"--replicas {settings.replicas}: expected 1..9")
    if settings.replicas > 1 and not (settings.store or "").startswith(("postgresql:", "postgres:",
                                                                        "postgresql+asyncpg:")):
        raise UpFailed(f"--replicas {settings.replicas} needs a PostgreSQL store (--store postgresql://...): "
                       "replicas share one store, and a SQLite file belongs to one process")
    if settings.replicas > 1 and settings.port <= settings.gateway_port < settings.port + settings.replicas:
        raise UpFailed(f"--gateway-port {settings.gateway_port} is one of the replicas' ports "
                       f"({settings.port}..{settings.port + settings.replicas - 1})")


def _check_ports(settings: UpSettings) -> None:
    """Refuse at once, naming the holder, rather than talk to whatever already answers on our ports."""
    for what, flag, port in ([("control plane", "--port" + (f" + {i}" if i else ""), settings.port + i)
                              for i in range(settings.replicas)]
                             + [("gateway", "--gateway-port", settings.gateway_port)]):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers bind: TIME_WAIT is fine
            try:
                probe.bind((settings.host, port))
                continue
            except OSError as exc:
                why = exc.strerror
        holder = port_holder(settings.host, port)
        raise UpFailed(f"port {port} on {settings.host} (the {what}'s, {flag}) is taken"
                       + (f" by {holder}" if holder else f": {why}") + f"; stop it or choose another {flag}")


def _remember(data_dir: Path, children: list[Child]) -> None:
    """Which processes this `ballast up` started, for the next one should this one be killed."""
    known = [{"name": c.name, "pid": c.proc.pid, "started": start_time(c.proc.pid)}
             for c in children if c.proc is not None and c.proc.returncode is None]
    tmp = data_dir / "up-children.tmp"
    tmp.write_text(json.dumps(known))
    os.replace(tmp, data_dir / "up-children.json")


async def stop_leftovers(data_dir: Path, agents: Path) -> int:
    """Stop the parts a killed `ballast up` left running (its server, agents and gateway, then any instance or
    proxy their state files name). Call only while holding the data dir's lock."""
    try:
        known = json.loads((data_dir / "up-children.json").read_text())
    except (FileNotFoundError, ValueError):
        known = []
    handles = [h for h in (adopt(int(k["pid"]), int(k["started"])) for k in known
                           if k.get("pid") and k.get("started") is not None) if h is not None]
    await asyncio.gather(*(h.stop(15.0) for h in handles))
    (data_dir / "up-children.json").unlink(missing_ok=True)
    return len(handles) + sweep_instances(data_dir, agents)


async def run(settings: UpSettings, console: Console, stop: asyncio.Event) -> None:
    restrict_new_files()   # every file the platform writes is owner-only unless made otherwise
    data_dir = settings.data_dir.resolve()
    plan = node_plan(settings)
    apps_user = _apps_user()
    users.create_enterable(data_dir, apps_user)
    agents_dir = agents_root(data_dir, apps_user)
    lock = _lock(data_dir)
    left = await stop_leftovers(data_dir, agents_dir)   # before the port check: they may be what holds the ports
    if left:
        console.print(f"[yellow]stopped {left} process(es) an earlier `ballast up` of {data_dir} left running[/]")
    check_replicas(settings)
    _check_ports(settings)
    _prepare_data_dir(data_dir, agents_dir, apps_user)
    if not agents_dir.is_relative_to(data_dir):
        console.print(f"apps run as {apps_user.name}, who cannot enter {data_dir}: the nodes keep their instances "
                      f"in {agents_dir}")
    if not apps_user.switch:
        console.print("[bold yellow]not root: apps run as this user and can read the platform's secrets "
                      "(not for production)[/]")
    store = settings.store or f"sqlite:///{data_dir / 'ballast.db'}"
    bootstrap_file = data_dir / "bootstrap-token"
    audit_key = audit_signing_key(data_dir)
    lease = [*(["--lease-seconds", str(settings.lease_seconds)] if settings.lease_seconds else []),
             *(["--renew-seconds", str(settings.renew_seconds)] if settings.renew_seconds else [])]
    replicas = [Child("control plane" + (f" {i}" if settings.replicas > 1 else ""),
                      _ballast("server", "--store", store, "--listen", f"{settings.host}:{settings.port + i}",
                               "--bootstrap-token-file", str(bootstrap_file),
                               "--audit-key", str(audit_key),
                               # each replica its own checkpoint file (one writer each), of the one audit chain
                               "--audit-checkpoints",
                               str(data_dir / (AUDIT_CHECKPOINTS + (f"-{i}" if i else ""))),
                               # the whole local platform lives on loopback, its webhooks and
                               # Prometheus too: calls there are what it is for
                               "--allow-outbound", "127.0.0.0/8", *lease,
                               "--node-grace-seconds", str(settings.node_grace_seconds)),
                      data_dir / "logs" / ("server.log" if i == 0 else f"server-{i}.log"))
                for i in range(settings.replicas)]
    agents: list[Child] = []
    loop = asyncio.get_running_loop()
    try:
        # The first alone (it makes the schema and the first admin), then the others.
        for i, replica in enumerate(replicas):
            await replica.start()
            _remember(data_dir, replicas[:i + 1])
            async with Client(settings.servers[i], None) as anon:
                await _wait_healthy(anon, replica, loop.time() + 60)
        client_file = data_dir / "client.yaml"
        token = await _admin_token(settings, client_file, bootstrap_file)
        client_config.write(client_file, settings.server, token)
        if settings.write_user_config:
            client_config.write(Path.home() / ".config" / "ballast" / "config.yaml", settings.server, token)
        bootstrap_file.unlink(missing_ok=True)  # the token now lives only in the client config (mode 0600)
        async with Client(settings.server, token) as admin:
            zones = sorted({(cell, zone) for _, _, cell, zone in plan})
            await admin.post("/v1/apply", {"items": [
                {"apiVersion": "ballast.io/v1alpha1", "kind": "Cell", "metadata": {"name": cell}, "spec": {"zone": zone}}
                for cell, zone in zones]})
            (data_dir / "agent-token").unlink(missing_ok=True)   # the shared token of older versions
            as_user = ["--instance-user", apps_user.name] if apps_user.switch else []
            for name, ip, cell, _ in plan:
                join_env = await _join_env(admin, settings.server, "node", name, agents_dir / name)
                agent = Child(name, _ballast("agent", "--server", settings.server, "--name", name, "--ip", ip,
                                             "--cell", cell, "--data-dir", str(agents_dir / name),
                                             "--cpu", settings.node_cpu, "--memory", settings.node_memory,
                                             *as_user,
                                             "--stop-instances-on-exit",
                                             # One machine carries the platform and the apps: when the apps are
                                             # busy, agents and sidecars must still answer promptly.
                                             "--instance-nice", "10",
                                             "--metrics-port", str(settings.metrics_port)),
                              data_dir / "logs" / f"{name}.log", env=join_env)
                await agent.start()
                agents.append(agent)
                _remember(data_dir, [*replicas, *agents])
            gateway = Child("gateway", _ballast("gateway", "--server", settings.server, "--name", GATEWAY_NAME,
                                                "--listen", f"{settings.host}:{settings.gateway_port}",
                                                "--data-dir", str(data_dir / "gateway"), "--stop-proxy-on-exit",
                                                "--metrics-listen", settings.gateway_metrics,
                                                *[a for n in settings.trusted_color_networks
                                                  for a in ("--trusted-color-network", n)]),
                            data_dir / "logs" / "gateway.log",
                            env=await _join_env(admin, settings.server, "gateway", GATEWAY_NAME, data_dir / "gateway"))
            await gateway.start()
            agents.append(gateway)
            _remember(data_dir, [*replicas, *agents])
            await _wait_nodes(admin, {p[0] for p in plan}, agents, loop.time() + 60)
            await _wait_gateway(admin, gateway, loop.time() + 60)
            leader = (await admin.get("/v1/leader"))["lease"] if settings.replicas > 1 else None
        _announce(console, settings, client_file, plan, data_dir, leader)
        await _supervise(replicas, agents, stop, console, data_dir)
    finally:
        console.print("stopping: instances and agents first, then the control plane")
        await asyncio.gather(*(a.stop(60) for a in agents))
        await asyncio.gather(*(r.stop(15) for r in replicas))
        leftover = sweep_instances(data_dir, agents_dir)
        if leftover:
            console.print(f"[yellow]stopped {leftover} instance process(es) an agent left behind[/]")
        (data_dir / "up-children.json").unlink(missing_ok=True)
        os.close(lock)
        console.print("stopped")


async def _wait_gateway(admin: Client, gateway: Child, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if gateway.proc is not None and gateway.proc.returncode is not None:
            raise UpFailed(f"the gateway exited with code {gateway.proc.returncode}:\n{_tail(gateway.log)}")
        items = (await admin.get("/v1/gateways"))["items"]
        if any(g["metadata"]["name"] == GATEWAY_NAME and g["status"]["inSync"] for g in items):
            return
        await asyncio.sleep(0.2)
    raise UpFailed(f"the gateway did not come up in time; see {gateway.log}")


async def _wait_nodes(admin: Client, names: set[str], agents: list[Child], deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        for a in agents:
            if a.proc is not None and a.proc.returncode is not None:
                raise UpFailed(f"agent {a.name} exited with code {a.proc.returncode}:\n{_tail(a.log)}")
        ready = {n["metadata"]["name"] for n in (await admin.get("/v1/nodes"))["items"] if n["status"]["ready"]}
        if names <= ready:
            return
        await asyncio.sleep(0.2)
    raise UpFailed("agents did not register in time; see " + ", ".join(str(a.log) for a in agents))


def _announce(console: Console, settings: UpSettings, client_file: Path, plan: list[Any], data_dir: Path,
              leader: dict[str, Any] | None = None) -> None:
    first = settings.servers[0]
    console.print(f"[bold green]Ballast is up[/]  control plane: {settings.server}  "
                  f"(API description: {first}/v1/openapi.json, with a token)")
    if leader is not None:
        console.print(f"control plane replicas: {settings.replicas}, sharing {_safe_store(settings.store)}; "
                      f"leader (runs the controllers): {leader['holder']} epoch {leader['epoch']}  "
                      "(ballast leader)")
    console.print(f"gateway: {settings.gateway_url}")
    if settings.metrics_port:
        console.print(f"metrics: http://NODE-IP:{settings.metrics_port}/metrics (agents), "
                      f"http://{settings.gateway_metrics}/metrics (gateway), {first}/metrics "
                      "(control plane, with a token)")
    console.print(f"data dir: {data_dir}   client config: {client_file}")
    console.print(f"audit checkpoints: {data_dir / AUDIT_CHECKPOINTS}, signed by {data_dir / AUDIT_KEY} "
                  f"(public key: {data_dir / (AUDIT_KEY + '.pub')})")
    for name, ip, cell, zone in plan:
        console.print(f"  node {name:<8} {ip:<12} {cell} ({zone})")
    console.print("try: ballast demo && ballast get instances shop     (Ctrl-C stops everything)", highlight=False)


async def _supervise(replicas: list[Child], agents: list[Child], stop: asyncio.Event, console: Console,
                     data_dir: Path) -> None:
    """Restart a part that dies; a restarted agent adopts its running instances."""
    _remember(data_dir, [*replicas, *agents])
    while not stop.is_set():
        for child in [*replicas, *agents]:
            if child.proc is not None and child.proc.returncode is not None:
                child.restarts += 1
                console.print(f"[yellow]{child.name} exited with code {child.proc.returncode}; restarting "
                              f"(restart {child.restarts})[/]")
                await child.start()
                _remember(data_dir, [*replicas, *agents])
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass


def _safe_store(url: str | None) -> str:
    """The store URL without its password, for the announcement."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url or "").render_as_string(hide_password=True)
    except Exception:
        return "the store"
