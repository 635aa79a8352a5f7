"""What a TrafficRule decides for one call: the caller's own rule first, the first matching route, the side of a
weighted route — and a key only ever moves towards the side whose weight grew."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from ballast.core.routing_rules import (SCALE, Call, decide, matches, path_has_prefix, rule_for, side_at,
                                        sticky_point, thresholds)
from ballast.wire.traffic import CallMatch, RuleInEffect, TrafficRoute, TrafficRuleSpec


def rule(name: str, callers: list[str] | None = None, routes: list[dict] | None = None) -> RuleInEffect:
    spec = {"service": "back", "routes": routes or [{"name": "all", "to": [{"revision": 1}]}]}
    if callers:
        spec["from"] = {"apps": callers}
    return RuleInEffect(name=name, generation=1, spec=TrafficRuleSpec.model_validate(spec))


def test_the_callers_own_rule_beats_the_everyone_rule() -> None:
    everyone, mine = rule("everyone"), rule("front-only", ["front", "gateway"])
    assert rule_for([everyone, mine], "front") is mine
    assert rule_for([everyone, mine], "gateway") is mine
    assert rule_for([everyone, mine], "other") is everyone
    assert rule_for([mine], "other") is None


def test_paths_match_by_segments_and_headers_ignore_case_of_names() -> None:
    assert path_has_prefix("/api", "/api") and path_has_prefix("/api/x", "/api/")
    assert not path_has_prefix("/apix", "/api") and path_has_prefix("/anything", "/")
    m = CallMatch.model_validate({"headers": {"X-User": {"prefix": "ad"}, "x-trace": {"present": True},
                                              "x-v": {"regex": "^v[0-9]+$"}}, "tags": {"env": "gray"},
                                  "pathPrefix": "/api"})
    call = Call(path="/api/a", headers={"x-user": "admin", "x-trace": "", "x-v": "v2"}, tags={"env": "gray"})
    assert matches(m, call)
    assert not matches(m, Call(path="/api/a", headers={"x-user": "admin", "x-v": "v2"}, tags={"env": "gray"}))
    assert not matches(m, Call(path="/api/a", headers={"x-user": "admin", "x-trace": "", "x-v": "v2"},
                               tags={"env": "prod"}))


def test_first_matching_route_wins_and_shares_follow_weights() -> None:
    r = rule("r", routes=[{"name": "testers", "match": {"headers": {"x-g": {"exact": "t"}}}, "to": [{"revision": 2}]},
                          {"name": "split", "to": [{"revision": 1, "weight": 999}, {"revision": 2, "weight": 1}],
                           "stickyKey": {"header": "x-user"}}])
    assert decide([r], "front", Call(headers={"x-g": "t"})).route.name == "testers"   # type: ignore[union-attr]
    split = decide([r], "front", Call())
    assert split.route is not None and split.route.name == "split" and split.side is None
    assert split.shares == (0.999, 0.001)
    keyed = decide([r], "front", Call(headers={"x-user": "alice"}))
    assert keyed.side == side_at(keyed.route, zlib.crc32(b"alice") % SCALE)   # type: ignore[arg-type]
    assert sticky_point("alice") == zlib.crc32(b"alice") % SCALE, "the data plane's crc32,mod(SCALE)"


def route(weights: list[int]) -> TrafficRoute:
    return TrafficRoute.model_validate({"name": "r", "to": [{"revision": i + 1, "weight": w}
                                                            for i, w in enumerate(weights)]})


@given(st.integers(1, 5 * 10**5), st.integers(1, 5 * 10**5), st.integers(1, 5 * 10**5), st.integers(0, SCALE - 1))
def test_raising_a_weight_only_moves_keys_towards_the_bigger_side(old: int, new: int, grow: int, point: int) -> None:
    before = side_at(route([old, new]), point)
    after = side_at(route([old, new + grow]), point)
    assert after == before or (before, after) == (0, 1)
    assert thresholds(route([old, new]))[-1] == SCALE
