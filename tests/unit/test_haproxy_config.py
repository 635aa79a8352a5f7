"""Spec of the rendered HAProxy configuration: exact text, what counts as structure, and `haproxy -c` agreeing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ballast.dataplane.haproxy import find_binary
from ballast.dataplane.haproxy_config import (Address, Backend, GatewayConfig, GatewayRoute, ProxyTuning, Server,
                                              SidecarConfig, render_gateway, render_sidecar, route_order,
                                              structure_digest)

GLOBAL_AND_DEFAULTS = """\
global
    master-worker
    nbthread {threads}
    maxconn 4096
    stats socket {socket} mode 600 level admin expose-fd listeners
    stats timeout 30s
    hard-stop-after 60s

defaults
    mode http
    option http-keep-alive
    option idle-close-on-response
    timeout connect 2s
    timeout client 75s
    timeout server 75s
    timeout http-request 15s
    timeout http-keep-alive 60s
    timeout queue 15s
"""
RETRIES = """\
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    http-request disable-l7-retry unless METH_GET || METH_OPTIONS
"""

BACK = Backend("back", (Server("back-2", Address("10.0.0.2", 20000), backup=True),
                        Server("back-1", Address("10.0.0.1", 20000), enabled=False)))
SIDECAR = SidecarConfig(instance="front-1", admin_socket="/run/s/admin.sock", inbound=Address("10.0.0.1", 20010),
                        app=Address("127.0.0.1", 20011), outbound=Address("127.0.0.1", 20012), backends=(BACK,))


def test_sidecar_configuration_exact_text() -> None:
    expected = ("# ballast sidecar for instance front-1\n"
                + GLOBAL_AND_DEFAULTS.format(threads=1, socket="/run/s/admin.sock")
                + "\nfrontend inbound\n"
                "    bind 10.0.0.1:20010\n"
                "    use_backend hand_off_inbound if { stopping }\n"
                "    default_backend app\n"
                "\nbackend app\n" + RETRIES +
                "    server app 127.0.0.1:20011 pool-purge-delay 30s\n"
                "\nfrontend outbound\n"
                "    bind 127.0.0.1:20012\n"
                "    tcp-request connection reject unless { src 127.0.0.1 }\n"
                "    http-request deny deny_status 400 if { req.fhdr(host) -m sub , }\n"
                "    http-request set-var(txn.service) req.fhdr(host),field(1,:),lower\n"
                "    http-request del-header x-ballast-unit\n"
                "    use_backend hand_off_outbound if { stopping }\n"
                "    use_backend svc_back if { var(txn.service) -m str back }\n"
                "    default_backend no_service\n"
                "\nbackend no_service\n"
                "    http-request return status 503 content-type text/plain "
                "string \"ballast mesh: no service of that name (Host header)\"\n"
                "\nbackend svc_back\n"
                "    balance roundrobin\n"
                "    option allbackups\n" + RETRIES +
                "    server back-1 10.0.0.1:20000 pool-purge-delay 30s disabled\n"
                "    server back-2 10.0.0.2:20000 pool-purge-delay 30s backup\n"
                "\nbackend hand_off_inbound\n"
                "    retries 3\n"
                "    retry-on conn-failure empty-response\n"
                "    server next 10.0.0.1:20010\n"
                "\nbackend hand_off_outbound\n"
                "    retries 3\n"
                "    retry-on conn-failure empty-response\n"
                "    server next 127.0.0.1:20012\n")
    assert render_sidecar(SIDECAR) == expected


def test_gateway_configuration_exact_text() -> None:
    shop = Backend("shop", (Server("shop-1", Address("10.0.0.1", 20000)),))
    api = Backend("api", (Server("api-1", Address("10.0.0.3", 20000), enabled=False),))
    cfg = GatewayConfig(name="edge", admin_socket="/run/g/admin.sock", listen=Address("127.0.0.1", 8080),
                        routes=(GatewayRoute("shop.local", "/", "shop"), GatewayRoute("shop.local", "/api/", "api")),
                        backends=(shop, api), threads=2)
    expected = ("# ballast gateway edge\n"
                + GLOBAL_AND_DEFAULTS.format(threads=2, socket="/run/g/admin.sock")
                + "\nfrontend gateway\n"
                "    bind 127.0.0.1:8080\n"
                "    http-request deny deny_status 400 if { req.fhdr(host) -m sub , }\n"
                "    http-request set-var(txn.host) req.fhdr(host),field(1,:),lower\n"
                "    http-request del-header baggage\n"
                "    http-request set-var(txn.service) str(api) if { var(txn.host) -m str shop.local } { path /api } "
                "!{ var(txn.service) -m found } || { var(txn.host) -m str shop.local } { path_beg /api/ } "
                "!{ var(txn.service) -m found }\n"
                "    http-request set-var(txn.service) str(shop) if { var(txn.host) -m str shop.local } "
                "!{ var(txn.service) -m found }\n"
                "    http-request del-header x-ballast-unit\n"
                "    use_backend hand_off_gateway if { stopping }\n"
                "    use_backend svc_api if { var(txn.service) -m str api }\n"
                "    use_backend svc_shop if { var(txn.service) -m str shop }\n"
                "    default_backend no_route\n"
                "\nbackend no_route\n"
                "    http-request return status 404 content-type text/plain "
                "string \"ballast gateway: no route for this host and path\"\n"
                "\nbackend svc_api\n"
                "    balance roundrobin\n" + RETRIES +
                "    server api-1 10.0.0.3:20000 pool-purge-delay 30s disabled\n"
                "\nbackend svc_shop\n"
                "    balance roundrobin\n" + RETRIES +
                "    server shop-1 10.0.0.1:20000 pool-purge-delay 30s\n"
                "\nbackend hand_off_gateway\n"
                "    retries 3\n"
                "    retry-on conn-failure empty-response\n"
                "    server next 127.0.0.1:8080\n")
    assert render_gateway(cfg) == expected


@pytest.mark.parametrize("routes, order", [
    ([("a.local", "/"), ("a.local", "/api"), ("a.local", "/api/v2")], ["/api/v2", "/api", "/"]),
    ([("b.local", "/"), ("a.local", "/x")], ["/x", "/"]),
])
def test_longer_path_prefixes_win(routes: list[tuple[str, str]], order: list[str]) -> None:
    ordered = route_order(tuple(GatewayRoute(h, p, "s") for h, p in routes))
    assert [r.path for r in ordered] == order


def test_servers_are_not_structure_but_services_routes_and_listeners_are() -> None:
    base = structure_digest(render_sidecar(SIDECAR))
    other_servers = SidecarConfig(**{**SIDECAR.__dict__, "backends": (Backend("back", ()),)})
    assert structure_digest(render_sidecar(other_servers)) == base, "endpoint changes go through the runtime API"
    more_services = SidecarConfig(**{**SIDECAR.__dict__, "backends": (BACK, Backend("pay", ()))})
    assert structure_digest(render_sidecar(more_services)) != base, "a new service needs a reload"
    moved_app = SidecarConfig(**{**SIDECAR.__dict__, "app": Address("10.0.0.1", 20099)})
    assert structure_digest(render_sidecar(moved_app)) != base, "the app's own address is structure"


@pytest.mark.parametrize("bad", ["back\n    server evil 1.2.3.4:1", "a b", "x;y", "", "\"quoted\""])
def test_nothing_unchecked_reaches_the_text(bad: str) -> None:
    with pytest.raises(ValueError):
        render_sidecar(SidecarConfig(**{**SIDECAR.__dict__, "backends": (Backend(bad, ()),)}))
    with pytest.raises(ValueError):
        render_sidecar(SidecarConfig(**{**SIDECAR.__dict__, "instance": bad}))


TUNED = ProxyTuning(http_reuse="always", bufsize=8192, http_no_delay=True)


def test_tuning_adds_its_lines_and_nothing_else() -> None:
    """A proxy tuned (as benchmarks/hop_fixed_rate.py measures it) differs from the default by exactly its knobs."""
    default = render_sidecar(SIDECAR)
    tuned = render_sidecar(SidecarConfig(**{**SIDECAR.__dict__, "tuning": TUNED}))
    expected = (default.replace("    maxconn 4096\n", "    tune.bufsize 8192\n    maxconn 4096\n", 1)
                .replace("    option http-keep-alive\n",
                         "    option http-keep-alive\n    http-reuse always\n    option http-no-delay\n", 1))
    assert tuned == expected != default


@pytest.mark.parametrize("tuning", [ProxyTuning(), TUNED])
def test_haproxy_accepts_what_is_rendered(tmp_path: Path, tuning: ProxyTuning) -> None:
    """The real `haproxy -c` (Debian's package, installed by the set-up) validates both kinds of configuration."""
    gateway = GatewayConfig(name="edge", admin_socket=str(tmp_path / "g.sock"), listen=Address("127.0.0.1", 8080),
                            routes=(GatewayRoute("shop.local", "/api", "back"),), backends=(BACK,), tuning=tuning)
    sidecar = SidecarConfig(**{**SIDECAR.__dict__, "admin_socket": str(tmp_path / "s.sock"), "tuning": tuning})
    for name, text in (("sidecar.cfg", render_sidecar(sidecar)), ("gateway.cfg", render_gateway(gateway))):
        path = tmp_path / name
        path.write_text(text)
        check = subprocess.run([find_binary(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
