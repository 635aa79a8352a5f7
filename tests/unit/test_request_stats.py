"""Spec of the data plane's request statistics: the bucket map, the configuration that counts answers, the
dump the script answers, and what it means.

The counting itself runs in the end-to-end tests (a real HAProxy); here the text and the reading of the
answers are checked as values.
"""

from __future__ import annotations

import pytest

from ballast.core.request_metrics import BOUNDS_MS, BUCKETS, CLASSES, bucket_of, estimated_sum
from ballast.dataplane.haproxy_config import (Address, Backend, GatewayConfig, GatewayRoute, Server, SidecarConfig,
                                              render_gateway, render_sidecar, structure_digest)
from ballast.dataplane.request_stats import (DumpError, ProxyCounters, StatsHooks, gateway_counts, parse_dump,
                                             render_bucket_map, render_script, script_digest, sidecar_counts,
                                             stat_servers)

HOOKS = StatsHooks("/var/lib/ballast/request-stats.lua", "/var/lib/ballast/request-buckets.map", "0123456789abcdef",
                   table_size=1000)
FIVE = CLASSES.index("5xx")


def test_the_bucket_map_holds_the_buckets_of_the_one_definition_in_microseconds() -> None:
    """Bucket i holds (bound i-1, bound i]; everything at or below the first bound (a clock step backwards
    included) is bucket 0, everything past the last bound the last bucket."""
    lines = render_bucket_map().splitlines()
    assert len(lines) == BUCKETS
    assert lines[0] == ":500 0" and lines[1] == "501:1000 1"
    assert lines[-1] == f"{int(BOUNDS_MS[-1] * 1000) + 1}: {len(BOUNDS_MS)}"
    for index, line in enumerate(lines[1:-1], start=1):
        low, _, rest = line.partition(":")
        high, _, bucket = rest.partition(" ")
        assert (int(low), int(high), int(bucket)) == (int(BOUNDS_MS[index - 1] * 1000) + 1,
                                                    int(BOUNDS_MS[index] * 1000), index)
    assert bucket_of(BOUNDS_MS[3]) == 3 and bucket_of(BOUNDS_MS[3] + 0.001) == 4, "the same rule as core's"
    assert script_digest(render_script(), render_bucket_map()) == script_digest(render_script(), render_bucket_map())


SIDECAR = SidecarConfig(instance="shop-1", admin_socket="/run/s.sock", inbound=Address("10.0.0.1", 20000),
                        app=Address("10.0.0.1", 20001), outbound=Address("10.0.0.1", 20002), backends=())
COUNT_ANSWER = ("    http-response set-var(txn.ballast_bucket) date(0,us),sub(txn.ballast_t0),"
                "map_int_int(/var/lib/ballast/request-buckets.map,43)\n"
                "    http-response track-sc0 srv_name,concat(/,txn.ballast_bucket) table ballast_latency\n"
                "    http-response sc-inc-gpc0(0)\n")


def test_a_sidecar_stamps_arrivals_on_its_inbound_side_and_counts_the_apps_answers_per_bucket() -> None:
    text = render_sidecar(SidecarConfig(**{**SIDECAR.__dict__, "stats": HOOKS}))
    assert "    lua-load /var/lib/ballast/request-stats.lua\n" in text
    inbound = text[text.index("frontend inbound"):text.index("backend app")]
    assert "    http-request set-var(txn.ballast_t0) date(0,us)\n" in inbound
    app = text[text.index("backend app"):text.index("frontend outbound")]
    assert COUNT_ANSWER in app
    outbound = text[text.index("frontend outbound"):text.index("backend ballast_latency")]
    assert "ballast_t0" not in outbound and "ballast_bucket" not in outbound, "the app's own calls are not timed"
    assert text.endswith("\nbackend ballast_latency\n"
                         "    stick-table type string len 100 size 1000 expire 1h store gpc0\n")
    assert "lua" not in render_sidecar(SIDECAR) and "ballast_latency" not in render_sidecar(SIDECAR), \
        "without hooks the configuration is as before"


def test_new_statistics_files_change_the_structure_so_running_proxies_reload_them() -> None:
    one = render_sidecar(SidecarConfig(**{**SIDECAR.__dict__, "stats": HOOKS}))
    other = render_sidecar(SidecarConfig(**{**SIDECAR.__dict__, "stats": StatsHooks(HOOKS.script_path, HOOKS.map_path,
                                                                                    "f" * 16, 1000)}))
    assert structure_digest(one) != structure_digest(other)


def test_a_gateway_counts_every_answer_of_every_route_per_server() -> None:
    cfg = GatewayConfig(name="edge", admin_socket="/run/g.sock", listen=Address("127.0.0.1", 8080),
                        routes=(GatewayRoute("shop.local", "/", "shop"),),
                        backends=(Backend("shop", (Server("shop-1", Address("10.0.0.1", 20000)),)),), stats=HOOKS)
    front = render_gateway(cfg).split("\nbackend ")[0]
    assert "    http-request set-var(txn.ballast_t0) date(0,us)\n" in front
    assert COUNT_ANSWER in front


DUMP = """E 1796206402.729457
F inbound 120 0 100 0 5 15 0
F outbound 7 0 7 0 0 0 0
S app app 118 0 100 0 5 13 0 2 0
H app 3:90 18:20 43:3
"""


def test_a_dump_parses_into_counters_and_buckets() -> None:
    dump = parse_dump(DUMP)
    assert dump.epoch == "1796206402.729457"
    assert dump.frontends["inbound"] == ProxyCounters(120, (0, 100, 0, 5, 15, 0))
    assert dump.servers[("app", "app")] == ProxyCounters(118, (0, 100, 0, 5, 13, 0), econ=2, eresp=0)
    buckets = dump.latency["app"]
    assert (buckets[3], buckets[18], buckets[43], sum(buckets)) == (90, 20, 3, 113)


def test_an_instance_behind_its_sidecar_fails_what_its_callers_got_as_5xx() -> None:
    """HAProxy's own 502/503 for a refused or broken exchange reached the caller: an error, and a connection error."""
    c = sidecar_counts(parse_dump(DUMP))
    assert c is not None
    assert (c.requests, c.responses[FIVE], c.errors, c.conn_errors, c.answered) == (120, 15, 15, 2, 113)
    assert c.latency_sum == pytest.approx(estimated_sum(c.latency)) and c.latency_sum > 0
    assert sidecar_counts(parse_dump("E 1\nF outbound 0 0 0 0 0 0 0\n")) is None


def test_a_gateway_charges_an_instance_with_the_requests_it_never_answered() -> None:
    """A refused connection is retried elsewhere; it still was a request to, and an error of, that instance."""
    servers = stat_servers([
        {"pxname": "svc_shop", "svname": "shop-1", "req_tot": "50", "hrsp_2xx": "48", "hrsp_5xx": "2", "econ": "3",
         "eresp": "1"},
        {"pxname": "svc_shop", "svname": "BACKEND", "req_tot": "53"},
        {"pxname": "no_route", "svname": "x", "req_tot": "9"},
    ])
    dump = parse_dump("E 1\nH shop-1 3:48\n")
    got = gateway_counts(dump, servers)
    assert list(got) == [("svc_shop", "shop-1")]
    c = got[("svc_shop", "shop-1")]
    assert (c.requests, c.errors, c.conn_errors, c.answered) == (53, 6, 4, 48)


@pytest.mark.parametrize("text", [
    "", "F inbound 1 2 3\n", "E 1\nS app app x 0 0 0 0 0 0 0 0\n", "E 1\nH app 99:1\n", "E 1\nH app 3:x\n",
    "Unknown command\n",
])
def test_anything_but_a_dump_is_refused(text: str) -> None:
    with pytest.raises(DumpError):
        parse_dump(text)


def test_histogram_indexes_cover_every_bucket() -> None:
    assert parse_dump(f"E 1\nH a {BUCKETS - 1}:4\n").latency["a"][-1] == 4
