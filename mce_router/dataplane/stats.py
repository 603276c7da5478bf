"""Call counters the hot path updates once per finished call (see :mod:`mce_router.metrics`,
which exports them). Compiled with the proxy (``setup.py``), so recording a call costs a few
native field updates instead of an interpreted method.
"""

from __future__ import annotations

import collections
import json
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

#: Histogram bounds in seconds: tens of microseconds to 60 s.
LATENCY_BOUNDS: Final[tuple[float, ...]] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
MINUTES_KEPT: Final = 60


@dataclass(frozen=True, slots=True)
class CallMinute:
    """One minute of calls: what CloudWatch's five invocation metrics need."""

    minute: int
    count: int
    errors_4xx: int
    errors_5xx: int
    latency_sum: float
    latency_min: float
    latency_max: float
    overhead_sum: float
    overhead_min: float
    overhead_max: float


class CallStats:
    """Invocations, 4XX/5XX errors, a latency and OverheadLatency for one dimension set.

    For a container the latency is ContainerLatency; for a variant it is ModelLatency. One flat
    method per call keeps the hot-path cost to a few attribute updates: Prometheus totals and
    buckets, plus the current minute's statistics for CloudWatch.
    """

    __slots__ = (
        "count", "dimensions", "errors_4xx", "errors_5xx", "history", "journal",
        "journal_kind", "journal_slot", "latency_buckets", "latency_sum", "m_4xx", "m_5xx",
        "m_count", "m_lat_max", "m_lat_min", "m_lat_sum", "m_ovh_max", "m_ovh_min", "m_ovh_sum",
        "minute", "minute_end", "minute_end_perf", "overhead_buckets", "overhead_sum", "tee",
    )  # fmt: skip

    def __init__(self, *dimensions: str) -> None:
        self.dimensions = dimensions
        self.count = 0
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.latency_sum = 0.0
        self.overhead_sum = 0.0
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.overhead_buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.history: collections.deque[CallMinute] = collections.deque(maxlen=MINUTES_KEPT)
        self.minute = 0
        self.minute_end = 0.0
        #: ``minute_end`` on the hot path's perf_counter clock, so that recording a call needs
        #: no clock read of its own (the proxy passes the instant it read anyway).
        self.minute_end_perf = 0.0
        #: Also records every call: a fleet's own stats passing each call on to the shared
        #: (endpoint, variant, container) ones, so that a rollout can watch one fleet alone.
        self.tee: CallStats | None = None
        #: In a data-plane worker: every call also goes to the journal the router process can
        #: read after the worker died (as ``journal_kind`` for ``journal_slot``).
        self.journal: CallJournal | None = None
        self.journal_kind = 0
        self.journal_slot = 0
        self._reset_minute()

    def _reset_minute(self) -> None:
        self.m_count = self.m_4xx = self.m_5xx = 0
        self.m_lat_sum = self.m_ovh_sum = 0.0
        self.m_lat_min = self.m_ovh_min = math.inf
        self.m_lat_max = self.m_ovh_max = -math.inf

    def record(self, status: int, latency: float, overhead: float, now: float) -> None:
        """``now`` is the perf_counter instant of the call's end."""
        if now >= self.minute_end_perf:
            self.roll(_time())
        self.count += 1
        self.m_count += 1
        if status >= 400 or status == 0:
            # A call without a valid status (refused, broken, timed out) counts as a 5XX.
            if status < 500 and status != 0:
                self.errors_4xx += 1
                self.m_4xx += 1
            else:
                self.errors_5xx += 1
                self.m_5xx += 1
        self.latency_sum += latency
        self.overhead_sum += overhead
        self.latency_buckets[_bucket(latency)] += 1
        self.overhead_buckets[_bucket(overhead)] += 1
        self.m_lat_sum += latency
        self.m_ovh_sum += overhead
        if latency < self.m_lat_min:
            self.m_lat_min = latency
        if latency > self.m_lat_max:
            self.m_lat_max = latency
        if overhead < self.m_ovh_min:
            self.m_ovh_min = overhead
        if overhead > self.m_ovh_max:
            self.m_ovh_max = overhead
        if self.tee is not None:
            self.tee.record(status, latency, overhead, now)
        if self.journal is not None:
            self.journal.call(self.journal_kind, self.journal_slot, status, latency, overhead, now)

    def roll(self, now: float) -> None:
        """Start the minute of ``now`` (wall-clock seconds) if it is not the current one."""
        if now >= self.minute_end:
            if self.m_count:
                self.history.append(self._current())
            self.minute = int(now // 60)
            self.minute_end = (self.minute + 1) * 60.0
            self._reset_minute()
        # Over one minute the two clocks drift by microseconds at most; re-anchored every roll.
        self.minute_end_perf = _perf() + (self.minute_end - now)

    def _current(self) -> CallMinute:
        return CallMinute(
            self.minute, self.m_count, self.m_4xx, self.m_5xx, self.m_lat_sum, self.m_lat_min,
            self.m_lat_max, self.m_ovh_sum, self.m_ovh_min, self.m_ovh_max,
        )  # fmt: skip

    def take(self) -> CallDelta | None:
        """What was recorded since the last take (None if nothing), then start from zero: a
        data-plane worker process hands its calls to the process that exports them."""
        if self.count == 0:
            return None
        minutes = [_minute_fields(m) for m in self.history]
        if self.m_count:
            minutes.append(_minute_fields(self._current()))
        delta: CallDelta = (
            self.count, self.errors_4xx, self.errors_5xx, self.latency_sum, self.overhead_sum,
            list(self.latency_buckets), list(self.overhead_buckets), minutes,
        )  # fmt: skip
        self.count = self.errors_4xx = self.errors_5xx = 0
        self.latency_sum = self.overhead_sum = 0.0
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.overhead_buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.history.clear()
        self._reset_minute()
        return delta

    def merge(self, delta: CallDelta, now: float) -> None:
        """Add a worker's :meth:`take` to these stats (and to the tee, as record does);
        ``now``: wall-clock seconds."""
        count, errors_4xx, errors_5xx, latency_sum, overhead_sum, lat_b, ovh_b, minutes = delta
        self.count += count
        self.errors_4xx += errors_4xx
        self.errors_5xx += errors_5xx
        self.latency_sum += latency_sum
        self.overhead_sum += overhead_sum
        for i, n in enumerate(lat_b):
            self.latency_buckets[i] += n
        for i, n in enumerate(ovh_b):
            self.overhead_buckets[i] += n
        for fields in minutes:
            self._merge_minute(CallMinute(*fields), now)
        if self.tee is not None:
            self.tee.merge(delta, now)

    def _merge_minute(self, m: CallMinute, now: float) -> None:
        if m.minute > self.minute:
            self.roll(max(now, m.minute * 60.0))
        if m.minute == self.minute:
            self.m_count += m.count
            self.m_4xx += m.errors_4xx
            self.m_5xx += m.errors_5xx
            self.m_lat_sum += m.latency_sum
            self.m_ovh_sum += m.overhead_sum
            self.m_lat_min = min(self.m_lat_min, m.latency_min)
            self.m_lat_max = max(self.m_lat_max, m.latency_max)
            self.m_ovh_min = min(self.m_ovh_min, m.overhead_min)
            self.m_ovh_max = max(self.m_ovh_max, m.overhead_max)
            return
        # A minute that ended here already (a report that crossed the minute's end).
        kept = {old.minute: old for old in self.history}
        old = kept.get(m.minute)
        kept[m.minute] = m if old is None else _sum_minutes(old, m)
        self.history.clear()
        self.history.extend(kept[k] for k in sorted(kept))

    def minutes(self, *, include_current: bool, now: float) -> list[CallMinute]:
        self.roll(now)
        result = list(self.history)
        if include_current and self.m_count:
            result.append(self._current())
        return result


#: :meth:`CallStats.take`: counts, 4XX, 5XX, latency and overhead sums, both histograms' bucket
#: counts, and each minute's fields (as CallMinute's, in order). Plain values: it is pickled.
CallDelta = tuple[int, int, int, float, float, list[int], list[int], list[tuple[Any, ...]]]


def _minute_fields(m: CallMinute) -> tuple[Any, ...]:
    return (
        m.minute, m.count, m.errors_4xx, m.errors_5xx, m.latency_sum, m.latency_min,
        m.latency_max, m.overhead_sum, m.overhead_min, m.overhead_max,
    )  # fmt: skip


def _sum_minutes(a: CallMinute, b: CallMinute) -> CallMinute:
    return CallMinute(
        a.minute, a.count + b.count, a.errors_4xx + b.errors_4xx, a.errors_5xx + b.errors_5xx,
        a.latency_sum + b.latency_sum, min(a.latency_min, b.latency_min),
        max(a.latency_max, b.latency_max), a.overhead_sum + b.overhead_sum,
        min(a.overhead_min, b.overhead_min), max(a.overhead_max, b.overhead_max),
    )  # fmt: skip


#: Distinct endpoint names that no endpoint has (typos, scanners) kept as labels; the rest count
#: as ``(other)``, so a client cannot grow the metrics without bound.
MAX_UNKNOWN_ENDPOINTS: Final = 100
OTHER_ENDPOINTS: Final = "(other)"


class RouterAnswers:
    """Requests the router answered itself with an error, by (endpoint, variant, status, error
    code): refused before any container (validation, authentication, unknown endpoint, too
    large, draining, queue full) or a container's failure turned into the router's answer
    (ModelError). ``""`` where the endpoint or variant is not known. Errors only: nothing is
    recorded on the success path."""

    __slots__ = ("_unknown", "journal", "minutes", "totals")

    def __init__(self) -> None:
        #: In a data-plane worker: see CallStats.journal.
        self.journal: CallJournal | None = None
        self.totals: dict[tuple[str, str, int, str], int] = {}
        #: minute -> counts of that minute (wall clock), the last MINUTES_KEPT minutes.
        self.minutes: collections.OrderedDict[int, dict[tuple[str, str, int, str], int]] = (
            collections.OrderedDict()
        )
        self._unknown: set[str] = set()

    def record(self, endpoint: str, known: bool, variant: str, status: int, code: str) -> None:
        """``known``: ``endpoint`` names an endpoint of the routing table (not a client's guess)."""
        if not known and endpoint:
            endpoint = self._unknown_label(endpoint)
        if self.journal is not None:
            # After the cap, so that the journal's keys stay as few as the labels.
            self.journal.answer(
                endpoint, known or endpoint == OTHER_ENDPOINTS, variant, status, code
            )
        key = (endpoint, variant, status, code)
        self.totals[key] = self.totals.get(key, 0) + 1
        minute = int(_time() // 60)
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = {}
            while len(self.minutes) > MINUTES_KEPT:
                self.minutes.popitem(last=False)
        counts[key] = counts.get(key, 0) + 1

    def take(self) -> AnswersDelta | None:
        """What was recorded since the last take, then start from zero (see CallStats.take)."""
        if not self.totals:
            return None
        delta: AnswersDelta = (
            list(self.totals.items()),
            [(minute, list(counts.items())) for minute, counts in self.minutes.items()],
        )
        self.totals = {}
        self.minutes.clear()
        return delta

    def merge(self, delta: AnswersDelta, known: Callable[[str], bool] | None = None) -> None:
        """Add a worker's :meth:`take`. With ``known`` (is this endpoint in the table?), the
        cap on unknown endpoint names applies over every worker's names, as in one process."""
        totals, minutes = delta
        capped: dict[str, str] = {}
        if known is not None:
            for key, _ in totals:
                name = key[0]
                if name and name != OTHER_ENDPOINTS and name not in capped and not known(name):
                    capped[name] = self._unknown_label(name)
        for key, count in totals:
            key = self._relabelled(key, capped)
            self.totals[key] = self.totals.get(key, 0) + count
        for minute, counts in minutes:
            kept = self.minutes.get(minute)
            if kept is None:
                kept = self.minutes[minute] = {}
            for key, count in counts:
                key = self._relabelled(key, capped)
                kept[key] = kept.get(key, 0) + count
        if minutes:
            for minute in sorted(self.minutes):
                self.minutes.move_to_end(minute)
            while len(self.minutes) > MINUTES_KEPT:
                self.minutes.popitem(last=False)

    def _unknown_label(self, name: str) -> str:
        """The label of an unknown endpoint name: itself while under the cap, else "(other)"."""
        if name in self._unknown:
            return name
        if len(self._unknown) >= MAX_UNKNOWN_ENDPOINTS:
            return OTHER_ENDPOINTS
        self._unknown.add(name)
        return name

    @staticmethod
    def _relabelled(
        key: tuple[str, str, int, str], capped: dict[str, str]
    ) -> tuple[str, str, int, str]:
        label = capped.get(key[0])
        return key if label is None or label == key[0] else (label, key[1], key[2], key[3])


#: :meth:`RouterAnswers.take`: the totals' and each minute's (key, count) pairs.
AnswersDelta = tuple[
    list[tuple[tuple[str, str, int, str], int]],
    list[tuple[int, list[tuple[tuple[str, str, int, str], int]]]],
]


#: What a journal record counts: a container's call, a container's response stream, a Serial
#: variant's call (its observers' ``journal_kind``), an error the router answered itself.
JOURNAL_CALL: Final = 0
JOURNAL_STREAM: Final = 1
JOURNAL_VARIANT: Final = 2
JOURNAL_ANSWER: Final = 3
#: kind, status, slot (or answer key id), latency, overhead, perf_counter instant.
_RECORD: Final = struct.Struct("<BxHIddd")
#: records written so far, bytes of answer keys written so far
_HEADER: Final = struct.Struct("<QQ")
_COUNT: Final = struct.Struct("<Q")
_HEADER_BYTES: Final = 64
_KEY_LENGTH: Final = struct.Struct("<H")
JOURNAL_RECORDS: Final = 1 << 16
JOURNAL_KEY_BYTES: Final = 1 << 16
JOURNAL_BYTES: Final = _HEADER_BYTES + JOURNAL_RECORDS * _RECORD.size + JOURNAL_KEY_BYTES
#: A replayed record: kind, slot, status, latency, overhead, perf_counter instant; for
#: JOURNAL_ANSWER, slot is an index into the answer keys :meth:`CallJournal.answer_keys` reads.
JournalRecord = tuple[int, int, int, float, float, float]
AnswerKey = tuple[str, bool, str, str]


class CallJournal:
    """Every call a data-plane worker records, in memory it shares with the router process (a
    ring of fixed records and the answer keys they name). The worker's reports carry
    :attr:`count` as of the report; when a worker dies, the router process replays what it
    recorded after its last report, so a killed worker loses no count.

    ``buffer`` is a writable, shared mapping of at least :data:`JOURNAL_BYTES`. The writer
    stores a record before the count that covers it; the reader reads only once the writer is
    gone.
    """

    __slots__ = ("_answer_ids", "_buffer", "_key_bytes", "count")

    def __init__(self, buffer: Any) -> None:
        if len(buffer) < JOURNAL_BYTES:
            raise ValueError(f"a call journal needs {JOURNAL_BYTES} bytes, got {len(buffer)}")
        self._buffer = buffer
        self.count, self._key_bytes = _HEADER.unpack_from(buffer, 0)
        self._answer_ids: dict[AnswerKey, int] = {}

    def call(
        self, kind: int, slot: int, status: int, latency: float, overhead: float, now: float
    ) -> None:
        index = self.count
        offset = _HEADER_BYTES + (index % JOURNAL_RECORDS) * _RECORD.size
        _RECORD.pack_into(self._buffer, offset, kind, status, slot, latency, overhead, now)
        self.count = index + 1
        _COUNT.pack_into(self._buffer, 0, index + 1)

    def answer(self, endpoint: str, known: bool, variant: str, status: int, code: str) -> None:
        key = (endpoint, known, variant, code)
        key_id = self._answer_ids.get(key)
        if key_id is None:
            encoded = json.dumps(list(key)).encode()
            start = _HEADER_BYTES + JOURNAL_RECORDS * _RECORD.size + self._key_bytes
            if self._key_bytes + _KEY_LENGTH.size + len(encoded) > JOURNAL_KEY_BYTES:
                return  # keys are bounded (unknown endpoints are capped): never in practice
            self._buffer[start + _KEY_LENGTH.size : start + _KEY_LENGTH.size + len(encoded)] = (
                encoded
            )
            _KEY_LENGTH.pack_into(self._buffer, start, len(encoded))
            key_id = len(self._answer_ids)
            self._answer_ids[key] = key_id
            self._key_bytes += _KEY_LENGTH.size + len(encoded)
            # after the key's bytes, before the record naming it
            _HEADER.pack_into(self._buffer, 0, self.count, self._key_bytes)
        self.call(JOURNAL_ANSWER, key_id, status, 0.0, 0.0, _perf())

    def records_since(self, first: int) -> tuple[list[JournalRecord], int]:
        """The records from number ``first`` on, and how many of those the ring no longer
        holds (overwritten: more than JOURNAL_RECORDS calls since ``first``)."""
        count = int(_HEADER.unpack_from(self._buffer, 0)[0])
        start = max(first, count - JOURNAL_RECORDS)
        records: list[JournalRecord] = []
        for index in range(start, count):
            offset = _HEADER_BYTES + (index % JOURNAL_RECORDS) * _RECORD.size
            kind, status, slot, latency, overhead, now = _RECORD.unpack_from(self._buffer, offset)
            records.append((kind, slot, status, latency, overhead, now))
        return records, start - first if start > first else 0

    def answer_keys(self) -> list[AnswerKey]:
        key_bytes = int(_HEADER.unpack_from(self._buffer, 0)[1])
        keys: list[AnswerKey] = []
        position = _HEADER_BYTES + JOURNAL_RECORDS * _RECORD.size
        end = position + key_bytes
        while position < end:
            (length,) = _KEY_LENGTH.unpack_from(self._buffer, position)
            position += _KEY_LENGTH.size
            endpoint, known, variant, code = json.loads(
                bytes(self._buffer[position : position + length])
            )
            keys.append((str(endpoint), bool(known), str(variant), str(code)))
            position += length
        return keys


def _bucket(seconds: float) -> int:
    """Index of the first bound >= ``seconds`` (as bisect_left), len(LATENCY_BOUNDS) past the
    last. A native loop from the smallest bound: typical latencies are found in a few steps,
    where bisect compares boxed floats through the generic comparison."""
    index = 0
    for bound in LATENCY_BOUNDS:
        if seconds <= bound:
            return index
        index += 1
    return index


_time: Final = time.time
_perf: Final = time.perf_counter
