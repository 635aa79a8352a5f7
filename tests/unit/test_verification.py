"""Spec of release verification as values: the traffic checks, the verdict, the external checks and the window.

Revision 2 is the canary (the new revision), revision 1 the baseline (the old one). Response times are built so
that p99 lands exactly on a bucket bound: 99% of the answers within `p99_ms`, 1% slower than anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from ballast.core.manifests import stored_strategy, strategy_json
from ballast.core.release_plan import Strategy
from ballast.core.request_metrics import (
    BUCKETS,
    CLASSES,
    Counts,
    Series,
    bucket_of,
    summarize,
)
from ballast.core.verification import (
    Check,
    OnFailure,
    Outcome,
    PromCheck,
    Side,
    SourceTotals,
    Verdict,
    Verification,
    Webhook,
    judge,
    prometheus_check,
    promql,
    sides,
    traffic_checks,
    webhook_check,
)

CANARY, BASELINE = 2, 1
SECONDS = 30.0
P, F, I, S = Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE, Outcome.SKIPPED


def counts(requests: int, errors: int = 0, p99_ms: float | None = 20.0) -> Counts:
    """`requests`, `errors` of them 5xx; every request answered, p99 exactly `p99_ms` (None: no answer timed)."""
    responses = [0] * len(CLASSES)
    responses[CLASSES.index("2xx")] = requests - errors
    responses[CLASSES.index("5xx")] = errors
    latency = [0] * BUCKETS
    if p99_ms is not None:
        latency[bucket_of(p99_ms)] = requests - requests // 100
        latency[-1] += requests // 100
    return Counts(requests=requests, responses=tuple(responses), errors=errors, latency=tuple(latency))


def canary(c: Counts) -> Side:
    return Side(CANARY, ("a0", "b0"), c, SECONDS)


def baseline(c: Counts | None) -> Side | None:
    return Side(BASELINE, ("a1", "b1"), c, SECONDS) if c is not None else None


def only(**fields: Any) -> Verification:
    """A verification with just the named traffic checks (maxErrorRate is on by default; here it is off unless named)."""
    return Verification(**{"max_error_rate": None, **fields})


@pytest.mark.parametrize(("requests", "errors", "p99", "rate", "p99_ms"), [
    (100, 1, 20.0, 1.0, 20.0),
    (200, 3, 40.0, 1.5, 40.0),
    (1000, 0, 120.0, 0.0, 120.0),
])
def test_the_counts_helper_means_what_the_tables_say(requests: int, errors: int, p99: float, rate: float,
                                                     p99_ms: float) -> None:
    """The tables below rely on this: the error rate and p99 of `counts(...)` are exactly the numbers given."""
    summary = summarize(counts(requests, errors, p99), SECONDS)
    assert (summary.requests, summary.error_rate, summary.p99_ms) == (requests, rate, p99_ms)


# --- traffic checks --------------------------------------------------------------------------------------------------

ALL_TRAFFIC = {"max_error_rate": 1.0, "max_error_rate_increase": 1.0, "max_p99_ms": 100.0, "max_p99_ratio": 2.0}

TRAFFIC: list[Any] = [
    # minRequests
    pytest.param(Verification(**ALL_TRAFFIC), counts(99, errors=50, p99_ms=5000), counts(1000),
                 {"requests": I, "error rate": S, "error rate vs baseline": S, "p99": S, "p99 vs baseline": S},
                 id="99 of 100 requests: inconclusive, every other traffic check skipped however bad"),
    pytest.param(only(max_p99_ms=100.0, max_p99_ratio=2.0), counts(99, p99_ms=None), counts(1000),
                 {"requests": I, "p99": S, "p99 vs baseline": S},
                 id="too few requests and none timed: the p99 checks are skipped, not a second inconclusive"),
    pytest.param(Verification(), counts(100), None, {"requests": P, "error rate": P},
                 id="exactly minRequests is enough; the default checks only the error rate"),
    pytest.param(Verification(min_requests=1000), counts(999), None, {"requests": I, "error rate": S},
                 id="minRequests is the configured number, not the default"),
    # maxErrorRate
    pytest.param(Verification(), counts(100, errors=0), None, {"requests": P, "error rate": P},
                 id="no errors: pass"),
    pytest.param(Verification(max_error_rate=1.0), counts(100, errors=1), None, {"requests": P, "error rate": P},
                 id="1% at a 1% limit: pass (the limit is inclusive)"),
    pytest.param(Verification(max_error_rate=1.0), counts(100, errors=2), None, {"requests": P, "error rate": F},
                 id="2% at a 1% limit: fail"),
    pytest.param(Verification(max_error_rate=1.5), counts(200, errors=3), None, {"requests": P, "error rate": P},
                 id="1.5% at a 1.5% limit: pass"),
    pytest.param(Verification(max_error_rate=1.5), counts(200, errors=4), None, {"requests": P, "error rate": F},
                 id="2% at a 1.5% limit: fail"),
    pytest.param(Verification(max_error_rate=0.0), counts(1000, errors=1), None, {"requests": P, "error rate": F},
                 id="a 0% limit fails on a single error"),
    pytest.param(Verification(max_error_rate=0.0), counts(1000, errors=0), None, {"requests": P, "error rate": P},
                 id="a 0% limit passes without errors"),
    pytest.param(only(max_p99_ms=1000.0), counts(100, errors=100), None, {"requests": P, "p99": P},
                 id="maxErrorRate null: no error-rate check at all"),
    # maxErrorRateIncrease
    pytest.param(only(max_error_rate_increase=0.5), counts(200, errors=4), None,
                 {"requests": P, "error rate vs baseline": S}, id="increase without a baseline: skipped"),
    pytest.param(only(max_error_rate_increase=0.5), counts(200, errors=4), counts(99),
                 {"requests": P, "error rate vs baseline": I}, id="increase with a baseline of 99 requests: inconclusive"),
    pytest.param(only(max_error_rate_increase=0.5), counts(200, errors=3), counts(100, errors=1),
                 {"requests": P, "error rate vs baseline": P}, id="1.5% vs 1%: 0.5 points at a 0.5 limit, pass"),
    pytest.param(only(max_error_rate_increase=0.5), counts(200, errors=4), counts(100, errors=1),
                 {"requests": P, "error rate vs baseline": F}, id="2% vs 1%: 1 point above a 0.5 limit, fail"),
    pytest.param(only(max_error_rate_increase=0.5), counts(100, errors=1), counts(1000, errors=0),
                 {"requests": P, "error rate vs baseline": F}, id="1% vs 0%: fail"),
    pytest.param(only(max_error_rate_increase=0.5), counts(100, errors=10), counts(100, errors=10),
                 {"requests": P, "error rate vs baseline": P}, id="10% vs 10%: no increase, pass"),
    pytest.param(only(max_error_rate_increase=0.0), counts(100, errors=1), counts(100, errors=5),
                 {"requests": P, "error rate vs baseline": P}, id="better than the baseline: pass"),
    pytest.param(Verification(max_error_rate=1.0, max_error_rate_increase=20.0), counts(100, errors=10),
                 counts(100, errors=10), {"requests": P, "error rate": F, "error rate vs baseline": P},
                 id="the absolute limit still applies when the baseline is as bad"),
    # maxP99Ms
    pytest.param(only(max_p99_ms=100.0), counts(100, p99_ms=50), None, {"requests": P, "p99": P}, id="p99 50 at 100"),
    pytest.param(only(max_p99_ms=100.0), counts(100, p99_ms=100), None, {"requests": P, "p99": P},
                 id="p99 100 at 100: pass (inclusive)"),
    pytest.param(only(max_p99_ms=100.0), counts(100, p99_ms=120), None, {"requests": P, "p99": F},
                 id="p99 120 at 100: fail"),
    pytest.param(only(max_p99_ms=100.0), counts(100, p99_ms=None), None, {"requests": P, "p99": I},
                 id="enough requests but no answer timed: inconclusive"),
    # maxP99Ratio (p99FloorMs 10 unless given)
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=40), counts(100, p99_ms=20),
                 {"requests": P, "p99 vs baseline": P}, id="40 vs 20 ms at 2x: pass (inclusive)"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=50), counts(100, p99_ms=20),
                 {"requests": P, "p99 vs baseline": F}, id="50 vs 20 ms at 2x: fail"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=15), counts(100, p99_ms=1),
                 {"requests": P, "p99 vs baseline": P}, id="15 vs 1 ms: the baseline counts as the 10 ms floor, pass"),
    pytest.param(only(max_p99_ratio=2.0, p99_floor_ms=0.0), counts(100, p99_ms=15), counts(100, p99_ms=1),
                 {"requests": P, "p99 vs baseline": F}, id="15 vs 1 ms without a floor: fail"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=25), counts(100, p99_ms=1),
                 {"requests": P, "p99 vs baseline": F}, id="25 vs 1 ms: above twice the floor, fail"),
    pytest.param(only(max_p99_ratio=2.0, p99_floor_ms=30.0), counts(100, p99_ms=25), counts(100, p99_ms=1),
                 {"requests": P, "p99 vs baseline": P}, id="25 vs 1 ms under a 30 ms floor: both count as 30, pass"),
    pytest.param(only(max_p99_ratio=1.0), counts(100, p99_ms=5), counts(100, p99_ms=0.5),
                 {"requests": P, "p99 vs baseline": P}, id="5 vs 0.5 ms at 1x: both under the floor, pass"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=40), None,
                 {"requests": P, "p99 vs baseline": S}, id="ratio without a baseline: skipped"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=40), counts(99, p99_ms=20),
                 {"requests": P, "p99 vs baseline": I}, id="ratio with a baseline of 99 requests: inconclusive"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=None), counts(100, p99_ms=20),
                 {"requests": P, "p99 vs baseline": I}, id="ratio, canary answers not timed: inconclusive"),
    pytest.param(only(max_p99_ratio=2.0), counts(100, p99_ms=20), counts(100, p99_ms=None),
                 {"requests": P, "p99 vs baseline": I}, id="ratio, baseline answers not timed: inconclusive"),
]


@pytest.mark.parametrize(("v", "new", "old", "expected"), TRAFFIC)
def test_traffic_checks(v: Verification, new: Counts, old: Counts | None, expected: dict[str, Outcome]) -> None:
    """Each configured traffic check, and only those, comes out pass, fail, inconclusive or skipped as the spec says."""
    checks = traffic_checks(v, canary(new), baseline(old))
    assert {c.name: c.outcome for c in checks} == expected


def test_traffic_checks_say_why_they_did_not_decide() -> None:
    """A skipped or inconclusive check carries the reason a person reads in the release status."""
    v = Verification(**ALL_TRAFFIC)
    few = {c.name: c for c in traffic_checks(v, canary(counts(99)), baseline(counts(1000)))}
    assert few["requests"].observed == "99 to revision 2 in 30s"
    assert few["requests"].limit == "at least 100 for a verdict"
    assert few["error rate"].detail == "too few requests for a verdict"

    alone = {c.name: c for c in traffic_checks(v, canary(counts(100)), None)}
    assert "no instance of the previous revision" in alone["error rate vs baseline"].detail
    thin = {c.name: c for c in traffic_checks(v, canary(counts(100)), baseline(counts(99)))}
    assert "99 requests, fewer than 100" in thin["p99 vs baseline"].detail


def test_traffic_checks_show_the_numbers_they_judged() -> None:
    """Observed values and limits are written for people: percentages, counts, milliseconds, the baseline revision."""
    v = Verification(max_error_rate=1.0, max_error_rate_increase=0.5, max_p99_ms=100.0)
    by_name = {c.name: c for c in traffic_checks(v, canary(counts(200, errors=4, p99_ms=120)),
                                                 baseline(counts(100, errors=1)))}
    assert (by_name["error rate"].observed, by_name["error rate"].limit) == ("2.00% (4 of 200)", "at most 1%")
    assert by_name["error rate vs baseline"].observed == "2.00% vs 1.00% (revision 1)"
    assert (by_name["p99"].observed, by_name["p99"].limit) == ("120.0 ms", "at most 100 ms")


# --- the verdict -----------------------------------------------------------------------------------------------------

NAMES = ("alpha", "bravo", "charlie", "delta")

JUDGE = [
    pytest.param([P, P], Verdict.PASSED, ("alpha", "bravo"), id="all pass: passed"),
    pytest.param([P, S], Verdict.PASSED, ("alpha",), id="pass and skipped: passed, naming the passes"),
    pytest.param([P, I], Verdict.INCONCLUSIVE, ("bravo",), id="one undecided: inconclusive"),
    pytest.param([I, P, I], Verdict.INCONCLUSIVE, ("alpha", "charlie"), id="every undecided check is named"),
    pytest.param([P, F], Verdict.FAILED, ("bravo",), id="one fail: failed"),
    pytest.param([I, F, P, F], Verdict.FAILED, ("bravo", "delta"), id="a fail outweighs an inconclusive"),
    pytest.param([F, S], Verdict.FAILED, ("alpha",), id="fail and skipped: failed"),
]


@pytest.mark.parametrize(("outcomes", "verdict", "decisive"), JUDGE)
def test_judge(outcomes: list[Outcome], verdict: Verdict, decisive: tuple[str, ...]) -> None:
    """Any fail fails; else any inconclusive leaves it inconclusive; else passed. The summary names the decisive
    checks, and only those."""
    checks = [Check(name, o, f"seen-{name}", f"limit-{name}") for name, o in zip(NAMES, outcomes)]
    judgement = judge(checks)
    assert judgement.verdict is verdict
    assert judgement.checks == tuple(checks)
    assert judgement.summary.startswith(f"{verdict.value}: ")
    named = tuple(n for n in NAMES if n in judgement.summary)
    assert named == decisive, judgement.summary


def test_the_summary_shows_what_was_observed_against_which_limit_and_why() -> None:
    """Each decisive check reads `name observed (limit: detail)`, joined by semicolons."""
    judgement = judge([Check("requests", P, "500 to revision 2 in 30s", "at least 100 for a verdict"),
                       Check("data", I, "1 of 2 source(s) read", "every node hosting the app answers",
                             "unreadable: node-b (timeout)"),
                       Check("webhook http://x", I, "no answer (ConnectError)", "answers 2xx")])
    assert judgement.summary == ("inconclusive: data 1 of 2 source(s) read (every node hosting the app answers: "
                                 "unreadable: node-b (timeout)); webhook http://x no answer (ConnectError) "
                                 "(answers 2xx)")


# --- webhooks --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "outcome"), [
    (200, P), (204, P), (299, P),
    (199, F), (301, F), (404, F), (500, F), (503, F),
    (None, I),
])
def test_a_webhook_must_answer_2xx(status: int | None, outcome: Outcome) -> None:
    """2xx passes, any other status fails, no answer cannot decide."""
    check = webhook_check("http://checks.local/verify", status, "ConnectError after 3 attempt(s)")
    assert check.outcome is outcome
    assert check.name == "webhook http://checks.local/verify"


def test_a_webhook_that_did_not_answer_says_why() -> None:
    """The transport error is shown, so a person can tell an outage from a refusal."""
    assert webhook_check("http://x", None, "ReadTimeout").observed == "no answer (ReadTimeout)"
    assert webhook_check("http://x", 503).observed == "answered 503"


# --- PromQL ----------------------------------------------------------------------------------------------------------

VARIABLES = {"app": "shop", "revision": "2", "baseline": "1", "window": "30s"}


@pytest.mark.parametrize(("query", "variables", "expected"), [
    ('rate(errors{app="$app",revision="$revision"}[$window])', VARIABLES,
     'rate(errors{app="shop",revision="2"}[30s])'),
    ('p99{revision="$revision"} / p99{revision="$baseline"}', VARIABLES, 'p99{revision="2"} / p99{revision="1"}'),
    ("$app $app", VARIABLES, "shop shop"),
    ("up{job=$job}", VARIABLES, "up{job=$job}"),
    ("sum(x)", VARIABLES, "sum(x)"),
    ("$baseline/$b", {"b": "BEE", "baseline": "1"}, "1/BEE"),
    ("$baseline/$b", {"baseline": "1", "b": "BEE"}, "1/BEE"),
    ("$windows", {"window": "30s", "windows": "W"}, "W"),
])
def test_promql_substitutes_the_variables_longest_name_first(query: str, variables: Mapping[str, str],
                                                              expected: str) -> None:
    """$app, $revision, $baseline and $window are replaced; a shorter name never eats the start of a longer one."""
    assert promql(query, variables) == expected


# --- Prometheus answers ----------------------------------------------------------------------------------------------

def scalar(value: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "scalar", "result": [1_700_000_000.0, value]}}


def vector(*values: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"instance": f"i{n}"}, "value": [1_700_000_000.0, v]} for n, v in enumerate(values)]}}


AT_MOST_1 = PromCheck("errors", "q", max=1.0)
BETWEEN = PromCheck("ratio", "q", min=0.5, max=2.0)
AT_LEAST_10 = PromCheck("rps", "q", min=10.0)

PROMETHEUS = [
    pytest.param(AT_MOST_1, scalar("0.5"), "", P, "0.5", id="scalar within max"),
    pytest.param(AT_MOST_1, scalar("1"), "", P, "1", id="scalar at max: pass"),
    pytest.param(AT_MOST_1, scalar("1.01"), "", F, "1.01", id="scalar above max"),
    pytest.param(AT_LEAST_10, scalar("10"), "", P, "10", id="scalar at min: pass"),
    pytest.param(AT_LEAST_10, scalar("9.5"), "", F, "9.5", id="scalar below min"),
    pytest.param(BETWEEN, vector("0.5", "1", "2"), "", P, "0.5, 1, 2", id="vector, every value within [min, max]"),
    pytest.param(BETWEEN, vector("1", "2.5"), "", F, "1, 2.5", id="vector, one value above max"),
    pytest.param(BETWEEN, vector("0.4", "1"), "", F, "0.4, 1", id="vector, one value below min"),
    pytest.param(AT_MOST_1, vector("+Inf"), "", F, "inf", id="+Inf exceeds any max"),
    pytest.param(AT_MOST_1, vector("0", "0", "0", "0", "0", "2"), "", F, "0, 0, 0, 0, 0 …",
                 id="more than five values: five shown, the sixth still judged"),
    pytest.param(AT_MOST_1, vector(), "", I, "no data (empty result)", id="empty vector: inconclusive"),
    pytest.param(AT_MOST_1, scalar("NaN"), "", I, "NaN", id="NaN scalar: inconclusive"),
    pytest.param(AT_MOST_1, vector("0.1", "NaN"), "", I, "NaN", id="a NaN among values: inconclusive"),
    pytest.param(AT_MOST_1, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}, "", I,
                 "query failed: parse error at char 5", id="status error: inconclusive, with Prometheus' message"),
    pytest.param(AT_MOST_1, {"status": "error"}, "", I, "query failed: not a Prometheus answer",
                 id="status error without a message"),
    pytest.param(AT_MOST_1, ["not", "a", "mapping"], "", I, "not a Prometheus answer", id="not a JSON object"),
    pytest.param(AT_MOST_1, None, "http://prom:9090/api/v1/query: ConnectError", I,
                 "no answer (http://prom:9090/api/v1/query: ConnectError)", id="no answer: inconclusive"),
    pytest.param(AT_MOST_1, scalar("0.5"), "timeout", I, "no answer (timeout)",
                 id="an error wins over whatever body came with it"),
    pytest.param(AT_MOST_1, {"status": "success", "data": {"resultType": "matrix", "result": []}}, "", I,
                 "a matrix result; expected an instant vector or a scalar", id="a range (matrix) result"),
    pytest.param(AT_MOST_1, {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}, "",
                 I, "unreadable result", id="vector item without a value: unreadable"),
    pytest.param(AT_MOST_1, scalar("abc"), "", I, "unreadable result", id="a value that is not a number: unreadable"),
    pytest.param(AT_MOST_1, {"status": "success", "data": {"resultType": "scalar", "result": None}}, "", I,
                 "unreadable result", id="scalar without a result: unreadable"),
    pytest.param(AT_MOST_1, {"status": "success", "data": {"resultType": "vector", "result": ["junk"]}}, "", I,
                 "unreadable result", id="vector item that is not an object: unreadable"),
    pytest.param(AT_MOST_1, {"status": "success", "data": {"resultType": "scalar", "result": "10"}}, "", I,
                 "unreadable result", id="scalar result that is not a [time, value] pair: unreadable, not its 2nd char"),
    pytest.param(AT_MOST_1, {"status": "success", "data": ["junk"]}, "", I, "",
                 id="data that is not an object: inconclusive, not a crash"),
    pytest.param(AT_MOST_1, {"status": "success", "data": "junk"}, "", I, "",
                 id="data that is a string: inconclusive, not a crash"),
]


@pytest.mark.parametrize(("check", "body", "error", "outcome", "observed"), PROMETHEUS)
def test_prometheus_check(check: PromCheck, body: Any, error: str, outcome: Outcome, observed: str) -> None:
    """Every value of an instant query must lie within [min, max]; anything that is not a clear answer is
    inconclusive, never a pass and never an exception."""
    result = prometheus_check(check, body, error)
    assert (result.name, result.outcome) == (f"prometheus {check.name}", outcome)
    assert observed in result.observed


@pytest.mark.parametrize(("check", "limit"), [
    (AT_MOST_1, "at most 1"), (AT_LEAST_10, "at least 10"), (BETWEEN, "at least 0.5 and at most 2"),
])
def test_a_prometheus_check_states_its_bounds(check: PromCheck, limit: str) -> None:
    """The limit reads as the bounds the query was given."""
    assert prometheus_check(check, scalar("1")).limit == limit


# --- the window from two readings ------------------------------------------------------------------------------------

CELLS = {"a": "cell-a", "b": "cell-b"}


def reading(source: str, totals: Mapping[str, Counts] | None = None, *, epoch: str = "e1",
            error: str = "") -> SourceTotals:
    """One source's cumulative totals, keyed "instance@revision" (no totals and an error: unreadable)."""
    series = {}
    for key, c in (totals or {}).items():
        instance, rev = key.split("@")
        series[Series("shop", instance, int(rev), CELLS[instance[0]], source)] = c
    return SourceTotals(source, epoch, series, error)


def readings(*items: SourceTotals) -> dict[str, SourceTotals]:
    return {r.name: r for r in items}


# What every live instance runs at the end of the window (the canary group at 2, the rest at 1; a2 at a third).
RUNNING = {"a0": 2, "b0": 2, "a3": 2, "a1": 1, "b1": 1, "a2": 3}


def n(requests: int, errors: int = 0) -> Counts:
    return Counts(requests=requests, errors=errors)


NODE_A_START = reading("node-a", {"a0@2": n(100, 1), "a1@1": n(400, 2)})
NODE_A_END = reading("node-a", {"a0@2": n(350, 3), "a1@1": n(600, 2)})
NODE_B_START = reading("node-b", {"b0@2": n(1000, 10), "b1@1": n(2000)})
NODE_B_END = reading("node-b", {"b0@2": n(1300, 12), "b1@1": n(2100, 1)})

SIDES = [
    pytest.param(readings(NODE_A_START), readings(NODE_A_END),
                 ("a0",), n(250, 2), ("a1",), n(200), P, "1 of 1 source(s) read", (),
                 id="one source, same epoch: the difference, split by revision"),
    pytest.param(readings(NODE_A_START, NODE_B_START), readings(NODE_A_END, NODE_B_END),
                 ("a0", "b0"), n(550, 4), ("a1", "b1"), n(300, 1), P, "2 of 2 source(s) read", (),
                 id="two sources, same epochs: their differences added"),
    pytest.param(readings(NODE_A_START, NODE_B_START),
                 readings(NODE_A_END, reading("node-b", {"b0@2": n(70, 1), "b1@1": n(90)}, epoch="e2")),
                 ("a0", "b0"), n(320, 3), ("a1", "b1"), n(290), P, "2 of 2 source(s) read",
                 ("node-b restarted counting during the window",),
                 id="a source restarted counting: its totals since the restart, and a note"),
    pytest.param(readings(NODE_A_START, reading("node-b", error="ConnectError")), readings(NODE_A_END, NODE_B_END),
                 ("a0", "b0"), n(1550, 14), ("a1",), n(200), P, "2 of 2 source(s) read",
                 ("node-b was not read when the window opened",),
                 id="a source unread at the start: its canary counted since start, its baseline left out"),
    pytest.param(readings(NODE_A_START), readings(NODE_A_END, NODE_B_END),
                 ("a0", "b0"), n(1550, 14), ("a1",), n(200), P, "2 of 2 source(s) read",
                 ("node-b was not read when the window opened",),
                 id="a source missing from the start: the same as unread"),
    pytest.param(readings(NODE_A_START, NODE_B_START), readings(NODE_A_END, reading("node-b", error="timeout")),
                 ("a0",), n(250, 2), ("a1",), n(200), I, "1 of 2 source(s) read", ("unreadable: node-b (timeout)",),
                 id="a source unreadable at the end: left out, and the data check is inconclusive"),
    pytest.param(readings(NODE_A_START, NODE_B_START), readings(NODE_A_END),
                 ("a0",), n(250, 2), ("a1",), n(200), I, "1 of 2 source(s) read", ("unreadable: node-b (not read)",),
                 id="a source missing at the end: the same as unreadable"),
    pytest.param(readings(reading("node-a", {"a0@2": n(10), "a1@1": n(10), "a2@3": n(10)})),
                 readings(reading("node-a", {"a0@2": n(20), "a1@1": n(30), "a2@3": n(1000)})),
                 ("a0",), n(10), ("a1",), n(20), P, "1 of 1 source(s) read", (),
                 id="a third revision belongs to neither side"),
    pytest.param(readings(reading("node-a", {"a0@2": n(10)})), readings(reading("node-a", {"a0@2": n(20),
                                                                                            "a3@2": n(5)})),
                 ("a0", "a3"), n(15), (), None, P, "1 of 1 source(s) read", (),
                 id="no baseline series: no baseline side; a series new in the window counts whole"),
    pytest.param(readings(reading("node-a", {"a0@2": n(10), "a1@1": n(10)}),
                          reading("gateway/gw", {"a0@2": n(5), "a1@1": n(5)})),
                 readings(reading("node-a", {"a0@2": n(20), "a1@1": n(40)}),
                          reading("gateway/gw", {"a0@2": n(25), "a1@1": n(5)})),
                 ("a0",), n(30), ("a1",), n(30), P, "2 of 2 source(s) read", (),
                 id="one instance counted by two sources: listed once, counts added"),
]


@pytest.mark.parametrize(("start", "end", "canary_ids", "canary_counts", "baseline_ids", "baseline_counts", "data",
                          "observed", "notes"), SIDES)
def test_sides(start: dict[str, SourceTotals], end: dict[str, SourceTotals], canary_ids: tuple[str, ...],
               canary_counts: Counts, baseline_ids: tuple[str, ...], baseline_counts: Counts | None, data: Outcome,
               observed: str, notes: tuple[str, ...]) -> None:
    """Two readings of every source give the canary's and the baseline's counts over the window, and a data check
    that is inconclusive when a source could not be read at the end."""
    new, old, check = sides(start, end, CANARY, BASELINE, SECONDS, RUNNING)
    assert new == Side(CANARY, canary_ids, canary_counts, SECONDS)
    if baseline_counts is None:
        assert old is None
    else:
        assert old == Side(BASELINE, baseline_ids, baseline_counts, SECONDS)
    assert (check.name, check.outcome, check.observed) == ("data", data, observed)
    for note in notes:
        assert note in check.detail, check.detail
    if not notes:
        assert check.detail == ""


LIVE = [
    pytest.param({"a0": 2, "a1": 1}, ("a0",), n(100), ("a1",), n(10), id="both instances live at their revisions"),
    pytest.param({"a0": 2}, ("a0",), n(100), (), None, id="a retired instance's totals are left out"),
    pytest.param({"a0": 2, "a1": 2}, ("a0",), n(100), (), None,
                 id="an instance that left a revision: its totals there are left out"),
    pytest.param({"a0": 1, "a1": 1}, (), n(0), ("a1",), n(10),
                 id="an instance back at the old revision no longer counts for the new one"),
    pytest.param({}, (), n(0), (), None, id="nothing live: an empty canary, no baseline"),
]


@pytest.mark.parametrize(("running", "canary_ids", "canary_counts", "baseline_ids", "baseline_counts"), LIVE)
def test_a_series_counts_only_while_its_instance_runs_that_revision(
        running: dict[str, int], canary_ids: tuple[str, ...], canary_counts: Counts, baseline_ids: tuple[str, ...],
        baseline_counts: Counts | None) -> None:
    """Sources keep the totals of retired instances and of revisions an instance left; those are not the window's."""
    start = readings(reading("node-a", {"a0@2": n(100), "a1@1": n(100)}))
    end = readings(reading("node-a", {"a0@2": n(200), "a1@1": n(110)}))
    new, old, data = sides(start, end, CANARY, BASELINE, SECONDS, running)
    assert new == Side(CANARY, canary_ids, canary_counts, SECONDS)
    assert old == (Side(BASELINE, baseline_ids, baseline_counts, SECONDS) if baseline_counts is not None else None)
    assert data.outcome is P


def test_the_window_feeds_the_traffic_checks() -> None:
    """End to end in values: an error-prone canary measured over a window fails the error-rate check."""
    start = readings(reading("node-a", {"a0@2": n(1000, 0), "a1@1": n(1000, 0)}))
    end = readings(reading("node-a", {"a0@2": n(1200, 10), "a1@1": n(1200, 0)}))
    new, old, data = sides(start, end, CANARY, BASELINE, SECONDS, RUNNING)
    judgement = judge([data, *traffic_checks(Verification(max_error_rate=1.0), new, old)])
    assert judgement.verdict is Verdict.FAILED
    assert "error rate 5.00% (10 of 200)" in judgement.summary


# --- the stored form -------------------------------------------------------------------------------------------------

FULL = Verification(window_seconds=45.0, min_requests=250, max_error_rate=None, max_error_rate_increase=0.5,
                    max_p99_ms=300.0, max_p99_ratio=1.5, p99_floor_ms=5.0, on_failure=OnFailure.ROLLBACK,
                    webhooks=(Webhook("http://checks.local/a", 2.0), Webhook("https://checks.local/b")),
                    prometheus_url="http://prom:9090",
                    queries=(PromCheck("errors", 'sum(rate(e{revision="$revision"}[$window]))', max=0.1),
                             PromCheck("rps", "sum(rate(r[$window]))", min=5.0)))


def stored(v: Verification) -> dict[str, Any]:
    """The `verify` block of a release's stored strategy."""
    body = strategy_json(Strategy(verify=v))["verify"]
    assert isinstance(body, dict)
    return body


def read(body: dict[str, Any]) -> Verification | None:
    return stored_strategy({"verify": body}).verify


@pytest.mark.parametrize("v", [Verification(), FULL, Verification(prometheus_url="http://prom:9090", queries=(
    PromCheck("p", "up", min=1.0),))], ids=["defaults", "every field", "prometheus with one query"])
def test_verification_survives_its_json_form(v: Verification) -> None:
    """What a release stores (as JSON text) reads back as the same verification."""
    text = json.loads(json.dumps(stored(v)))
    assert read(text) == v


def test_the_json_form_uses_the_public_names() -> None:
    """The stored form uses the manifest's camelCase names and plain values."""
    body = stored(FULL)
    assert (body["windowSeconds"], body["minRequests"], body["maxErrorRate"], body["onFailure"]) == (
        45.0, 250, None, "rollback")
    assert body["webhooks"][0] == {"url": "http://checks.local/a", "timeoutSeconds": 2.0}
    assert body["prometheus"]["queries"][0] == {"name": "errors", "query": 'sum(rate(e{revision="$revision"}[$window]))',
                                                "max": 0.1, "min": None}
    assert stored(Verification())["prometheus"] is None


def test_a_stored_form_without_optional_fields_reads_with_the_defaults() -> None:
    """Floor, onFailure, webhooks and prometheus may be absent from a stored form; they take the defaults."""
    assert read({"windowSeconds": 30, "minRequests": 100, "maxErrorRate": 1.0}) == Verification()
