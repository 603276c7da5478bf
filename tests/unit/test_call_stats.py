"""CallStats: the per-call counters the hot path updates (histogram buckets, CloudWatch minutes)."""

from __future__ import annotations

import bisect
import mmap
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


def _journal_pair() -> tuple[stats.CallJournal, stats.CallJournal]:
    """A writer and a reader over one shared mapping, as a worker and the router process."""
    shared = mmap.mmap(-1, stats.JOURNAL_BYTES)
    return stats.CallJournal(shared), stats.CallJournal(shared)


def test_the_journal_hands_the_reader_every_call_after_a_count() -> None:
    writer, reader = _journal_pair()
    calls = CallStats("endpoint", "variant", "container")
    calls.journal, calls.journal_kind, calls.journal_slot = writer, stats.JOURNAL_CALL, 7
    now = time.perf_counter()
    calls.record(200, 0.25, 0.001, now)
    reported = writer.count  # a report covering that call
    calls.record(503, 0.5, 0.002, now + 1)
    answers = stats.RouterAnswers()
    answers.journal = writer
    answers.record("ghost", False, "", 400, "ValidationError")
    answers.record("ghost", False, "", 400, "ValidationError")
    answers.record("known", True, "AllTraffic", 424, "ModelError")
    records, overwritten = reader.records_since(reported)
    assert overwritten == 0
    assert [r[:5] for r in records] == [
        (stats.JOURNAL_CALL, 7, 503, 0.5, 0.002),
        (stats.JOURNAL_ANSWER, 0, 400, 0.0, 0.0),
        (stats.JOURNAL_ANSWER, 0, 400, 0.0, 0.0),
        (stats.JOURNAL_ANSWER, 1, 424, 0.0, 0.0),
    ]
    assert records[0][5] == now + 1
    assert reader.answer_keys() == [
        ("ghost", False, "", "ValidationError"),
        ("known", True, "AllTraffic", "ModelError"),
    ]
    # The journal is a copy: the counters themselves are as without it.
    assert (calls.count, calls.errors_5xx) == (2, 1)
    assert reader.records_since(writer.count) == ([], 0)


def test_a_journal_that_wrapped_says_how_many_calls_it_no_longer_holds() -> None:
    writer, reader = _journal_pair()
    extra = 5
    for i in range(stats.JOURNAL_RECORDS + extra):
        writer.call(stats.JOURNAL_VARIANT, 1, 200, float(i), 0.0, 0.0)
    records, overwritten = reader.records_since(0)
    assert overwritten == extra
    assert len(records) == stats.JOURNAL_RECORDS
    assert records[0][3] == float(extra)  # the oldest still held
    assert records[-1][3] == float(stats.JOURNAL_RECORDS + extra - 1)


def test_a_journal_needs_its_whole_size() -> None:
    with pytest.raises(ValueError, match="bytes"):
        stats.CallJournal(bytearray(100))


def test_the_journal_keeps_the_answer_keys_as_few_as_the_labels() -> None:
    writer, reader = _journal_pair()
    answers = stats.RouterAnswers()
    answers.journal = writer
    for i in range(stats.MAX_UNKNOWN_ENDPOINTS + 50):
        answers.record(f"guess-{i}", False, "", 404, "ValidationError")
    keys = reader.answer_keys()
    assert len(keys) == stats.MAX_UNKNOWN_ENDPOINTS + 1
    # the capped ones arrive as "(other)", which the reader must not count as a new guess
    assert keys[-1] == (stats.OTHER_ENDPOINTS, True, "", "ValidationError")
    replayed = stats.RouterAnswers()
    for kind, slot, status, *_ in reader.records_since(0)[0]:
        assert kind == stats.JOURNAL_ANSWER
        endpoint, known, variant, code = keys[slot]
        replayed.record(endpoint, known, variant, status, code)
    assert replayed.totals == answers.totals
