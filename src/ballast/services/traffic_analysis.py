"""`traffic explain` and `traffic analyze`: rules evaluated against the registry as components have it. Pure.

`explain` runs core/routing_rules.py's decision, the one the data plane is rendered from, on the snapshot
components route by, with a unit's self-convergence before it and stress-test confinement after it, in the
data plane's order (dataplane/rule_config.py); `warnings` reports what is legal but probably not meant (a route no call can reach, a
subset with no endpoint, a rule another one shadows for some callers).
"""

from __future__ import annotations

from typing import Any, Mapping

from ballast.core.manifests import Manifest, TrafficRuleManifest
from ballast.core.routing_rules import Call, Subset, decide, rule_for, subset_endpoints
from ballast.errors import FieldProblem, InvalidInput, NotFound
from ballast.wire.registry import Service, Snapshot
from ballast.wire.traffic import CallMatch, TrafficRoute


def explain(snapshot: Snapshot, service: str, caller: str, *, path: str, headers: Mapping[str, str],
            tags: Mapping[str, str], cookies: Mapping[str, str], unit: str = "") -> dict[str, Any]:
    """Where a call from `caller` (an instance of its isolation group of code `unit`, if given) to `service` goes:
    self-convergence first, then the caller's rule, then stress-test confinement, as the data plane renders it."""
    found = next((s for s in snapshot.services if s.name == service), None)
    if found is None:
        raise NotFound(f"service {service!r} not found")
    calling = next((s for s in snapshot.services if s.name == caller), None)
    caller_group = calling.group(unit) if calling is not None and unit else None
    if unit and caller_group is None:
        raise InvalidInput("no such unit of the caller", problems=[FieldProblem(
            "unit", unit, f"the code of an isolation group of {caller!r}")])
    answer = _by_rule(found, caller, Call(path=path, headers=headers, tags=tags, cookies=cookies))
    answer.update({"service": service, "from": caller, "unit": unit or None, "generation": snapshot.generation})
    if caller_group is not None:
        own = found.group(unit)
        members = [e.id for e in found.endpoints if e.group == unit and e.ready]
        strict = caller_group.convergence == "strict" or (own is not None and own.convergence == "strict")
        if own is not None and members:
            answer.update(reason=f"self-convergence: a call made in unit {unit} goes to {service}'s group "
                                 f"{own.name!r}", endpoints=members, rule=None, route=None, destinations=[])
            answer["group"] = unit
        elif strict:
            what = (f"{service}'s group {own.name!r} has no ready instance" if own is not None
                    else f"{service} has no isolation group of unit {unit}")
            return {**answer, "reason": f"{what} and convergence is strict: 503", "endpoints": [],
                    "rule": None, "route": None, "destinations": []}
    if tags.get("stress") == "true":
        _confine_stress(found, answer)
    return answer


def _by_rule(found: Service, caller: str, call: Call) -> dict[str, Any]:
    decision = decide(found.rules, caller, call)
    pool = [e.id for e in found.endpoints if e.ready and e.default]
    answer: dict[str, Any] = {"rule": decision.rule.name if decision.rule else None,
                              "ruleGeneration": decision.rule.generation if decision.rule else None,
                              "route": decision.route.name if decision.route else None, "group": None}
    if decision.route is None:
        why = "no rule governs these calls" if decision.rule is None else "no route of the rule matches"
        answer.update(reason=f"{why}: the service's default pool", destinations=[], endpoints=pool)
        return answer
    destinations = []
    for index, (dest, share) in enumerate(zip(decision.route.to, decision.shares)):
        subset = Subset.of(dest)
        members = subset_endpoints(found.endpoints, subset)
        ready = [e.id for e in members if e.ready]
        destinations.append({"subset": subset.describe(), "revision": subset.revision,
                             "cells": list(subset.cells) if subset.cells else None, "group": subset.group or None,
                             "weight": dest.weight, "share": round(share, 6), "chosen": decision.side == index,
                             "endpoints": ready, "fallback": not ready})
    answer["destinations"] = destinations
    answer["fallback"] = decision.route.fallback
    if decision.side is not None:
        chosen = destinations[decision.side]
        if chosen["fallback"]:
            answer["reason"] = ("the chosen subset has no ready endpoint: "
                                + ("503" if decision.route.fallback == "fail" else "the service's default pool"))
            answer["endpoints"] = [] if decision.route.fallback == "fail" else pool
        else:
            answer["reason"] = f"route {decision.route.name!r} sends this call to {chosen['subset']}"
            answer["endpoints"] = chosen["endpoints"]
            answer["group"] = chosen["group"]
    else:
        answer["reason"] = "a weighted route: each call lands by the shares (no sticky key in this call)"
    return answer


def _confine_stress(found: Service, answer: dict[str, Any]) -> None:
    """A stress-test call never reaches instances that do not take it (rule_config.render_stress_guard)."""
    takes = {g.code for g in found.groups if g.stress}
    group = answer.get("group")
    if found.stress == "deny" and group not in takes:
        members = [e.id for e in found.endpoints if e.group in takes and e.ready]
        answer["endpoints"] = members
        answer["group"] = None
        answer["reason"] = (f"a stress-test call: {found.name} denies them to its default instances; its groups "
                            "with stress: true take it" if members else
                            f"a stress-test call: {found.name} denies them and no group with stress: true is "
                            "ready: 503")
    elif found.stress == "allow" and group and group not in takes:
        answer["endpoints"] = [e.id for e in found.endpoints if e.ready and e.default]
        answer["group"] = None
        answer["reason"] = f"a stress-test call: group {group} does not take them; the service's default pool does"


def _implied_by(earlier: CallMatch | None, later: CallMatch | None) -> bool:
    """Every call `later` matches is matched by `earlier` (a conservative check: earlier's conditions are a
    subset of later's, text for text)."""
    if earlier is None:
        return True
    if later is None:
        return False
    if earlier.path_prefix is not None and earlier.path_prefix.rstrip("/") and (
            later.path_prefix is None or not (later.path_prefix.rstrip("/") + "/").startswith(
                earlier.path_prefix.rstrip("/") + "/")):
        return False
    if any(later.tags.get(k) != v for k, v in earlier.tags.items()):
        return False
    later_headers = {k.lower(): v for k, v in later.headers.items()}
    return all(later_headers.get(k.lower()) == v for k, v in earlier.headers.items())


def _route_warnings(where: str, routes: list[TrafficRoute]) -> list[str]:
    out = []
    for i, route in enumerate(routes):
        for j in range(i):
            if _implied_by(routes[j].match, route.match):
                out.append(f"{where}.routes[{i}] ({route.name!r}) is never reached: every call it matches is "
                           f"taken by routes[{j}] ({routes[j].name!r}) first")
                break
    return out


def warnings(snapshot: Snapshot, manifests: list[Manifest]) -> list[str]:
    out = []
    services = {s.name: s for s in snapshot.services}
    for index, m in enumerate(manifests):
        if not isinstance(m, TrafficRuleManifest):
            continue
        where = f"items[{index}].spec"
        out += _route_warnings(where, m.spec.routes)
        service = services.get(m.spec.service)
        endpoints = service.endpoints if service is not None else ()
        for r, route in enumerate(m.spec.routes):
            for d, dest in enumerate(route.to):
                if isinstance(dest.revision, str):
                    continue
                subset = Subset.of(dest)
                if subset.group and (service is None or service.group(subset.group) is None):
                    out.append(f"{where}.routes[{r}].to[{d}]: {m.spec.service!r} has no isolation group of code "
                               f"{subset.group!r} (yet): its calls take "
                               + ("503" if route.fallback == "fail" else "the service's default pool"))
                    continue
                members = subset_endpoints(endpoints, subset)
                if not members:
                    out.append(f"{where}.routes[{r}].to[{d}]: {subset.describe()} selects no instance of "
                               f"{m.spec.service!r} now; its calls take "
                               + ("503" if route.fallback == "fail" else "the service's default pool"))
                elif not any(e.ready for e in members):
                    out.append(f"{where}.routes[{r}].to[{d}]: {subset.describe()} has no ready endpoint now")
        if service is not None:
            others = [rule for rule in service.rules if rule.name != m.metadata.name]
            if m.spec.callers() is None:
                for rule in others:
                    if rule.spec.callers():
                        out.append(f"{where}.from: for calls from {', '.join(rule.spec.callers() or ())} rule "
                                   f"{rule.name!r} applies instead (a caller's own rule wins)")
            else:
                everyone = rule_for([r for r in others if r.spec.callers() is None], "")
                if everyone is not None:
                    out.append(f"{where}.from: shadows rule {everyone.name!r} for calls from "
                               + ", ".join(m.spec.callers() or ()))
    return out
