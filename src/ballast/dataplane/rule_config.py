"""TrafficRules and ColoringRules as HAProxy configuration. Pure, exact-text tested.

A governed service gets one backend per subset its rule names
(`svc_back~r2`), holding the endpoints of that subset; servers are runtime
state there as in every service backend. The frontend decides in steps, each
a variable, so every condition is evaluated once and in order:

1. `txn.route`: the first route of the caller's rule whose match holds;
2. `txn.pick`: for a weighted route, a point in [0, SCALE): the CRC32 of the
   sticky key when the call has one, else a random one;
3. `txn.dest`: the subset backend whose share holds the point;
4. a subset without a usable server falls back to the service's pool, or
   answers 503 naming the rule and route (`x-ballast-route`) when the route
   says `fallback: fail`.

The decisions are core/routing_rules.py's: `ballast traffic explain`
evaluates the same definitions. Values reach the text strongly quoted ('...'),
which the wire models guarantee they can be (no quote, no control character).

Coloring adds tags to the call's `baggage` header: the condition is taken
once into a variable (adding a tag must not change whether the rule matched),
a member with the same key is removed, and a header line with the new tags
is added. The gateway first removes the baggage of calls from outside
(`untrusted_baggage`), so no client colors its own calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ballast.core.routing_rules import SCALE, Subset, thresholds
from ballast.dataplane.config_text import quoted, safe
from ballast.dataplane.config_text import Address, Backend, Server
from ballast.wire.registry import Service
from ballast.wire.traffic import CallMatch, ColoringInEffect, RuleInEffect, StringMatch, TrafficRoute

ROUTE_HEADER = "x-ballast-route"
UNIT_HEADER = "x-ballast-unit"          # the business unit a call was made in: set by the caller's sidecar only
STRESS_TAG = ("stress", "true")        # the color of stress-test calls
DESTINATION = "    use_backend %[var(txn.dest)] if { var(txn.dest) -m found }\n"


def subset_backend_name(service: str, subset: Subset) -> str:
    return Backend(service, (), subset=subset.key).name


def subsets(rule: RuleInEffect) -> list[Subset]:
    """The distinct subsets the rule's routes name, in order of first mention."""
    out: list[Subset] = []
    for route in rule.spec.routes:
        for d in route.to:
            s = Subset.of(d)
            if s not in out:
                out.append(s)
    return out


def subset_backends(service: Service, rule: RuleInEffect, own_cell: str | None) -> tuple[Backend, ...]:
    """A backend per subset; with `own_cell` (a sidecar), other cells' endpoints are backups there too."""
    out = []
    for s in subsets(rule):
        servers = tuple(Server(e.id, Address(e.ip, e.port), backup=own_cell is not None and e.cell != own_cell,
                               enabled=e.ready) for e in service.endpoints if s.selects(e))
        out.append(Backend(service.name, servers, subset=s.key))
    return tuple(out)


def _text_condition(fetch: str, condition: StringMatch) -> str:
    if condition.present:
        return f"{{ {fetch} -m found }}"
    method, value = (("str", condition.exact) if condition.exact is not None else
                     ("beg", condition.prefix) if condition.prefix is not None else ("reg", condition.regex))
    assert value is not None
    return f"{{ {fetch} -m {method} {quoted(value)} }}"


def tag_condition(key: str, value: str) -> str:
    """A baggage member key=value (with optional properties), in any of the call's baggage headers."""
    pattern = rf"^\s*{re.escape(key)}\s*=\s*{re.escape(value)}\s*(;.*)?$"
    return f"{{ req.hdr(baggage) -m reg {quoted(pattern)} }}"


def match_conditions(match: CallMatch | None) -> list[str]:
    """Alternatives (joined by ||), each a list of ANDed conditions, as text; [""] matches every call."""
    if match is None:
        return [""]
    conds = [_text_condition(f"req.fhdr({safe(name)})", c) for name, c in match.headers.items()]
    conds += [tag_condition(k, v) for k, v in match.tags.items()]
    both = " ".join(conds)
    prefix = (match.path_prefix or "/").rstrip("/")
    if not prefix:
        return [both]
    return [f"{both} {{ path {quoted(prefix)} }}".strip(), f"{both} {{ path_beg {quoted(prefix + '/')} }}".strip()]


def _when(base: str, alternatives: list[str]) -> str:
    return " || ".join(f"{base} {alt}".strip() for alt in alternatives)


def _route_id(rule: RuleInEffect, route: TrafficRoute) -> str:
    return f"{safe(rule.name)}/{safe(route.name)}"


def weight_key(rule: RuleInEffect, route: TrafficRoute, index: int) -> str:
    return f"{_route_id(rule, route)}/{index}"


def weight_entries(rules: Iterable[tuple[str, RuleInEffect]]) -> dict[str, int]:
    """The weights map: each weighted route's cumulative bound of every destination but the last."""
    out = {}
    for _, rule in rules:
        for route in rule.spec.routes:
            if len(route.to) > 1:
                for index, bound in enumerate(thresholds(route)[:-1]):
                    out[weight_key(rule, route, index)] = bound
    return out


def render_weights_map(entries: dict[str, int]) -> str:
    return "".join(f"{safe(key)} {int(value)}\n" for key, value in sorted(entries.items()))


def render_rule(service: str, rule: RuleInEffect, weights_map: str | None = None) -> str:
    """The frontend lines that route calls to `service` (the value of txn.service) by `rule`. With `weights_map`
    the bounds of weighted routes are read from that map, which the runtime API changes in the running process
    (`set map`): a change of weights alone is no change of structure and needs no reload."""
    svc = safe(service)
    out = [f"    # traffic rule {safe(rule.name)} for {svc}\n"]
    for route in rule.spec.routes:
        base = f"{{ var(txn.service) -m str {svc} }} !{{ var(txn.route) -m found }}"
        out.append(f"    http-request set-var(txn.route) str({_route_id(rule, route)}) if "
                   f"{_when(base, match_conditions(route.match))}\n")
    for route in rule.spec.routes:
        on_route = f"{{ var(txn.route) -m str {_route_id(rule, route)} }}"
        names = [subset_backend_name(service, Subset.of(d)) for d in route.to]
        if len(route.to) > 1:
            out.append(f"    http-request set-var(txn.pick) rand({SCALE}) if {on_route}\n")
            if route.sticky_key is not None:
                fetch = (f"req.fhdr({safe(route.sticky_key.header)})" if route.sticky_key.header is not None
                         else f"req.cook({safe(route.sticky_key.cookie or '')})")
                out.append(f"    http-request set-var(txn.pick) {fetch},crc32,mod({SCALE}) if {on_route} "
                           f"{{ {fetch} -m found }}\n")
            for index, (name, bound) in enumerate(zip(names[:-1], thresholds(route)[:-1])):
                if weights_map is None:
                    below = f"{{ var(txn.pick) -m int lt {bound} }}"
                else:
                    out.append(f"    http-request set-var(txn.bound) str({weight_key(rule, route, index)}),"
                               f"map_str_int({safe(weights_map)},0) if {on_route}\n")
                    below = "{ var(txn.pick),sub(txn.bound) -m int lt 0 }"
                out.append(f"    http-request set-var(txn.dest) str({name}) if {on_route} {below} "
                           "!{ var(txn.dest) -m found }\n")
        out.append(f"    http-request set-var(txn.dest) str({names[-1]}) if {on_route} !{{ var(txn.dest) -m found }}\n")
        for name in dict.fromkeys(names):
            out.append(f"    http-request set-var(txn.empty) bool(true) if {on_route} "
                       f"{{ var(txn.dest) -m str {name} }} {{ nbsrv({name}) eq 0 }}\n")
        if route.fallback == "fail":
            out.append(f"    http-request return status 503 content-type text/plain hdr {ROUTE_HEADER} "
                       f"{_route_id(rule, route)} string \"ballast: no ready endpoint in the route's subset\" "
                       f"if {on_route} {{ var(txn.empty) -m found }} !{{ stopping }}\n")
    out.append(f"    http-request unset-var(txn.dest) if {{ var(txn.service) -m str {svc} }} "
               "{ var(txn.empty) -m found }\n")
    return "".join(out)


def untrusted_baggage(trusted: tuple[str, ...]) -> str:
    """The gateway drops the color of calls from outside (but from `trusted` networks): only marking sets it."""
    if not trusted:
        return "    http-request del-header baggage\n"
    return f"    http-request del-header baggage unless {{ src {' '.join(safe(n) for n in trusted)} }}\n"


def render_marking(rules: tuple[ColoringInEffect, ...]) -> str:
    out = []
    for index, rule in enumerate(rules):
        flag = f"txn.mark{index}"
        out.append(f"    # coloring rule {safe(rule.name)}\n")
        # A worker that is `stopping` hands requests to its successor, which marks them by its own rules.
        out.extend(f"    http-request set-var({flag}) bool(true) if {alt} !{{ stopping }}\n".replace(" if  !", " if !")
                   for alt in match_conditions(rule.spec.match))
        for key in rule.spec.tags:   # the marked value replaces one the call already had
            member = r"^(|.*?,)\s*" + re.escape(key) + r"\s*=[^,]*,?(.*)$"
            out.append(f"    http-request replace-header baggage {quoted(member)} '\\1\\2' "
                       f"if {{ var({flag}) -m found }}\n")
        tags = ",".join(f"{k}={v}" for k, v in rule.spec.tags.items())
        out.append(f"    http-request add-header baggage {quoted(tags)} if {{ var({flag}) -m found }}\n")
    return "".join(out)


@dataclass(frozen=True)
class ServiceUnits:
    """What the calls to one service need of its isolation groups: the caller's unit, stress-test confinement."""

    service: str
    own: str | None = None                  # the backend of the caller's unit in this service, if it has one
    own_strict: bool = False                # that group says its unit's calls never take the default pool
    stress: str = "allow"                   # whether the default pool takes stress-test calls
    stress_pool: str | None = None          # the backend of the groups that take them (deny only)
    takes_stress: tuple[str, ...] = ()      # subset backends of groups with stress: true
    refuses_stress: tuple[str, ...] = ()    # subset backends of groups without

    def matters(self, unit: str) -> bool:
        return bool(unit) or self.stress == "deny" or bool(self.refuses_stress)


@dataclass(frozen=True)
class UnitTables:
    code: str = ""                          # the caller's own unit; "" for the app's own instances and gateways
    convergence: str = "prefer"             # the caller's group: elsewhere, the default pool (prefer) or 503 (strict)
    services: tuple[ServiceUnits, ...] = ()

    @property
    def routes(self) -> bool:
        """The frontend picks backends by `txn.dest` for these (besides rules)."""
        return bool(self.code) or any(s.stress == "deny" or s.refuses_stress for s in self.services)


def _refuse(status_text: str, header: str, value: str, condition: str) -> str:
    return (f"    http-request return status 503 content-type text/plain hdr {header} {safe(value)} "
            f"string \"{status_text}\" if {condition} !{{ stopping }}\n")


def render_unit(units: UnitTables) -> str:
    """Self-convergence, before any rule: a call made in a unit goes to the callee's group of that unit.

    The unit header is the sidecar's alone: set on the calls of a group's instance, removed from any other's,
    so no app puts its calls into a unit by writing a header.
    """
    if not units.code:
        return f"    http-request del-header {UNIT_HEADER}\n"
    code = safe(units.code)
    out = [f"    http-request set-header {UNIT_HEADER} {code}\n"]
    strict_caller = units.convergence == "strict"
    missing = []
    for s in units.services:
        svc = f"{{ var(txn.service) -m str {safe(s.service)} }}"
        if s.own is None:
            missing.append(safe(s.service))
            continue
        out.append(f"    http-request set-var(txn.dest) str({s.own}) if {svc} {{ nbsrv({s.own}) gt 0 }}\n")
        if strict_caller or s.own_strict:
            out.append(_refuse(f"ballast: no ready instance in the isolation group of unit {code} of "
                               f"{safe(s.service)} (convergence: strict)", UNIT_HEADER, code,
                               f"{svc} {{ nbsrv({s.own}) eq 0 }}"))
    if strict_caller and missing:
        out.append(_refuse(f"ballast: the called service has no isolation group of unit {code} "
                           "(convergence: strict)", UNIT_HEADER, code,
                           f"{{ var(txn.service) -m str {' '.join(missing)} }}"))
    return "".join(out)


def render_stress_guard(units: UnitTables) -> str:
    """After every rule: a stress-test call never reaches instances that do not take it.

    An app that denies them sends them only to its groups with `stress: true` (503 when none is ready); an app
    that allows them keeps them off its groups without (its default pool takes them).
    """
    guarded = [s for s in units.services if s.stress == "deny" or s.refuses_stress]
    if not guarded:
        return ""
    out = [f"    http-request set-var(txn.stress) bool(true) if {tag_condition(*STRESS_TAG)}\n"]
    stress = "{ var(txn.stress) -m found }"
    for s in guarded:
        svc = f"{{ var(txn.service) -m str {safe(s.service)} }}"
        if s.stress == "deny":
            if s.stress_pool is None:
                out.append(_refuse(f"ballast: {safe(s.service)} takes no stress-test calls: it has no isolation "
                                   "group with stress: true", "x-ballast-stress", "denied", f"{svc} {stress}"))
                continue
            allowed = f" !{{ var(txn.dest) -m str {' '.join(s.takes_stress)} }}" if s.takes_stress else ""
            out.append(f"    http-request set-var(txn.dest) str({s.stress_pool}) if {svc} {stress}{allowed}\n")
            out.append(_refuse(f"ballast: {safe(s.service)} takes stress-test calls only in its isolation groups "
                               "with stress: true; none is ready", "x-ballast-stress", "denied",
                               f"{svc} {stress} {{ var(txn.dest) -m str {s.stress_pool} }} "
                               f"{{ nbsrv({s.stress_pool}) eq 0 }}"))
        else:
            out.append(f"    http-request unset-var(txn.dest) if {svc} {stress} "
                       f"{{ var(txn.dest) -m str {' '.join(s.refuses_stress)} }}\n")
    return "".join(out)
