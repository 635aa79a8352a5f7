"""Request metrics as values: the counters of one series, windows of them, summaries. Pure.

The data plane counts what every instance serves (its sidecar's inbound side)
and what every gateway sends to each instance. Agents and gateways keep
cumulative `Counts` per series — an instance at one revision — and a window is
the difference of two cumulative readings. `ballast metrics`, the verification
gates between release groups and the Prometheus endpoints all work on these
values, so a number means the same wherever it is shown.

Response times are counted in fixed buckets (`BOUNDS_MS`, as a Prometheus
histogram); percentiles are estimated from them by linear interpolation inside
the bucket, so an estimate is off by at most that bucket's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# Upper bounds (ms) of the response-time buckets; one more bucket counts everything slower (+Inf).
BOUNDS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500,
    600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10_000, 15_000, 20_000, 30_000, 60_000)
BUCKETS = len(BOUNDS_MS) + 1
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
_ZERO_CLASSES = (0,) * len(CLASSES)
_ZERO_BUCKETS = (0,) * BUCKETS


def _plus(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a, b))


def _minus(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x - y for x, y in zip(a, b))


@dataclass(frozen=True)
class Counts:
    """What one series served. Cumulative when read from a source; a difference when it is a window.

    `errors` is what callers counted as failed: 5xx answers and exchanges that broke at the connection
    level. Each source says how it derives it from its proxy's counters (`dataplane/request_stats.py`).
    """

    requests: int = 0
    responses: tuple[int, ...] = _ZERO_CLASSES   # by CLASSES
    errors: int = 0
    conn_errors: int = 0                          # of the errors: no answer from the app (refused, reset, timeout)
    latency: tuple[int, ...] = _ZERO_BUCKETS      # answers per response-time bucket (not cumulative)
    latency_sum: float = 0.0                      # seconds over the answers in `latency`, estimated from them

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.requests + other.requests, _plus(self.responses, other.responses),
                      self.errors + other.errors, self.conn_errors + other.conn_errors,
                      _plus(self.latency, other.latency), self.latency_sum + other.latency_sum)

    def __sub__(self, other: "Counts") -> "Counts":
        return Counts(self.requests - other.requests, _minus(self.responses, other.responses),
                      self.errors - other.errors, self.conn_errors - other.conn_errors,
                      _minus(self.latency, other.latency), self.latency_sum - other.latency_sum)

    @property
    def answered(self) -> int:
        return sum(self.latency)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "responses": dict(zip(CLASSES, self.responses)), "errors": self.errors,
                "connErrors": self.conn_errors,
                "latency": {"buckets": list(self.latency), "sumSeconds": round(self.latency_sum, 6)}}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Counts":
        """Parse what `to_json` wrote; a malformed body raises ValueError naming the field."""
        try:
            responses = body.get("responses") or {}
            latency = body.get("latency") or {}
            buckets = tuple(int(x) for x in latency.get("buckets") or _ZERO_BUCKETS)
            if len(buckets) != BUCKETS:
                raise ValueError(f"latency.buckets: expected {BUCKETS} counts, got {len(buckets)}")
            counts = cls(requests=int(body.get("requests", 0)),
                         responses=tuple(int(responses.get(c, 0)) for c in CLASSES),
                         errors=int(body.get("errors", 0)), conn_errors=int(body.get("connErrors", 0)),
                         latency=buckets, latency_sum=float(latency.get("sumSeconds", 0.0)))
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"malformed request counts: {exc}") from None
        if min(counts.requests, counts.errors, counts.conn_errors, *counts.responses, *counts.latency) < 0:
            raise ValueError("request counts are never negative")
        return counts


ZERO = Counts()


def window(later: Counts, earlier: Counts | None) -> Counts:
    """What happened between two cumulative readings of one series.

    Each counter (and each latency bucket) is judged on its own, as Prometheus judges a counter: one that went
    backwards was restarted in between, and what it holds now is all that is known of the window.
    """
    if earlier is None:
        return later

    def d(a: int, b: int) -> int:
        return a - b if a >= b else a

    latency = tuple(d(a, b) for a, b in zip(later.latency, earlier.latency))
    return Counts(requests=d(later.requests, earlier.requests),
                  responses=tuple(d(a, b) for a, b in zip(later.responses, earlier.responses)),
                  errors=d(later.errors, earlier.errors), conn_errors=d(later.conn_errors, earlier.conn_errors),
                  latency=latency, latency_sum=estimated_sum(latency))


def estimated_sum(latency: tuple[int, ...]) -> float:
    """Seconds spent answering, estimated from the buckets (each answer at its bucket's middle; the last bucket at
    its lower bound): the data plane counts answers per bucket, not their exact times."""
    seconds = 0.0
    for i, n in enumerate(latency):
        if n:
            low = BOUNDS_MS[i - 1] if i > 0 else 0.0
            mid = BOUNDS_MS[-1] if i == len(BOUNDS_MS) else (low + BOUNDS_MS[i]) / 2
            seconds += n * mid / 1000
    return seconds


def total(counts: Iterable[Counts]) -> Counts:
    out = ZERO
    for c in counts:
        out = out + c
    return out


def quantile(latency: tuple[int, ...], q: float) -> float | None:
    """Estimated q-quantile (ms) of the answers in `latency` buckets; None without answers.

    Interpolates linearly inside the bucket that holds the rank (as Prometheus' histogram_quantile does);
    a rank in the last (+Inf) bucket reports the highest finite bound.
    """
    count = sum(latency)
    if count == 0:
        return None
    rank = q * count
    seen = 0
    for i, n in enumerate(latency):
        if n and seen + n >= rank:
            if i == len(BOUNDS_MS):
                return float(BOUNDS_MS[-1])
            lower = BOUNDS_MS[i - 1] if i > 0 else 0.0
            return lower + (BOUNDS_MS[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return float(BOUNDS_MS[-1])


def bucket_of(milliseconds: float) -> int:
    """The bucket a response time falls in (the same rule the data plane applies)."""
    for i, bound in enumerate(BOUNDS_MS):
        if milliseconds <= bound:
            return i
    return len(BOUNDS_MS)


@dataclass(frozen=True)
class Summary:
    """A window of counts as people and gates read it."""

    requests: int
    seconds: float
    responses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    conn_errors: int = 0
    error_rate: float | None = None       # percent of requests
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, digits: int) -> float | None:
            return None if x is None else round(x, digits)
        return {"requests": self.requests, "seconds": round(self.seconds, 3), "ratePerSecond": round(self.rate, 2),
                "responses": self.responses, "errors": self.errors, "connErrors": self.conn_errors,
                "errorRatePercent": r(self.error_rate, 4), "p50Ms": r(self.p50_ms, 2), "p90Ms": r(self.p90_ms, 2),
                "p99Ms": r(self.p99_ms, 2)}


def summarize(counts: Counts, seconds: float) -> Summary:
    return Summary(requests=counts.requests, seconds=seconds, responses=dict(zip(CLASSES, counts.responses)),
                   errors=counts.errors, conn_errors=counts.conn_errors,
                   error_rate=100.0 * counts.errors / counts.requests if counts.requests else None,
                   p50_ms=quantile(counts.latency, 0.5), p90_ms=quantile(counts.latency, 0.9),
                   p99_ms=quantile(counts.latency, 0.99))


@dataclass(frozen=True)
class Series:
    """One instance at one revision, as one source (a node's sidecars, or a gateway) counted it."""

    app: str
    instance: str
    revision: int
    cell: str
    source: str          # node name, or gateway/NAME

    def label(self, by: str) -> str:
        """The group this series belongs to when rows are formed `by` revision, cell or instance."""
        if by == "revision":
            return str(self.revision)
        if by == "cell":
            return self.cell
        if by == "instance":
            return self.instance
        raise ValueError(f"group by revision, cell or instance, not {by!r}")


GROUPINGS = ("revision", "cell", "instance")


def group(series: Iterable[tuple[Series, Counts]], by: str) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for s, c in series:
        key = s.label(by)
        out[key] = out.get(key, ZERO) + c
    return out
