"""Verification of a release group: is the new revision as good as the old one? Pure.

After a group's instances all serve the new revision, the release waits for
a verdict on a window of traffic: the new revision's instances (the canary)
against the old revision's (the baseline) over the same seconds. The checks
a strategy asks for each pass, fail or cannot decide; the verdict is
`failed` when any check failed, `inconclusive` when any could not decide
(too few requests, a source that could not be read, a webhook that did not
answer), and `passed` only when every check passed. Nothing turns into a
pass by waiting: an inconclusive verdict pauses the release for a person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

from ballast.core.request_metrics import ZERO, Counts, Series, Summary, summarize, total, window


class OnFailure(str, Enum):
    PAUSE = "pause"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Webhook:
    url: str
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class PromCheck:
    name: str
    query: str                  # PromQL; $app, $revision, $baseline and $window are substituted
    max: float | None = None
    min: float | None = None


@dataclass(frozen=True)
class Verification:
    window_seconds: float = 30.0
    min_requests: int = 100
    max_error_rate: float | None = 1.0           # percent of the canary's requests
    max_error_rate_increase: float | None = None  # percentage points above the baseline
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None           # times the baseline's p99
    p99_floor_ms: float = 10.0                   # p99s below this compare as this (finer is noise)
    on_failure: OnFailure = OnFailure.PAUSE
    webhooks: tuple[Webhook, ...] = ()
    prometheus_url: str | None = None
    queries: tuple[PromCheck, ...] = ()


class Verdict(str, Enum):
    VERIFYING = "verifying"        # the window is open
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ABANDONED = "abandoned"        # the group stopped being complete, or a person asked to verify again


class Outcome(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"            # not applicable (no baseline left, nothing to compare)


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    observed: str
    limit: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": self.outcome.value, "observed": self.observed, "limit": self.limit,
                "detail": self.detail}


@dataclass(frozen=True)
class Side:
    """One revision's instances over the window."""

    revision: int
    instances: tuple[str, ...]
    counts: Counts
    seconds: float

    @property
    def summary(self) -> Summary:
        return summarize(self.counts, self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "instances": list(self.instances), **self.summary.to_json()}


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    checks: tuple[Check, ...]
    summary: str


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def traffic_checks(v: Verification, canary: Side, baseline: Side | None) -> list[Check]:
    """The checks on the canary's traffic (and against the baseline's, when one is left)."""
    c = canary.summary
    enough = c.requests >= v.min_requests
    checks = [Check("requests", Outcome.PASS if enough else Outcome.INCONCLUSIVE,
                    f"{c.requests} to revision {canary.revision} in {canary.seconds:.0f}s",
                    f"at least {v.min_requests} for a verdict")]
    b = baseline.summary if baseline is not None else None
    no_baseline = ("no instance of the previous revision served in the window" if baseline is None
                   else f"the baseline has {b.requests if b else 0} requests, fewer than {v.min_requests}")
    baseline_usable = b is not None and b.requests >= v.min_requests

    def gated(name: str, limit: str, ok: bool, observed: str, relative: bool = False) -> Check:
        if not enough:
            return Check(name, Outcome.SKIPPED, observed, limit, "too few requests for a verdict")
        if relative and not baseline_usable:
            outcome = Outcome.SKIPPED if baseline is None else Outcome.INCONCLUSIVE
            return Check(name, outcome, observed, limit, no_baseline)
        return Check(name, Outcome.PASS if ok else Outcome.FAIL, observed, limit)

    rate = c.error_rate or 0.0
    if v.max_error_rate is not None:
        checks.append(gated("error rate", f"at most {v.max_error_rate:g}%", rate <= v.max_error_rate,
                            f"{_pct(rate)} ({c.errors} of {c.requests})"))
    if v.max_error_rate_increase is not None:
        base_rate = (b.error_rate or 0.0) if b is not None else 0.0
        checks.append(gated("error rate vs baseline", f"at most {v.max_error_rate_increase:g} points above",
                            rate - base_rate <= v.max_error_rate_increase,
                            f"{_pct(rate)} vs {_pct(base_rate)} (revision {baseline.revision if baseline else '-'})",
                            relative=True))
    p99 = c.p99_ms
    if v.max_p99_ms is not None:
        if p99 is None and enough:
            checks.append(Check("p99", Outcome.INCONCLUSIVE, "no answers to time", f"at most {v.max_p99_ms:g} ms"))
        else:
            checks.append(gated("p99", f"at most {v.max_p99_ms:g} ms", (p99 or 0.0) <= v.max_p99_ms, _ms(p99)))
    if v.max_p99_ratio is not None:
        base_p99 = b.p99_ms if b is not None else None
        if enough and baseline_usable and (p99 is None or base_p99 is None):
            checks.append(Check("p99 vs baseline", Outcome.INCONCLUSIVE, f"{_ms(p99)} vs {_ms(base_p99)}",
                                f"at most {v.max_p99_ratio:g}× the baseline", "no answers to time"))
        else:
            floor = v.p99_floor_ms
            ok = max(p99 or 0.0, floor) <= v.max_p99_ratio * max(base_p99 or 0.0, floor)
            checks.append(gated("p99 vs baseline", f"at most {v.max_p99_ratio:g}× the baseline (p99s under "
                                f"{floor:g} ms count as {floor:g} ms)", ok, f"{_ms(p99)} vs {_ms(base_p99)}",
                                relative=True))
    return checks


def judge(checks: Sequence[Check]) -> Judgement:
    """Any failed check fails the group; else anything undecided leaves it inconclusive; else it passed."""
    failed = [c for c in checks if c.outcome is Outcome.FAIL]
    undecided = [c for c in checks if c.outcome is Outcome.INCONCLUSIVE]
    if failed:
        verdict, decisive = Verdict.FAILED, failed
    elif undecided:
        verdict, decisive = Verdict.INCONCLUSIVE, undecided
    else:
        verdict, decisive = Verdict.PASSED, [c for c in checks if c.outcome is Outcome.PASS]
    text = "; ".join(f"{c.name} {c.observed} ({c.limit}" + (f": {c.detail}" if c.detail else "") + ")"
                     for c in decisive)
    return Judgement(verdict, tuple(checks), f"{verdict.value}: {text}" if text else verdict.value)


# --- external checks, as values --------------------------------------------------------------------
def webhook_check(url: str, status: int | None, error: str = "") -> Check:
    """A user's check endpoint must answer 2xx; no answer at all cannot decide either way."""
    if status is None:
        return Check(f"webhook {url}", Outcome.INCONCLUSIVE, f"no answer ({error})", "answers 2xx")
    ok = 200 <= status < 300
    return Check(f"webhook {url}", Outcome.PASS if ok else Outcome.FAIL, f"answered {status}", "answers 2xx")


def promql(query: str, variables: Mapping[str, str]) -> str:
    """The query with $app, $revision, $baseline and $window replaced (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        query = query.replace(f"${name}", variables[name])
    return query


def prometheus_check(check: PromCheck, body: Any, error: str = "") -> Check:
    """Judge an instant query's answer (`/api/v1/query`): every value must lie within [min, max]."""
    limit = " and ".join(x for x in (f"at least {check.min:g}" if check.min is not None else "",
                                     f"at most {check.max:g}" if check.max is not None else "") if x)
    name = f"prometheus {check.name}"
    if error:
        return Check(name, Outcome.INCONCLUSIVE, f"no answer ({error})", limit)
    values = _prometheus_values(body)
    if isinstance(values, str):
        return Check(name, Outcome.INCONCLUSIVE, values, limit)
    if not values:
        return Check(name, Outcome.INCONCLUSIVE, "no data (empty result)", limit)
    if any(math.isnan(x) for x in values):
        return Check(name, Outcome.INCONCLUSIVE, "NaN (nothing to divide by?)", limit)
    bad = [x for x in values if (check.max is not None and x > check.max) or (check.min is not None and x < check.min)]
    shown = ", ".join(f"{x:g}" for x in values[:5]) + (" …" if len(values) > 5 else "")
    return Check(name, Outcome.FAIL if bad else Outcome.PASS, shown, limit)


def _prometheus_values(body: Any) -> list[float] | str:
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        return f"query failed: {error or 'not a Prometheus answer'}"
    data = body.get("data")
    if not isinstance(data, dict):
        return "unreadable result"
    kind: Any = data.get("resultType")
    result: Any = data.get("result")

    def value(pair: Any) -> float:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"expected [time, value], got {pair!r}")
        return float(pair[1])
    try:
        if kind == "scalar":
            return [value(result)]
        if kind == "vector" and isinstance(result, list):
            return [value(item["value"]) for item in result]
    except (TypeError, KeyError, IndexError, ValueError):
        return "unreadable result"
    return f"a {kind} result; expected an instant vector or a scalar"


# --- the window, from two readings of every source ----------------------------------------------------
@dataclass(frozen=True)
class SourceTotals:
    """One source's cumulative totals of the app's series at one moment (`epoch` names its count; "" unread)."""

    name: str
    epoch: str
    totals: Mapping[Series, Counts]
    error: str = ""

    @property
    def read(self) -> bool:
        return not self.error


def sides(start: Mapping[str, SourceTotals], end: Mapping[str, SourceTotals], canary_revision: int,
          baseline_revision: int, seconds: float, running: Mapping[str, int]) -> tuple[Side, Side | None, Check]:
    """The canary's and the baseline's counts over the window between two readings, and a check that says whether
    every source could be read (a source that could not is no evidence for a pass).

    `running` maps each live instance to the revision it runs: a series counts only while its instance still runs
    that revision (sources keep the totals of retired instances and of revisions an instance left for a while).
    """
    canary: dict[Series, Counts] = {}
    baseline: dict[Series, Counts] = {}
    notes: list[str] = []
    missing: list[str] = []
    for name in sorted(set(start) | set(end)):
        before, after = start.get(name), end.get(name)
        if after is None or not after.read:
            missing.append(f"{name} ({after.error if after is not None else 'not read'})")
            continue
        if before is None or not before.read:
            notes.append(f"{name} was not read when the window opened: its new-revision instances count from their "
                         "start, its old-revision instances are left out")
        elif before.epoch != after.epoch:
            notes.append(f"{name} restarted counting during the window: its figures cover only the time since")
        earlier = before.totals if before is not None and before.read and before.epoch == after.epoch else None
        for series, cumulative in after.totals.items():
            if running.get(series.instance) != series.revision:
                continue
            delta = window(cumulative, earlier.get(series)) if earlier is not None else cumulative
            if series.revision == canary_revision:
                canary[series] = canary.get(series, ZERO) + delta
            elif series.revision == baseline_revision and before is not None and before.read:
                baseline[series] = baseline.get(series, ZERO) + delta
    readable = len(set(start) | set(end)) - len(missing)
    data = Check("data", Outcome.INCONCLUSIVE if missing else Outcome.PASS,
                 f"{readable} of {readable + len(missing)} source(s) read",
                 "every node hosting the app answers", "; ".join(
                     ([f"unreadable: {', '.join(missing)}"] if missing else []) + notes))

    def side(revision: int, series: dict[Series, Counts]) -> Side:
        return Side(revision, tuple(sorted({s.instance for s in series})), total(series.values()), seconds)

    return side(canary_revision, canary), (side(baseline_revision, baseline) if baseline else None), data
