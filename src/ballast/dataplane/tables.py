"""From a registry snapshot to server tables, and from tables to runtime-API commands. Pure.

A sidecar routes to every mesh service, preferring its own cell: endpoints of
other cells are `backup` servers, which HAProxy uses only when no endpoint of
the own cell is ready. The gateway routes to exposed services over all cells.
`runtime_commands` turns the difference between what a running HAProxy has
(`show servers state`) and what the snapshot wants into the commands that
close it, so applying is level-triggered: the same snapshot applied twice
issues nothing the second time.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Callable, Mapping

from ballast.dataplane.haproxy_config import SERVER_OPTIONS, Address, Backend, GatewayRoute, Server
from ballast.core.routing_rules import rule_for
from ballast.dataplane.rule_config import ServiceUnits, UnitTables, subset_backends
from ballast.wire.registry import Endpoint, Service, Snapshot
from ballast.wire.traffic import GATEWAY_CALLER, ColoringInEffect, RuleInEffect

FORCED_MAINT = 0x01    # srv_admin_state bit: maintenance set by the CLI (or `disabled` in the file)
INHERITED_MAINT = 0x02


@dataclass(frozen=True)
class LiveServer:
    """A server as a running HAProxy reports it."""

    name: str
    address: Address
    enabled: bool


@dataclass(frozen=True)
class RuleTables:
    """What a proxy routes by besides its service pools: the rules governing its calls and its marking."""

    backends: tuple[Backend, ...]                       # every pool, and every subset a rule names
    rules: tuple[tuple[str, RuleInEffect], ...] = ()
    marking: tuple[ColoringInEffect, ...] = ()
    units: UnitTables = UnitTables()


def _servers(service: Service, own_cell: str | None, keep: Callable[[Endpoint], bool]) -> tuple[Server, ...]:
    """With `own_cell` (a sidecar), other cells' endpoints are backups."""
    return tuple(Server(e.id, Address(e.ip, e.port), backup=own_cell is not None and e.cell != own_cell,
                        enabled=e.ready) for e in service.endpoints if keep(e))


def _service_tables(service: Service, caller: str | None, own_cell: str | None, unit: str,
                    backends: dict[str, Backend], rules: list[tuple[str, RuleInEffect]]) -> ServiceUnits | None:
    """The pool of `service` (its default instances only), the subsets its rule for `caller` names, and what
    the caller's unit and stress-test calls need of its isolation groups."""
    pool = Backend(service.name, _servers(service, own_cell, lambda e: e.default))
    backends[pool.name] = pool
    rule = rule_for(service.rules, caller) if caller is not None else None
    if rule is not None:
        rules.append((service.name, rule))
        backends.update((b.name, b) for b in subset_backends(service, rule, own_cell))
    own = service.group(unit) if unit else None
    if own is not None:
        b = Backend(service.name, _servers(service, own_cell, lambda e: e.group == unit), subset=f"g.{unit}")
        backends[b.name] = b
    stress_groups = {g.code for g in service.groups if g.stress}
    stress_pool = None
    if service.stress == "deny" and stress_groups:
        b = Backend(service.name, _servers(service, own_cell, lambda e: e.group in stress_groups), subset="stress")
        backends[b.name] = b
        stress_pool = b.name
    mine = [b for b in backends.values() if b.service == service.name and b.subset]
    takes_stress = tuple(sorted(b.name for b in mine if _group_of(b) in stress_groups))
    refuses_stress = tuple(sorted(b.name for b in mine if _group_of(b) and _group_of(b) not in stress_groups
                                  and b.subset != "stress"))
    units = ServiceUnits(service=service.name, own=backends_name(service.name, f"g.{unit}") if own else None,
                         own_strict=own is not None and own.convergence == "strict", stress=service.stress,
                         stress_pool=stress_pool, takes_stress=takes_stress, refuses_stress=refuses_stress)
    return units if units.matters(unit) else None


def _group_of(backend: Backend) -> str:
    """The group code of a subset backend (`g.CODE` or `g.CODE.r2...`); "" for the default pool's subsets."""
    parts = backend.subset.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "g" else ""


def backends_name(service: str, subset: str) -> str:
    return Backend(service, (), subset=subset).name


def sidecar_backends(snapshot: Snapshot, cell: str) -> tuple[Backend, ...]:
    return sidecar_tables(snapshot, cell, None).backends


def sidecar_tables(snapshot: Snapshot, cell: str, app: str | None, unit: str = "") -> RuleTables:
    """The backends, rules and marking of the sidecar of an instance of `app` (of isolation group `unit`, if any)
    in `cell`."""
    backends: dict[str, Backend] = {}
    rules: list[tuple[str, RuleInEffect]] = []
    services: list[ServiceUnits] = []
    convergence = "prefer"
    for service in snapshot.services:
        if app is not None and service.name == app and service.group(unit) is not None:
            convergence = service.group(unit).convergence  # type: ignore[union-attr]
        if not service.mesh:
            continue
        found = _service_tables(service, app, cell, unit, backends, rules)
        if found is not None:
            services.append(found)
    marking = tuple(c for c in snapshot.coloring if app is not None and app in c.spec.at.apps)
    units = UnitTables(code=unit, convergence=convergence, services=tuple(services))
    return RuleTables(tuple(backends.values()), tuple(rules), marking, units)


def gateway_tables(snapshot: Snapshot) -> tuple[tuple[GatewayRoute, ...], tuple[Backend, ...]]:
    tables = gateway_rule_tables(snapshot)
    return tables[0], tables[1].backends


def gateway_rule_tables(snapshot: Snapshot, *, every_mesh_service: bool = False) -> tuple[tuple[GatewayRoute, ...],
                                                                                         RuleTables]:
    """The gateway's routes, backends, rules and marking; with `every_mesh_service` also the pool and rules of
    each mesh service it does not expose (its scheduled-task frontend calls any of them)."""
    routes: list[GatewayRoute] = []
    backends: dict[str, Backend] = {}
    rules: list[tuple[str, RuleInEffect]] = []
    services: list[ServiceUnits] = []
    for service in snapshot.services:
        if not service.routes and not (every_mesh_service and service.mesh):
            continue
        routes.extend(GatewayRoute(r.host, r.path, service.name) for r in service.routes)
        found = _service_tables(service, GATEWAY_CALLER, None, "", backends, rules)
        if found is not None:
            services.append(found)
    marking = tuple(c for c in snapshot.coloring if GATEWAY_CALLER in c.spec.at.apps)
    return tuple(routes), RuleTables(tuple(backends.values()), tuple(rules), marking,
                                     UnitTables(services=tuple(services)))


def runtime_commands(desired: tuple[Backend, ...], live: Mapping[str, Mapping[str, LiveServer]]) -> list[str]:
    """Commands that make the live servers of each desired backend what the snapshot says.

    New servers are added (they start in maintenance) and then enabled; gone ones are put in
    maintenance and deleted (HAProxy refuses the deletion while connections remain; the next
    apply tries again, and a server in maintenance gets no traffic meanwhile).
    """
    commands: list[str] = []
    for backend in desired:
        have = live.get(backend.name, {})
        want = {s.name: s for s in backend.servers}
        for name in sorted(want):
            s = want[name]
            ref = f"{backend.name}/{s.name}"
            current = have.get(name)
            if current is None:
                commands.append(f"add server {ref} {s.address} {SERVER_OPTIONS}" + (" backup" if s.backup else ""))
                if s.enabled:
                    commands.append(f"set server {ref} state ready")
                continue
            if current.address != s.address:
                commands.append(f"set server {ref} addr {s.address.ip} port {s.address.port}")
            if current.enabled != s.enabled:
                commands.append(f"set server {ref} state {'ready' if s.enabled else 'maint'}")
        for name in sorted(set(have) - set(want)):
            ref = f"{backend.name}/{name}"
            if have[name].enabled:
                commands.append(f"set server {ref} state maint")
            commands.append(f"del server {ref}")
    return commands


def map_commands(path: str, desired: Mapping[str, int], live: Mapping[str, str]) -> list[str]:
    """Commands that make a running map (`show map`) hold `desired`: weights change in place, no reload."""
    commands = []
    for key in sorted(desired):
        value = str(int(desired[key]))
        if key not in live:
            commands.append(f"add map {path} {key} {value}")
        elif live[key] != value:
            commands.append(f"set map {path} {key} {value}")
    commands.extend(f"del map {path} {key}" for key in sorted(set(live) - set(desired)))
    return commands


def parse_map(text: str) -> dict[str, str]:
    """`show map FILE` lines ("0x55d1c0 key value") → {key: value}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("0x"):
            out[parts[1]] = parts[2]
    return out


def parse_servers_state(text: str) -> dict[str, dict[str, LiveServer]]:
    """`show servers state` → {backend: {server: LiveServer}}."""
    out: dict[str, dict[str, LiveServer]] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# be_id"):
            header = line[2:].split()
            continue
        if not line.strip() or line.startswith("#") or header is None or line.strip() == "1":
            continue
        fields = dict(zip(header, line.split()))
        if "srv_name" not in fields:
            continue
        admin = int(fields["srv_admin_state"])
        server = LiveServer(fields["srv_name"], Address(fields["srv_addr"], int(fields["srv_port"])),
                            enabled=not admin & (FORCED_MAINT | INHERITED_MAINT))
        out.setdefault(fields["be_name"], {})[server.name] = server
    return out


def parse_stat(text: str) -> list[dict[str, str]]:
    """`show stat` CSV → one dict per proxy/server row, keyed by the header's field names."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    return [row for row in reader if row.get("pxname")]


@dataclass(frozen=True)
class Inflight:
    busy: int           # requests being served by the app or queued for it
    total: int          # requests the inbound side has received, ever (to notice new arrivals)


def inbound_inflight(stat_rows: list[dict[str, str]]) -> Inflight:
    """Requests a sidecar's inbound side is handling, from `show stat` rows."""
    def num(row: dict[str, str] | None, field: str) -> int:
        value = (row or {}).get(field) or "0"
        return int(value) if value.isdigit() else 0
    rows = {(r["pxname"], r["svname"]): r for r in stat_rows}
    server, backend, frontend = rows.get(("app", "app")), rows.get(("app", "BACKEND")), rows.get(("inbound", "FRONTEND"))
    return Inflight(busy=num(server, "scur") + num(backend, "qcur"), total=num(frontend, "req_tot"))

