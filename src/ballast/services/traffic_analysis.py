"""`traffic explain` and `traffic analyze`: rules evaluated against the registry as components have it. Pure.

`explain` runs core/routing_rules.py's decision, the one the data plane is rendered from, on the snapshot
components route by; `warnings` reports what is legal but probably not meant (a route no call can reach, a
subset with no endpoint, a rule another one shadows for some callers).
"""

from __future__ import annotations

from typing import Any, Mapping

from ballast.core.manifests import Manifest, TrafficRuleManifest
from ballast.core.routing_rules import Call, Subset, decide, rule_for, subset_endpoints
from ballast.errors import NotFound
from ballast.wire.registry import Snapshot
from ballast.wire.traffic import CallMatch, TrafficRoute


def explain(snapshot: Snapshot, service: str, caller: str, *, path: str, headers: Mapping[str, str],
            tags: Mapping[str, str], cookies: Mapping[str, str]) -> dict[str, Any]:
    found = next((s for s in snapshot.services if s.name == service), None)
    if found is None:
        raise NotFound(f"service {service!r} not found")
    call = Call(path=path, headers=headers, tags=tags, cookies=cookies)
    decision = decide(found.rules, caller, call)
    pool = [e for e in found.endpoints if e.ready]
    answer: dict[str, Any] = {"service": service, "from": caller, "generation": snapshot.generation,
                              "rule": decision.rule.name if decision.rule else None,
                              "ruleGeneration": decision.rule.generation if decision.rule else None,
                              "route": decision.route.name if decision.route else None}
    if decision.route is None:
        why = "no rule governs these calls" if decision.rule is None else "no route of the rule matches"
        answer.update(reason=f"{why}: the service's default pool", destinations=[],
                      endpoints=[e.id for e in pool])
        return answer
    destinations = []
    for index, (dest, share) in enumerate(zip(decision.route.to, decision.shares)):
        subset = Subset.of(dest)
        members = subset_endpoints(found.endpoints, subset)
        ready = [e.id for e in members if e.ready]
        destinations.append({"subset": subset.describe(), "revision": subset.revision,
                             "cells": list(subset.cells) if subset.cells else None, "weight": dest.weight,
                             "share": round(share, 6), "chosen": decision.side == index,
                             "endpoints": ready, "fallback": not ready})
    answer["destinations"] = destinations
    answer["fallback"] = decision.route.fallback
    if decision.side is not None:
        chosen = destinations[decision.side]
        if chosen["fallback"]:
            answer["reason"] = ("the chosen subset has no ready endpoint: "
                                + ("503" if decision.route.fallback == "fail" else "the service's default pool"))
            answer["endpoints"] = [] if decision.route.fallback == "fail" else [e.id for e in pool]
        else:
            answer["reason"] = f"route {decision.route.name!r} sends this call to {chosen['subset']}"
            answer["endpoints"] = chosen["endpoints"]
    else:
        answer["reason"] = "a weighted route: each call lands by the shares (no sticky key in this call)"
    return answer


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
