"""Spec of the data plane's pure tables: locality, runtime-API commands as a diff, and HAProxy's answers parsed."""

from __future__ import annotations

from ballast.dataplane.haproxy_config import Address, Backend, Server
from ballast.wire.registry import Snapshot
from ballast.dataplane.tables import (LiveServer, gateway_tables, inbound_inflight, parse_servers_state, parse_stat,
                                      runtime_commands, sidecar_backends)

SNAPSHOT = Snapshot.from_json({"generation": 7, "services": [
    {"name": "back", "mesh": True, "routes": [], "endpoints": [
        {"id": "back-a", "ip": "10.0.0.1", "port": 20000, "cell": "cell-a", "zone": "za", "state": "ready"},
        {"id": "back-b", "ip": "10.0.0.2", "port": 20000, "cell": "cell-b", "zone": "zb", "state": "draining"}]},
    {"name": "front", "mesh": True, "routes": [{"host": "shop.local", "path": "/"}], "endpoints": []},
    {"name": "batch", "mesh": False, "routes": [], "endpoints": []},
]})


def test_a_sidecar_prefers_its_own_cell_and_keeps_draining_endpoints_in_maintenance() -> None:
    back = {b.service: b for b in sidecar_backends(SNAPSHOT, "cell-a")}["back"]
    assert back.servers == (Server("back-a", Address("10.0.0.1", 20000), backup=False, enabled=True),
                            Server("back-b", Address("10.0.0.2", 20000), backup=True, enabled=False))
    from_b = {b.service: b for b in sidecar_backends(SNAPSHOT, "cell-b")}["back"]
    assert [(s.name, s.backup) for s in from_b.servers] == [("back-a", True), ("back-b", False)]


def test_only_mesh_services_reach_sidecars_and_only_routed_ones_the_gateway() -> None:
    assert [b.service for b in sidecar_backends(SNAPSHOT, "cell-a")] == ["back", "front"]
    routes, backends = gateway_tables(SNAPSHOT)
    assert [(r.host, r.path, r.service) for r in routes] == [("shop.local", "/", "front")]
    assert [b.service for b in backends] == ["front"]
    assert all(not s.backup for b in backends for s in b.servers), "the gateway balances over every cell"


def _live(*servers: tuple[str, str, int, bool]) -> dict[str, dict[str, LiveServer]]:
    return {"svc_back": {n: LiveServer(n, Address(ip, port), enabled) for n, ip, port, enabled in servers}}


DESIRED = (Backend("back", (Server("b1", Address("10.0.0.1", 1)), Server("b2", Address("10.0.0.2", 1), backup=True),
                            Server("b3", Address("10.0.0.3", 1), enabled=False))),)


def test_runtime_commands_add_enable_disable_and_delete() -> None:
    live = _live(("b1", "10.0.0.1", 1, False), ("b3", "10.0.0.3", 1, True), ("gone", "10.0.0.9", 1, True))
    assert runtime_commands(DESIRED, live) == [
        "set server svc_back/b1 state ready",
        "add server svc_back/b2 10.0.0.2:1 pool-purge-delay 30s backup",
        "set server svc_back/b2 state ready",
        "set server svc_back/b3 state maint",
        "set server svc_back/gone state maint",
        "del server svc_back/gone",
    ]


def test_runtime_commands_are_level_triggered() -> None:
    settled = _live(("b1", "10.0.0.1", 1, True), ("b2", "10.0.0.2", 1, True), ("b3", "10.0.0.3", 1, False))
    assert runtime_commands(DESIRED, settled) == [], "applying the same snapshot twice issues nothing"


def test_a_moved_server_gets_its_new_address() -> None:
    live = _live(("b1", "10.0.0.7", 2, True), ("b2", "10.0.0.2", 1, True), ("b3", "10.0.0.3", 1, False))
    assert runtime_commands(DESIRED, live) == ["set server svc_back/b1 addr 10.0.0.1 port 1"]


SERVERS_STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 svc_back 1 b1 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 18081 - 0 0 - - 0
4 svc_back 2 b2 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 18082 - 0 0 - - 0
4 svc_back 3 b3 127.0.0.1 2 4 1 1 2 1 0 2 0 0 0 0 - 18083 - 0 0 - - 0

"""


def test_servers_state_is_read_as_haproxy_2_6_prints_it() -> None:
    """Admin state 5 (config `disabled` and forced maintenance) is off; 4 (config bit only, after `state ready`) is on."""
    assert parse_servers_state(SERVERS_STATE) == {"svc_back": {
        "b1": LiveServer("b1", Address("127.0.0.1", 18081), enabled=False),
        "b2": LiveServer("b2", Address("127.0.0.1", 18082), enabled=True),
        "b3": LiveServer("b3", Address("127.0.0.1", 18083), enabled=True)}}


STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,req_tot
inbound,FRONTEND,,,3,5,4096,90,120
app,app,0,0,2,4,,80,
app,BACKEND,1,1,2,4,410,80,
outbound,FRONTEND,,,0,0,4096,0,0
"""


def test_in_flight_is_what_the_app_serves_plus_what_waits_for_it() -> None:
    rows = parse_stat(STAT)
    assert len(rows) == 4
    flight = inbound_inflight(rows)
    assert (flight.busy, flight.total) == (3, 120), "idle keep-alive connections (frontend scur) do not count"
