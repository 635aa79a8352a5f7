"""What a TrafficRule decides for one call. Pure.

The data plane (dataplane/rule_config.py) renders these same decisions into
HAProxy, and `ballast traffic explain` evaluates them here, so both read one
definition:

- the rule: among the rules governing a service, the one naming the caller app
  wins over the one naming no callers (apply refuses any other overlap);
- the route: the first whose match holds (every header condition, every tag,
  the path prefix by segments); a route without match takes every call;
- the side of a weighted route: a point in [0, SCALE) — the CRC32 of the sticky
  key when the call carries it, else a random one — against the cumulative
  thresholds of the weights. Raising one side's weight only moves the
  boundary, so a key only ever moves towards the side that grew;
- the subset: the service's endpoints of that revision (and cells); when none
  of them is ready the call takes the service's default pool, or gets 503 when
  the route says `fallback: fail`.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ballast.wire.registry import Endpoint
from ballast.wire.traffic import CallMatch, Destination, RuleInEffect, StringMatch, TrafficRoute

SCALE = 1_000_000     # the points a weighted route divides; 1/1000 is 1000 of them


@dataclass(frozen=True)
class Subset:
    revision: int | None = None
    cells: tuple[str, ...] | None = None
    group: str = ""      # an isolation group's code; "": the default pool

    @classmethod
    def of(cls, destination: Destination) -> "Subset":
        revision = destination.revision
        if not isinstance(revision, int) and revision is not None:
            raise ValueError(f"revision {revision!r} was not resolved to a number")
        return cls(revision, tuple(sorted(destination.cells)) if destination.cells else None,
                   destination.group or "")

    @property
    def key(self) -> str:
        """A name for it inside a backend name: r2, r2.c.cell-a.cell-b, c.cell-a, g.vostro.r2, or all."""
        parts = ([f"g.{self.group}"] if self.group else []) + (
            [f"r{self.revision}"] if self.revision is not None else []) + (["c", *self.cells] if self.cells else [])
        return ".".join(parts) or "all"

    def selects(self, endpoint: Endpoint) -> bool:
        """Only a subset naming a group selects that group's endpoints; others select the default pool's."""
        return (endpoint.group == self.group
                and (self.revision is None or endpoint.revision == self.revision)
                and (self.cells is None or endpoint.cell in self.cells))

    def describe(self) -> str:
        """revision 2 in cells cell-a; group vostro; group vostro at revision 2; any revision"""
        if self.group:
            words = [f"group {self.group}" + (f" at revision {self.revision}" if self.revision is not None else "")]
        else:
            words = [f"revision {self.revision}" if self.revision is not None else "any revision"]
        if self.cells:
            words.append("cells " + ", ".join(self.cells))
        return " in ".join(words)


@dataclass(frozen=True)
class Call:
    """What a call carries that rules can match: headers (names lower-cased), its color's tags, its path."""

    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)


def rule_for(rules: Iterable[RuleInEffect], caller: str) -> RuleInEffect | None:
    """The rule that governs `caller`'s calls: the one naming it, else the one naming no callers."""
    everyone = None
    for rule in rules:
        callers = rule.spec.callers()
        if callers is None:
            everyone = rule
        elif caller in callers:
            return rule
    return everyone


def path_has_prefix(path: str, prefix: str) -> bool:
    """/api matches /api and /api/x, not /apix; / matches every path."""
    trimmed = prefix.rstrip("/")
    return not trimmed or path == trimmed or path.startswith(trimmed + "/")


def _text_matches(condition: StringMatch, value: str | None) -> bool:
    if value is None:
        return False
    if condition.exact is not None:
        return value == condition.exact
    if condition.prefix is not None:
        return value.startswith(condition.prefix)
    if condition.regex is not None:
        return re.search(condition.regex, value) is not None   # HAProxy's -m reg is unanchored too
    return True   # present


def matches(match: CallMatch | None, call: Call) -> bool:
    if match is None:
        return True
    if match.path_prefix is not None and not path_has_prefix(call.path, match.path_prefix):
        return False
    if any(call.tags.get(k) != v for k, v in match.tags.items()):
        return False
    return all(_text_matches(c, call.headers.get(name.lower())) for name, c in match.headers.items())


def thresholds(route: TrafficRoute) -> list[int]:
    """Cumulative upper bounds in [0, SCALE] of each destination's points; the last is SCALE."""
    total = sum(d.weight for d in route.to)
    out, running = [], 0
    for d in route.to:
        running += d.weight
        out.append(running * SCALE // total)
    return out


def sticky_point(key: str) -> int:
    """Where a sticky key falls: HAProxy's `crc32,mod(SCALE)` of the same bytes."""
    return zlib.crc32(key.encode()) % SCALE


def sticky_value(route: TrafficRoute, call: Call) -> str | None:
    if route.sticky_key is None:
        return None
    if route.sticky_key.header is not None:
        return call.headers.get(route.sticky_key.header.lower())
    assert route.sticky_key.cookie is not None
    return call.cookies.get(route.sticky_key.cookie)


def side_at(route: TrafficRoute, point: int) -> int:
    """The destination whose share of [0, SCALE) holds `point`."""
    return next(i for i, bound in enumerate(thresholds(route)) if point < bound)


@dataclass(frozen=True)
class Decision:
    rule: RuleInEffect | None
    route: TrafficRoute | None
    side: int | None            # the destination chosen, when the call alone decides it (one side, or sticky)
    shares: tuple[float, ...]   # each destination's share of calls like this one

    @property
    def subsets(self) -> tuple[Subset, ...]:
        return tuple(Subset.of(d) for d in self.route.to) if self.route is not None else ()


def decide(rules: Iterable[RuleInEffect], caller: str, call: Call) -> Decision:
    rule = rule_for(rules, caller)
    if rule is None:
        return Decision(None, None, None, ())
    route = next((r for r in rule.spec.routes if matches(r.match, call)), None)
    if route is None:
        return Decision(rule, None, None, ())
    bounds = thresholds(route)
    shares = tuple((b - a) / SCALE for a, b in zip([0, *bounds[:-1]], bounds))
    key = sticky_value(route, call)
    if len(route.to) == 1:
        side: int | None = 0
    elif key is not None:
        side = side_at(route, sticky_point(key))
    else:
        side = None
    return Decision(rule, route, side, shares)


def subset_endpoints(endpoints: Iterable[Endpoint], subset: Subset) -> list[Endpoint]:
    return [e for e in endpoints if subset.selects(e)]


def fallback_needed(endpoints: Iterable[Endpoint], subset: Subset) -> bool:
    """No endpoint of the subset is ready: the route's calls take the default pool (or fail)."""
    return not any(e.ready for e in subset_endpoints(endpoints, subset))
