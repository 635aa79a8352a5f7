"""HAProxy configuration for sidecars and gateways, rendered by pure functions.

The rendered text is what `haproxy -c` validates and what is swapped in on a
reload. Servers are in the file too (a reload must not lose them), but they
are the dynamic part: endpoint changes reach a running HAProxy through its
runtime API. Everything else is the *structure*; only a change of structure
needs a reload, and `structure_digest` says when that is.

Names and addresses reach the text only after `_safe` checked them: a
registry value can never inject a directive.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from ballast.core.loopback import HOST_LOOPBACK
from ballast.core.request_metrics import BOUNDS_MS
from ballast.wire.traffic import ColoringInEffect, RuleInEffect
from ballast.dataplane.config_text import Address, Backend, Server, backend_name, safe as _safe
from ballast.dataplane.rule_config import (DESTINATION, UnitTables, render_marking, render_rule, render_stress_guard,
                                          render_unit, untrusted_baggage)
from ballast.dataplane.request_stats import BUCKET_VARIABLE, SERVICE_PREFIX, START_VARIABLE, TABLE, StatsHooks

SERVER_LINE = re.compile(r"^\s+server\s")
# Only requests a replay cannot harm are retried after a server closed without answering;
# a connection that never opened is retried for every method (nothing was sent).
RETRY_POLICY = ("    retries 3\n"
                "    option redispatch 1\n"
                "    retry-on conn-failure empty-response\n"
                "    http-request disable-l7-retry unless METH_GET || METH_OPTIONS\n")


@dataclass(frozen=True)
class GatewayRoute:
    host: str
    path: str
    service: str


@dataclass(frozen=True)
class ProxyTuning:
    """How a proxy process runs, apart from what it routes. The defaults are what Ballast renders; the other
    values are there so that `benchmarks/hop_fixed_rate.py` can measure them beside the defaults, in one run."""

    http_reuse: str | None = None   # `http-reuse` towards servers; None: HAProxy's default (safe)
    bufsize: int | None = None      # `tune.bufsize`; None: HAProxy's 16384 (it bounds a request's headers too)
    http_no_delay: bool = False     # `option http-no-delay`: no merging of small writes


@dataclass(frozen=True)
class SidecarConfig:
    instance: str
    admin_socket: str
    inbound: Address      # the registered endpoint: the only listener that faces the network
    app: Address          # where the app itself listens (loopback)
    outbound: Address     # BALLAST_MESH_URL (loopback)
    backends: tuple[Backend, ...]     # the services' pools and the subsets their rules name
    stats: StatsHooks | None = None   # time the app's answers (request metrics)
    rules: tuple[tuple[str, RuleInEffect], ...] = ()   # (service, the rule that governs this app's calls to it)
    marking: tuple[ColoringInEffect, ...] = ()         # coloring at this app's inbound side
    weights_map: str | None = None                     # the map file weighted routes read their bounds from
    units: UnitTables = UnitTables()                   # the instance's unit (self-convergence), stress confinement
    tuning: ProxyTuning = ProxyTuning()


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    admin_socket: str
    listen: Address
    routes: tuple[GatewayRoute, ...]
    backends: tuple[Backend, ...]
    threads: int = 1
    stats: StatsHooks | None = None
    rules: tuple[tuple[str, RuleInEffect], ...] = ()   # (service, the rule that governs the gateway's calls to it)
    marking: tuple[ColoringInEffect, ...] = ()
    trusted_color_networks: tuple[str, ...] = ()       # clients whose own baggage is kept
    weights_map: str | None = None
    units: UnitTables = UnitTables()
    task_socket: str | None = None                     # the scheduled-task executor's way into the mesh
    tuning: ProxyTuning = ProxyTuning()


LUA_FORCED_YIELD = 2_000_000_000


def _global(admin_socket: str, threads: int, stats: StatsHooks | None, tuning: ProxyTuning) -> str:
    # HAProxy 2.6 crashes its worker (code 139) when a Lua CLI command is forced to yield, which happens after
    # 10,000 Lua instructions: `ballast stats` of a gateway under load walks that many. It yields never.
    lua = "" if stats is None else (f"    # request statistics {_safe(stats.digest)}\n"
                                     f"    lua-load {_safe(stats.script_path)}\n"
                                     f"    tune.lua.forced-yield {LUA_FORCED_YIELD}\n")
    bufsize = "" if tuning.bufsize is None else f"    tune.bufsize {int(tuning.bufsize)}\n"
    reuse = "" if tuning.http_reuse is None else f"    http-reuse {_safe(tuning.http_reuse)}\n"
    no_delay = "    option http-no-delay\n" if tuning.http_no_delay else ""
    return ("global\n"
            "    master-worker\n"
            f"    nbthread {int(threads)}\n"
            f"{lua}"
            f"{bufsize}"
            "    maxconn 4096\n"
            f"    stats socket {_safe(admin_socket)} mode 600 level admin expose-fd listeners\n"
            "    stats timeout 30s\n"
            # Old workers of a seamless reload finish their requests, then go.
            "    hard-stop-after 60s\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    option http-keep-alive\n"
            f"{reuse}{no_delay}"
            # An old worker answers the next request on an idle keep-alive connection with
            # `Connection: close` instead of closing it under a client that is about to send.
            "    option idle-close-on-response\n"
            "    timeout connect 2s\n"
            "    timeout client 75s\n"
            "    timeout server 75s\n"
            "    timeout http-request 15s\n"
            "    timeout http-keep-alive 60s\n"
            "    timeout queue 15s\n")


# Idle connections to a server are kept 30 s before HAProxy starts closing them (its default is 5 s): under
# fluctuating concurrency the default opens and resets connections to the app many times a second.
SERVER_OPTIONS = "pool-purge-delay 30s"


def _server_line(s: Server) -> str:
    flags = (" backup" if s.backup else "") + ("" if s.enabled else " disabled")
    return f"    server {_safe(s.name)} {s.address} {SERVER_OPTIONS}{flags}\n"


def _backend(b: Backend, *, locality: bool) -> str:
    text = (f"\nbackend {b.name}\n"
            "    balance roundrobin\n")
    if locality:
        # Other cells' endpoints are backups: used, all of them, only when this cell has none ready.
        text += "    option allbackups\n"
    text += RETRY_POLICY
    return text + "".join(_server_line(s) for s in sorted(b.servers, key=lambda s: s.name))


# A Host header holding a list ("a, b") names no one host: `req.hdr` would take its last element and route the
# request somewhere its sender did not name. HAProxy itself refuses two Host headers and a Host that disagrees
# with an absolute URI; a list is refused here, before any routing.
_ONE_HOST = "    http-request deny deny_status 400 if { req.fhdr(host) -m sub , }\n"


# The outbound listener is the instance's own way out. It binds loopback (unreachable from other hosts); this
# also turns away a caller on the same machine that speaks from another address (another node of a one-machine
# platform): the instance's own connections to a loopback address come from the kernel's source for 127/8.
_LOCAL_CALLERS_ONLY = f"    tcp-request connection reject unless {{ src {HOST_LOOPBACK} }}\n"


_STAMP_ARRIVAL = f"    http-request set-var({START_VARIABLE}) date(0,us)\n"


def _count_answer(stats: StatsHooks | None) -> str:
    """Each answer of a timed backend counted under "server/bucket" in the stick table (no script per request)."""
    if stats is None:
        return ""
    return (f"    http-response set-var({BUCKET_VARIABLE}) date(0,us),sub({START_VARIABLE}),"
            f"map_int_int({_safe(stats.map_path)},{len(BOUNDS_MS)})\n"
            f"    http-response track-sc0 srv_name,concat(/,{BUCKET_VARIABLE}) table {TABLE}\n"
            "    http-response sc-inc-gpc0(0)\n")


def _answer_table(stats: StatsHooks | None) -> str:
    if stats is None:
        return ""
    # An idle entry expires; readers count each bucket on its own, so one that starts again at zero is no loss.
    return (f"\nbackend {TABLE}\n"
            f"    stick-table type string len 100 size {int(stats.table_size)} expire 1h store gpc0\n")


# After a seamless reload the old worker still holds the keep-alive connections of its clients, and answers their
# next request (then closes them). That request must follow the new configuration (the one acknowledged), so the
# old worker, now `stopping`, routes nothing itself: it hands the request to the new one, which owns the listener.
_HAND_OFF = "    use_backend hand_off_{name} if {{ stopping }}\n"


def _hand_off_backend(name: str, listener: Address) -> str:
    target = Address("127.0.0.1" if listener.ip in ("0.0.0.0", "::") else listener.ip, listener.port)
    return (f"\nbackend hand_off_{name}\n"
            "    retries 3\n"
            "    retry-on conn-failure empty-response\n"
            f"    server next {target}\n")


def render_sidecar(cfg: SidecarConfig) -> str:
    timed = cfg.stats is not None
    out = [f"# ballast sidecar for instance {_safe(cfg.instance)}\n", _global(cfg.admin_socket, 1, cfg.stats, cfg.tuning),
           "\nfrontend inbound\n",
           f"    bind {cfg.inbound}\n",
           _STAMP_ARRIVAL if timed else "",
           render_marking(cfg.marking),
           _HAND_OFF.format(name="inbound"),
           "    default_backend app\n",
           "\nbackend app\n",
           _count_answer(cfg.stats),
           RETRY_POLICY,
           f"    server app {cfg.app} {SERVER_OPTIONS}\n",
           "\nfrontend outbound\n",
           f"    bind {cfg.outbound}\n",
           _LOCAL_CALLERS_ONLY,
           _ONE_HOST,
           "    http-request set-var(txn.service) req.fhdr(host),field(1,:),lower\n"]
    backends = sorted(cfg.backends, key=lambda b: b.name)
    out.append(render_unit(cfg.units))
    out.extend(render_rule(service, rule, cfg.weights_map) for service, rule in cfg.rules)
    out.append(render_stress_guard(cfg.units))
    out.append(_HAND_OFF.format(name="outbound"))
    if cfg.rules or cfg.units.routes:
        out.append(DESTINATION)
    for b in backends:
        if not b.subset:
            out.append(f"    use_backend {b.name} if {{ var(txn.service) -m str {_safe(b.service)} }}\n")
    out.append("    default_backend no_service\n"
               "\nbackend no_service\n"
               "    http-request return status 503 content-type text/plain "
               "string \"ballast mesh: no service of that name (Host header)\"\n")
    out.extend(_backend(b, locality=True) for b in backends)
    out.append(_hand_off_backend("inbound", cfg.inbound))
    out.append(_hand_off_backend("outbound", cfg.outbound))
    out.append(_answer_table(cfg.stats))
    return "".join(out)


def _route_alternatives(route: GatewayRoute) -> list[str]:
    host = f"{{ var(txn.host) -m str {_safe(route.host)} }}"
    path = _safe(route.path)
    if path == "/":
        return [host]
    prefix = path.rstrip("/")
    # A prefix matches itself and what lies below it: /api matches /api and /api/x, not /apix.
    return [f"{host} {{ path {prefix} }}", f"{host} {{ path_beg {prefix}/ }}"]


def route_order(routes: tuple[GatewayRoute, ...]) -> list[GatewayRoute]:
    """Most specific first: a longer path prefix of the same host wins over a shorter one."""
    return sorted(routes, key=lambda r: (r.host, -len(r.path.rstrip("/")), r.path, r.service))


def render_gateway(cfg: GatewayConfig) -> str:
    timed = cfg.stats is not None
    out = [f"# ballast gateway {_safe(cfg.name)}\n", _global(cfg.admin_socket, cfg.threads, cfg.stats, cfg.tuning),
           "\nfrontend gateway\n",
           f"    bind {cfg.listen}\n",
           _ONE_HOST,
           "    http-request set-var(txn.host) req.fhdr(host),field(1,:),lower\n",
           _STAMP_ARRIVAL if timed else "",
           _count_answer(cfg.stats),
           untrusted_baggage(cfg.trusted_color_networks),
           render_marking(cfg.marking)]
    unset = "!{ var(txn.service) -m found }"
    for route in route_order(cfg.routes):
        when = " || ".join(f"{alt} {unset}" for alt in _route_alternatives(route))
        out.append(f"    http-request set-var(txn.service) str({_safe(route.service)}) if {when}\n")
    routed = {r.service for r in cfg.routes}
    rules = [(service, rule) for service, rule in cfg.rules if service in routed]   # the task frontend has all
    units = replace(cfg.units, services=tuple(u for u in cfg.units.services if u.service in routed))
    out.append(render_unit(units))
    out.extend(render_rule(service, rule, cfg.weights_map) for service, rule in rules)
    out.append(render_stress_guard(units))
    out.append(_HAND_OFF.format(name="gateway"))
    if rules or units.routes:
        out.append(DESTINATION)
    for service in sorted({r.service for r in cfg.routes}):
        out.append(f"    use_backend {backend_name(service)} if {{ var(txn.service) -m str {_safe(service)} }}\n")
    out.append("    default_backend no_route\n"
               "\nbackend no_route\n"
               "    http-request return status 404 content-type text/plain "
               "string \"ballast gateway: no route for this host and path\"\n")
    if cfg.task_socket is not None:
        out.append(_task_frontend(cfg))
    out.extend(_backend(b, locality=False) for b in sorted(cfg.backends, key=lambda b: b.name))
    out.append(_hand_off_backend("gateway", cfg.listen))
    out.append(_answer_table(cfg.stats))
    return "".join(out)


SERVED_BY = "x-ballast-served-by"


def _task_frontend(cfg: GatewayConfig) -> str:
    """Where the gateway's scheduled-task executor makes its calls: a UNIX socket only the gateway's user can open
    (so the baggage it sets is kept: nobody else speaks here), routing by Host to ANY mesh service like a sidecar's
    outbound side, by the TrafficRules whose caller is the gateway. The answer names the instance that served it.
    The executor opens a connection per call, so no old worker of a reload ever routes one (no hand-off)."""
    out = ["\nfrontend tasks\n",
           f"    bind unix@{_safe(cfg.task_socket or '')} mode 600\n",
           _ONE_HOST,
           "    http-request set-var(txn.service) req.fhdr(host),field(1,:),lower\n",
           render_unit(cfg.units)]
    out.extend(render_rule(service, rule, cfg.weights_map) for service, rule in cfg.rules)
    out.append(render_stress_guard(cfg.units))
    if cfg.rules or cfg.units.routes:
        out.append(DESTINATION)
    for b in sorted(cfg.backends, key=lambda b: b.name):
        if not b.subset:
            out.append(f"    use_backend {b.name} if {{ var(txn.service) -m str {_safe(b.service)} }}\n")
    out.append(f"    http-response set-header {SERVED_BY} %[srv_name]\n"
               "    default_backend no_task_service\n"
               "\nbackend no_task_service\n"
               "    http-request return status 503 content-type text/plain "
               "string \"ballast gateway: no service of that name (Host header)\"\n")
    return "".join(out)


def structure_digest(rendered: str) -> str:
    """What a reload would change: the configuration without the servers of service backends."""
    kept, in_service = [], False
    for line in rendered.splitlines():
        if not line.startswith(" "):
            in_service = line.startswith(f"backend {SERVICE_PREFIX}")
        if in_service and SERVER_LINE.match(line):
            continue
        kept.append(line)
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]
