"""HAProxy text of TrafficRules and ColoringRules, exact; the rendered sidecar and gateway accepted by HAProxy;
the weights map and its runtime commands. Pure (but for `haproxy -c`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ballast.dataplane.haproxy_config import Address, GatewayConfig, SidecarConfig, render_gateway, render_sidecar
from ballast.dataplane.rule_config import (render_marking, render_rule, render_weights_map, untrusted_baggage,
                                           weight_entries)
from ballast.dataplane.tables import gateway_rule_tables, map_commands, parse_map, sidecar_tables
from ballast.wire.registry import Endpoint, Route, Service, Snapshot
from ballast.wire.traffic import ColoringInEffect, ColoringRuleSpec, RuleInEffect, TrafficRuleSpec

RULE = RuleInEffect(name="back-canary", generation=5, spec=TrafficRuleSpec.model_validate({
    "service": "back", "routes": [
        {"name": "testers", "match": {"headers": {"x-user-group": {"exact": "testers"}}, "tags": {"env": "gray"}},
         "to": [{"revision": 2}], "fallback": "fail"},
        {"name": "split", "to": [{"revision": 1, "weight": 999}, {"revision": 2, "weight": 1}],
         "stickyKey": {"cookie": "uid"}}]}))
COLORING = ColoringInEffect(name="replenish", generation=6, spec=ColoringRuleSpec.model_validate({
    "at": {"apps": ["front", "gateway"]}, "match": {"pathPrefix": "/replenish"}, "tags": {"biz": "replenish"}}))
EXPECTED_RULE = [
    '    # traffic rule back-canary for back\n',
    "    http-request set-var(txn.route) str(back-canary/testers) if { var(txn.service) -m str back } !{ var(txn.route) -m found } { req.fhdr(x-user-group) -m str 'testers' } { req.hdr(baggage) -m reg '^\\s*env\\s*=\\s*gray\\s*(;.*)?$' }\n",
    '    http-request set-var(txn.route) str(back-canary/split) if { var(txn.service) -m str back } !{ var(txn.route) -m found }\n',
    '    http-request set-var(txn.dest) str(svc_back:r2) if { var(txn.route) -m str back-canary/testers } !{ var(txn.dest) -m found }\n',
    '    http-request set-var(txn.empty) bool(true) if { var(txn.route) -m str back-canary/testers } { var(txn.dest) -m str svc_back:r2 } { nbsrv(svc_back:r2) eq 0 }\n',
    '    http-request return status 503 content-type text/plain hdr x-ballast-route back-canary/testers string "ballast: no ready endpoint in the route\'s subset" if { var(txn.route) -m str back-canary/testers } { var(txn.empty) -m found } !{ stopping }\n',
    '    http-request set-var(txn.pick) rand(1000000) if { var(txn.route) -m str back-canary/split }\n',
    '    http-request set-var(txn.pick) req.cook(uid),crc32,mod(1000000) if { var(txn.route) -m str back-canary/split } { req.cook(uid) -m found }\n',
    '    http-request set-var(txn.bound) str(back-canary/split/0),map_str_int(/run/w.map,0) if { var(txn.route) -m str back-canary/split }\n',
    '    http-request set-var(txn.dest) str(svc_back:r1) if { var(txn.route) -m str back-canary/split } { var(txn.pick),sub(txn.bound) -m int lt 0 } !{ var(txn.dest) -m found }\n',
    '    http-request set-var(txn.dest) str(svc_back:r2) if { var(txn.route) -m str back-canary/split } !{ var(txn.dest) -m found }\n',
    '    http-request set-var(txn.empty) bool(true) if { var(txn.route) -m str back-canary/split } { var(txn.dest) -m str svc_back:r1 } { nbsrv(svc_back:r1) eq 0 }\n',
    '    http-request set-var(txn.empty) bool(true) if { var(txn.route) -m str back-canary/split } { var(txn.dest) -m str svc_back:r2 } { nbsrv(svc_back:r2) eq 0 }\n',
    '    http-request unset-var(txn.dest) if { var(txn.service) -m str back } { var(txn.empty) -m found }\n',
]


def test_a_rule_renders_to_exactly_this_text() -> None:
    assert render_rule("back", RULE, "/run/w.map").splitlines(keepends=True) == EXPECTED_RULE


def test_without_a_weights_map_the_bounds_are_in_the_text() -> None:
    text = render_rule("back", RULE)
    assert "{ var(txn.pick) -m int lt 999000 }" in text and "map_str_int" not in text


def test_marking_takes_its_condition_once_replaces_the_key_and_adds_the_tags() -> None:
    assert render_marking((COLORING,)) == (
        "    # coloring rule replenish\n"
        "    http-request set-var(txn.mark0) bool(true) if { path '/replenish' } !{ stopping }\n"
        "    http-request set-var(txn.mark0) bool(true) if { path_beg '/replenish/' } !{ stopping }\n"
        "    http-request replace-header baggage '^(|.*?,)\\s*biz\\s*=[^,]*,?(.*)$' '\\1\\2' "
        "if { var(txn.mark0) -m found }\n"
        "    http-request add-header baggage 'biz=replenish' if { var(txn.mark0) -m found }\n")


@pytest.mark.parametrize(("trusted", "line"), [
    ((), "    http-request del-header baggage\n"),
    (("10.0.0.0/8", "192.168.1.0/24"), "    http-request del-header baggage unless { src 10.0.0.0/8 192.168.1.0/24 }\n"),
])
def test_the_gateway_removes_outside_color(trusted: tuple[str, ...], line: str) -> None:
    assert untrusted_baggage(trusted) == line


def test_the_weights_map_holds_each_weighted_routes_bounds_and_changes_in_place() -> None:
    entries = weight_entries([("back", RULE)])
    assert entries == {"back-canary/split/0": 999_000}
    assert render_weights_map(entries) == "back-canary/split/0 999000\n"
    live = parse_map("0x55d1c0c1e0 back-canary/split/0 990000\n0x55d1c0c1f0 gone/r/0 5\n")
    assert map_commands("/run/w.map", entries, live) == ["set map /run/w.map back-canary/split/0 999000",
                                                         "del map /run/w.map gone/r/0"]
    assert map_commands("/run/w.map", entries, {}) == ["add map /run/w.map back-canary/split/0 999000"]
    assert map_commands("/run/w.map", entries, {"back-canary/split/0": "999000"}) == []


def _snapshot() -> Snapshot:
    endpoints = (Endpoint(id="back-1", ip="10.0.0.1", port=20001, cell="a", zone="z", state="ready", revision=1),
                 Endpoint(id="back-2", ip="10.0.0.2", port=20001, cell="b", zone="z", state="ready", revision=2))
    return Snapshot(generation=7, services=(Service(name="back", endpoints=endpoints, rules=(RULE,),
                                                    routes=(Route(host="back.local", path="/"),)),),
                    coloring=(COLORING,))


def test_subsets_are_backends_of_their_own_with_the_sidecars_cell_preference() -> None:
    tables = sidecar_tables(_snapshot(), "a", "front")
    assert [b.name for b in tables.backends] == ["svc_back", "svc_back:r2", "svc_back:r1"]
    r2 = next(b for b in tables.backends if b.name == "svc_back:r2")
    assert [(s.name, s.backup) for s in r2.servers] == [("back-2", True)], "another cell's: a backup, used alone"
    assert tables.rules == (("back", RULE),) and tables.marking == (COLORING,)
    assert sidecar_tables(_snapshot(), "a", None).rules == (), "no caller: no rule"


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(), reason="no haproxy")
def test_haproxy_accepts_the_rendered_rules(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    weights = tmp_path / "weights.map"
    weights.write_text(render_weights_map(weight_entries([("back", RULE)])))
    tables = sidecar_tables(_snapshot(), "a", "front")
    sidecar = render_sidecar(SidecarConfig(
        instance="front-1", admin_socket=str(tmp_path / "s.sock"), inbound=Address("127.0.0.1", 20010),
        app=Address("127.0.0.1", 20011), outbound=Address("127.0.0.1", 20012), backends=tables.backends,
        rules=tables.rules, marking=tables.marking, weights_map=str(weights)))
    routes, gw = gateway_rule_tables(_snapshot())
    gateway = render_gateway(GatewayConfig(
        name="edge", admin_socket=str(tmp_path / "g.sock"), listen=Address("127.0.0.1", 18080), routes=routes,
        backends=gw.backends, rules=gw.rules, marking=gw.marking, trusted_color_networks=("10.0.0.0/8",),
        weights_map=str(weights)))
    for name, text in (("sidecar", sidecar), ("gateway", gateway)):
        path = tmp_path / f"{name}.cfg"
        path.write_text(text)
        checked = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
