"""CallStats: the per-call counters the hot path updates (histogram buckets, CloudWatch minutes)."""

from __future__ import annotations

import bisect
import time

import pytest

from mce_router.dataplane import stats
from mce_router.dataplane.stats import LATENCY_BOUNDS, CallStats


@pytest.mark.parametrize(
    "seconds",
    [0.0, 5e-6, *LATENCY_BOUNDS, *(b * 1.0001 for b in LATENCY_BOUNDS), 61.0, 1e9],
)
def test_bucket_is_bisect_left_over_the_bounds(seconds: float) -> None:
    calls = CallStats("endpoint")
    calls.record(200, seconds, seconds, time.perf_counter())
    expected = bisect.bisect_left(LATENCY_BOUNDS, seconds)
    assert calls.latency_buckets.index(1) == expected
    assert calls.overhead_buckets.index(1) == expected


def test_record_counts_statuses_and_sums() -> None:
    calls = CallStats("endpoint", "variant")
    now = time.perf_counter()
    for status in (200, 204, 404, 429, 500, 0):
        calls.record(status, 0.002, 0.0001, now)
    assert (calls.count, calls.errors_4xx, calls.errors_5xx) == (6, 2, 2)
    assert calls.latency_sum == pytest.approx(0.012)
    assert calls.overhead_sum == pytest.approx(0.0006)
    [minute] = calls.minutes(include_current=True, now=time.time())
    assert (minute.count, minute.errors_4xx, minute.errors_5xx) == (6, 2, 2)
    assert minute.latency_min == minute.latency_max == pytest.approx(0.002)


def test_a_call_after_the_minute_ends_starts_the_next_minute() -> None:
    """The hot path passes perf_counter instants; the minute boundary is kept on that clock."""
    if 60 - time.time() % 60 < 1:
        time.sleep(1)  # not across a minute boundary of the wall clock
    calls = CallStats("endpoint")
    start = time.perf_counter()
    calls.record(200, 0.001, 0.0001, start)
    first_minute = calls.minute
    seconds_left = calls.minute_end - time.time()
    assert 0 < seconds_left <= 60
    assert calls.minute_end_perf - start == pytest.approx(seconds_left, abs=0.5)
    # A call stamped past the end on the perf clock while the wall clock still agrees: rolled
    # only once the wall clock is past the minute too (re-anchored, not double-counted).
    calls.record(500, 0.001, 0.0001, calls.minute_end_perf + 1)
    assert calls.minute == first_minute
    assert calls.count == 2


def test_minutes_rolls_on_the_wall_clock_it_is_given() -> None:
    calls = CallStats("endpoint")
    calls.record(200, 0.001, 0.0001, time.perf_counter())
    later = calls.minute_end + 5
    assert [m.count for m in calls.minutes(include_current=True, now=later)] == [1]
    assert calls.minute == int(later // 60)
    assert calls.m_count == 0
    assert calls.history.maxlen == stats.MINUTES_KEPT
