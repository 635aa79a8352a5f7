"""Spec of request metrics as values: windows of cumulative counts, percentile estimates, summaries, grouping."""

from __future__ import annotations

import pytest

from ballast.core.request_metrics import (BOUNDS_MS, BUCKETS, CLASSES, ZERO, Counts, Series, bucket_of,
                                          estimated_sum, group, quantile, summarize, window)


def hist(**by_bound: int) -> tuple[int, ...]:
    """A latency histogram from {"b<bound>": count} (b60000p for the +Inf bucket)."""
    buckets = [0] * BUCKETS
    for key, n in by_bound.items():
        buckets[len(BOUNDS_MS) if key == "inf" else BOUNDS_MS.index(float(key[1:].replace("_", ".")))] = n
    return tuple(buckets)


def counts(requests: int, ok: int = 0, five: int = 0, conn: int = 0, latency: tuple[int, ...] | None = None,
           seconds: float = 0.0) -> Counts:
    responses = [0] * len(CLASSES)
    responses[CLASSES.index("2xx")] = ok
    responses[CLASSES.index("5xx")] = five
    return Counts(requests, tuple(responses), five + conn, conn, latency or (0,) * BUCKETS, seconds)


@pytest.mark.parametrize("ms, bucket", [(0.0, 0), (0.5, 0), (0.51, 1), (100, BOUNDS_MS.index(100)),
                                        (100.1, BOUNDS_MS.index(120)), (60_000, len(BOUNDS_MS) - 1),
                                        (60_001, len(BOUNDS_MS))])
def test_a_response_time_falls_in_the_first_bucket_whose_bound_holds_it(ms: float, bucket: int) -> None:
    assert bucket_of(ms) == bucket


@pytest.mark.parametrize("latency, q, expected", [
    (hist(b10=100), 0.5, 9.0),                    # inside (8, 10]: halfway
    (hist(b10=100), 0.99, 9.98),
    (hist(b1=90, b500=10), 0.5, 0.5 + 0.5 * 50 / 90),
    (hist(b1=90, b500=10), 0.99, 400 + 100 * 9 / 10),   # the slow tenth decides p99
    (hist(inf=5), 0.5, 60_000.0),                  # past the last bound: the highest finite bound
    ((0,) * BUCKETS, 0.99, None),                 # no answers: no estimate
])
def test_percentiles_are_interpolated_inside_the_bucket_holding_the_rank(latency: tuple[int, ...], q: float,
                                                                         expected: float | None) -> None:
    got = quantile(latency, q)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_a_window_is_the_difference_of_two_readings() -> None:
    earlier = counts(100, ok=95, five=5, latency=hist(b10=95))
    later = counts(250, ok=230, five=15, conn=5, latency=hist(b10=200, b500=30))
    got = window(later, earlier)
    assert got == counts(150, ok=135, five=10, conn=5, latency=hist(b10=105, b500=30), seconds=got.latency_sum)
    assert got.latency_sum == pytest.approx(estimated_sum(hist(b10=105, b500=30)))


def test_each_counter_and_each_bucket_that_went_backwards_was_restarted_and_counts_what_it_holds() -> None:
    """A new proxy worker restarts every counter; an idle bucket that expired restarts alone."""
    earlier = counts(100, ok=100, latency=hist(b10=100, b20=7))
    restarted = counts(30, ok=30, latency=hist(b10=30), seconds=estimated_sum(hist(b10=30)))
    assert window(restarted, earlier) == restarted
    bucket_restarted = counts(130, ok=130, latency=hist(b10=125, b20=2))
    got = window(bucket_restarted, earlier)
    assert (got.requests, got.latency) == (30, hist(b10=25, b20=2))
    assert window(earlier, None) == earlier


def test_the_time_spent_is_estimated_from_the_buckets() -> None:
    """Answers count at their bucket's middle; the last (+Inf) bucket at its lower bound."""
    assert estimated_sum(hist(b10=2, b1000=1)) == pytest.approx(2 * 0.009 + 0.9)
    assert estimated_sum(hist(inf=1)) == pytest.approx(60.0)
    assert estimated_sum(hist()) == 0.0


def test_counts_round_trip_through_json_and_refuse_malformed_bodies() -> None:
    c = counts(10, ok=8, five=1, conn=1, latency=hist(b2=9), seconds=0.012)
    assert Counts.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="latency.buckets"):
        Counts.from_json({"requests": 1, "latency": {"buckets": [1, 2]}})
    with pytest.raises(ValueError, match="never negative"):
        Counts.from_json({"requests": -1})
    with pytest.raises(ValueError):
        Counts.from_json({"requests": "many"})


def test_a_summary_gives_the_error_rate_in_percent_of_requests_and_none_without_requests() -> None:
    s = summarize(counts(200, ok=190, five=6, conn=4, latency=hist(b10=196), seconds=1.0), seconds=10.0)
    assert (s.requests, s.errors, s.conn_errors, s.error_rate, s.rate) == (200, 10, 4, 5.0, 20.0)
    assert s.p50_ms == pytest.approx(9.0)
    assert summarize(ZERO, 10.0).error_rate is None


def test_series_group_by_revision_cell_or_instance() -> None:
    a1 = Series("shop", "shop-1", 1, "cell-a", "node-a1")
    b2 = Series("shop", "shop-2", 2, "cell-b", "node-b1")
    b1 = Series("shop", "shop-3", 1, "cell-b", "node-b1")
    pairs = [(a1, counts(10)), (b2, counts(20)), (b1, counts(30))]
    assert {k: c.requests for k, c in group(pairs, "revision").items()} == {"1": 40, "2": 20}
    assert {k: c.requests for k, c in group(pairs, "cell").items()} == {"cell-a": 10, "cell-b": 50}
    assert {k: c.requests for k, c in group(pairs, "instance").items()} == {"shop-1": 10, "shop-2": 20, "shop-3": 30}
    with pytest.raises(ValueError):
        group(pairs, "node")
