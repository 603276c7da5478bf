"""The generator: one process's share of the load, on one event loop.

Requests are pre-built byte strings (the whole head and body, re-signed at most once a second
per payload when SigV4 is on), written on keep-alive connections by a plain
``asyncio.Protocol`` whose responses llhttp (httptools) parses. A connection carries one
request at a time; in the open loop a request whose send time comes while every connection is
busy waits in a queue and is still timed from its *scheduled* send time, so a stall of the
system under test shows in the percentiles instead of silently slowing the generator down
(no coordinated omission).

The hot path only appends integers to arrays; every 0.1 s they are folded into HDR histograms
(``hdrhistogram``) a few hundred values at a time between turns of the loop, and once a second
a tick checks request timeouts and reports a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import math
import random
import ssl
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import psutil
from hdrh.histogram import HdrHistogram

from .config import LoadConfig, Mix, Phase
from .signing import RequestBuilder

#: Histogram range: 1 µs to 1 hour, 3 significant digits (0.1 % resolution).
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600_000_000
HIST_DIGITS = 3
#: Connections opened before an open-loop run: enough for this many seconds of requests.
WARM_SECONDS = 0.004
#: The open loop's shortest sleep (uvloop's timer resolution).
MIN_SLEEP_SECONDS = 0.001
#: The target sequence is precomputed in blocks of this many picks.
PLAN_LENGTH = 8192

CLIENT_TIMEOUT = "ClientTimeout"
CONNECT_ERROR = "ConnectError"
CONNECTION_CLOSED = "ConnectionClosed"
BAD_RESPONSE = "BadResponse"


#: The timeline's per-second histograms: 1 µs to 60 s at 2 digits (1 %), 2,560 counters
#: instead of 23,552, so percentiles of a second cost 0.15 ms instead of 1.6 ms.
SECOND_HIGHEST_US = 60_000_000
SECOND_DIGITS = 2
#: The hot path's arrays are folded into histograms this often: folding costs per distinct
#: value, and many small folds keep each pause of the event loop short.
FOLD_SECONDS = 0.1
#: ... in chunks of this many distinct values between two turns of the event loop (~0.6 ms).
FOLD_CHUNK = 256


#: Values still to fold, each batch with the histograms it goes to.
_Jobs = list[tuple["array[int]", tuple[HdrHistogram, ...]]]


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def new_second_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, SECOND_HIGHEST_US, SECOND_DIGITS)


def fold(values: array[int], *histograms: HdrHistogram) -> None:
    """Record a batch of microsecond values: Counter runs in C, so each distinct value costs
    one counter update per histogram instead of each sample."""
    if values:
        items = collections.Counter(values).items()
        for histogram in histograms:
            _record(items, histogram)


def _record(items: Iterable[tuple[int, int]], histogram: HdrHistogram) -> None:
    """``record_value`` for each (value, count), inlined: hdrh's method costs 2.4 µs (five
    Python calls to find the counter); the same bucket arithmetic here costs ~0.3 µs, and the
    open loop folds each latency twice (its target's histogram and the second's) plus its lag.
    """
    highest = histogram.highest_trackable_value
    mask = histogram.sub_bucket_mask
    unit = histogram.unit_magnitude
    shift = histogram.sub_bucket_half_count_magnitude
    half = histogram.sub_bucket_half_count
    first_bucket = unit + shift + 1
    counts = histogram.counts
    total = 0
    low = histogram.min_value
    high = histogram.max_value
    for value, count in items:
        if value < HIST_LOWEST_US:
            value = HIST_LOWEST_US
        elif value > highest:
            value = highest
        # hdrh's _counts_index_for: the bucket is the power of two above the value.
        bucket = (value | mask).bit_length() - first_bucket
        counts[((bucket + 1) << shift) + (value >> (bucket + unit)) - half] += count
        total += count
        if value < low:
            low = value
        if value > high:
            high = value
    histogram.total_count += total
    histogram.min_value = low
    histogram.max_value = high


class Recorder:
    """What one (phase, target) pair measured in this process."""

    __slots__ = (
        "errors",
        "first_send",
        "histogram",
        "last_done",
        "ok",
        "pending",
        "phase",
        "target",
    )

    def __init__(self, phase: int, target: int) -> None:
        self.phase = phase
        self.target = target
        self.ok = 0
        self.errors: collections.Counter[tuple[int, str]] = collections.Counter()
        self.pending: array[int] = array("q")
        self.histogram = new_histogram()
        self.first_send = math.inf
        self.last_done = 0.0


@dataclass(slots=True)
class Snapshot:
    """One second of this process's activity, sent to the progress display and timeline."""

    worker: int
    second: int
    phase: int
    target_rate: float | None
    users: int
    sent: int
    ok: int
    errors: int
    per_target: list[int]
    histogram: str  # encoded HDR histogram of the second's successful latencies
    lag_max_ms: float
    cpu_percent: float
    in_flight: int
    #: the last, partial second after the phases (answers still arriving): not a whole second
    final: bool = False


@dataclass(slots=True)
class PhaseResult:
    phase: int
    started: float
    ended: float
    recorders: list[dict[str, Any]]
    lag_histogram: str
    cpu_percent: float
    sent: int


@dataclass(slots=True)
class WorkerResult:
    worker: int
    phases: list[PhaseResult] = field(default_factory=list)
    connections_opened: int = 0
    connect_errors: list[str] = field(default_factory=list)


class _Request:
    __slots__ = ("data", "recorder", "scheduled", "sent_at", "user")

    def __init__(self, scheduled: float, recorder: Recorder, data: bytes, user: bool) -> None:
        self.scheduled = scheduled
        self.recorder = recorder
        self.data = data
        self.user = user
        self.sent_at = 0.0


class _Connection(asyncio.Protocol):
    __slots__ = ("body", "current", "engine", "error_type", "parser", "status", "transport")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: _Request | None = None
        self.status = 0
        self.error_type = b""
        self.body: list[bytes] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.engine.failed(self, BAD_RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.lost(self)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 16 and name.lower() == b"x-amzn-errortype":
            self.error_type = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status >= 300:
            self.body = []

    def on_body(self, body: bytes) -> None:
        if self.body is not None:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.engine.completed(self)

    def send(self, request: _Request) -> None:
        self.current = request
        self.status = 0
        self.error_type = b""
        self.body = None
        request.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request.data)


def error_code(error_type: bytes, body: list[bytes] | None) -> str:
    """The SageMaker error code of an answer: ``x-amzn-ErrorType`` or the body's ``__type``."""
    if error_type:
        return error_type.split(b":", 1)[0].decode("latin-1")
    if body:
        text = b"".join(body)[:4096]
        marker = text.find(b'"__type"')
        if marker >= 0:
            rest = text[marker + 8 :].lstrip(b" :")
            if rest.startswith(b'"'):
                end = rest.find(b'"', 1)
                if end > 0:
                    return rest[1:end].split(b"#")[-1].decode("latin-1")
    return ""


def plan(mix: Mix, worker: int) -> list[tuple[int, int]]:
    """The (target, payload) sequence: weights met exactly per block (smooth weighted
    round-robin, as nginx spreads upstream weights) or drawn at random with the seed."""
    rng = random.Random(mix.seed * 7919 + worker)
    weights = [t.weight for t in mix.targets]
    picks: list[int]
    if mix.pick == "random":
        picks = rng.choices(range(len(weights)), weights=weights, k=PLAN_LENGTH)
    else:
        current = [0.0] * len(weights)
        total = sum(weights)
        picks = []
        for _ in range(PLAN_LENGTH):
            for i, w in enumerate(weights):
                current[i] += w
            best = max(range(len(weights)), key=current.__getitem__)
            current[best] -= total
            picks.append(best)
        # Processes start at different points of the cycle so their sum keeps the mix.
        shift = (worker * 131) % PLAN_LENGTH
        picks = picks[shift:] + picks[:shift]
    counters = [worker] * len(weights)
    result = []
    for t in picks:
        count = len(mix.targets[t].payloads)
        if mix.pick == "random":
            p = rng.randrange(count)
        else:
            p = counters[t] % count
            counters[t] += 1
        result.append((t, p))
    return result


class Engine:
    """One process's generator. ``share``/``shares`` split rates and users between processes."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        worker: int = 0,
        shares: int = 1,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.shares = shares
        self.on_snapshot = on_snapshot
        self.builder = RequestBuilder(config)
        self.plan = plan(config.mix, worker)
        self.plan_index = 0
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.opening = 0
        self.pending: collections.deque[_Request] = collections.deque()
        self.result = WorkerResult(worker)
        self.recorders: list[Recorder] = []
        self.lag: array[int] = array("q")
        self.running_phase: Phase | None = None
        self.phase_index = 0
        self.phase_end = 0.0
        self.users = 0
        self.sent = 0
        self.ok_total = 0
        self.errors_total = 0
        self.per_target = [0] * len(config.mix.targets)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if config.tls else None
        self.process = psutil.Process()
        self.fatal: str | None = None
        self._phase_recorders: list[tuple[list[Recorder], HdrHistogram]] = []
        self._phase_lag = new_histogram()
        self._started: float | None = None
        self._second = 0
        self._last_cpu = 0.0
        self._last_tick = 0.0
        self._last_sent = self._last_ok = self._last_errors = 0
        self._last_targets = [0] * len(config.mix.targets)
        self._second_histogram = new_second_histogram()
        self._lag_max_us = 0

    # --- the hot path ---------------------------------------------------------------------

    def _next(self, scheduled: float, user: bool) -> None:
        if self.fatal:
            return
        t, p = self.plan[self.plan_index]
        self.plan_index = (self.plan_index + 1) % PLAN_LENGTH
        request = _Request(scheduled, self.recorders[t], self.builder.request(t, p), user)
        self.sent += 1
        recorder = request.recorder
        if scheduled < recorder.first_send:
            recorder.first_send = scheduled
        if self.idle:
            connection = self.idle.pop()
            self.busy.add(connection)
            connection.send(request)
            return
        self.pending.append(request)
        if self.opening + len(self.busy) < self.config.max_connections:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self),
                self.config.host,
                self.config.port,
                ssl=self.ssl,
                server_hostname=self.config.host if self.ssl else None,
            )
        except OSError as exc:
            self.opening -= 1
            message = (
                f"cannot connect to {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            )
            self.result.connect_errors.append(message)
            if self.result.connections_opened == 0:
                self.fatal = message
            # Fail one waiting request per failed attempt: the target is measured as down.
            if self.pending:
                self._record_failure(self.pending.popleft(), 0, CONNECT_ERROR)
            return
        self.opening -= 1
        self.result.connections_opened += 1
        self._assign(connection)

    def _assign(self, connection: _Connection) -> None:
        if self.pending:
            self.busy.add(connection)
            connection.send(self.pending.popleft())
        else:
            self.busy.discard(connection)
            self.idle.append(connection)

    def completed(self, connection: _Connection) -> None:
        request = connection.current
        if request is None:
            return  # an answer nobody asked for: ignore, the connection is closed below
        connection.current = None
        now = time.perf_counter()
        recorder = request.recorder
        recorder.last_done = now
        self.per_target[recorder.target] += 1
        status = connection.status
        if status < 300:
            recorder.ok += 1
            self.ok_total += 1
            recorder.pending.append(int((now - request.scheduled) * 1_000_000))
        else:
            recorder.errors[(status, error_code(connection.error_type, connection.body))] += 1
            self.errors_total += 1
        if request.user and now < self.phase_end:
            self._next(now, True)
        if connection.parser.should_keep_alive():
            self._assign(connection)
        else:
            self._drop(connection)

    def failed(self, connection: _Connection, code: str) -> None:
        request = connection.current
        connection.current = None
        if request is not None:
            self._record_failure(request, 0, code)
        self._drop(connection)

    def lost(self, connection: _Connection) -> None:
        request = connection.current
        connection.current = None
        self.busy.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        if request is not None:
            self._record_failure(request, 0, CONNECTION_CLOSED)

    def _record_failure(self, request: _Request, status: int, code: str) -> None:
        recorder = request.recorder
        recorder.errors[(status, code)] += 1
        recorder.last_done = time.perf_counter()
        self.errors_total += 1
        self.per_target[recorder.target] += 1
        if request.user and time.perf_counter() < self.phase_end:
            self._next(time.perf_counter(), True)

    def _drop(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        if connection.transport is not None:
            connection.transport.close()

    # --- phases ---------------------------------------------------------------------------

    def _share(self, value: float) -> float:
        return value / self.shares

    def _user_share(self, users: int) -> int:
        base, extra = divmod(users, self.shares)
        return base + (1 if self.worker < extra else 0)

    async def run(self, phases: list[Phase], start_at: float | None = None) -> WorkerResult:
        self.recorders = []
        # The interpreter's objects so far (imports, config, plan) go to the permanent
        # generation: a full collection otherwise walks them all (~20 ms here), a pause
        # mid-run; the run's own objects are still collected.
        gc.collect()
        gc.freeze()
        try:
            return await self._run(phases, start_at)
        finally:
            gc.unfreeze()

    async def _run(self, phases: list[Phase], start_at: float | None) -> WorkerResult:
        if start_at is not None:
            # Processes start together: each waits for the parent's common start instant.
            await asyncio.sleep(max(0.0, start_at - time.time()))
        await self._warm(phases)
        ticker = asyncio.get_running_loop().create_task(self._ticker())
        try:
            for index, phase in enumerate(phases):
                await self._run_phase(index, phase)
                if self.fatal:
                    break
            await self._drain()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            for connection in [*self.idle, *self.busy]:
                if connection.transport is not None:
                    connection.transport.close()
        self._tick(final=True)
        return self.result

    async def _warm(self, phases: list[Phase]) -> None:
        """Open the connections the first phase needs before its schedule starts: opened on
        demand, hundreds of connects in its first milliseconds delayed its first sends."""
        first = phases[0] if phases else None
        if first is None:
            return
        if first.rate is not None:
            wanted = math.ceil(self._share(first.rate) * WARM_SECONDS)
        else:
            wanted = self._user_share(first.users or 0)
        count = min(self.config.max_connections, max(wanted, 1))
        self.opening += count
        await asyncio.gather(*(self._open() for _ in range(count)))

    async def _run_phase(self, index: int, phase: Phase) -> None:
        self.phase_index = index
        self.running_phase = phase
        self.recorders = [Recorder(index, t) for t in range(len(self.config.mix.targets))]
        self.lag = array("q")
        phase_lag = self._phase_lag = new_histogram()
        self._phase_recorders.append((self.recorders, phase_lag))
        cpu_before = self.process.cpu_times()
        sent_before = self.sent
        started = time.perf_counter()
        self.phase_end = started + phase.duration
        if phase.rate is not None:
            await self._open_loop(self._share(phase.rate), started, phase.duration)
        else:
            await self._closed_loop(phase, started)
        ended = time.perf_counter()
        cpu_after = self.process.cpu_times()
        cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
        self._fold()
        self.result.phases.append(
            PhaseResult(
                phase=index,
                started=started,
                ended=ended,
                recorders=[],
                lag_histogram="",
                cpu_percent=cpu / max(ended - started, 1e-9) * 100.0,
                sent=self.sent - sent_before,
            )
        )

    async def _open_loop(self, rate: float, started: float, duration: float) -> None:
        interval = 1.0 / rate
        total = round(rate * duration)
        n = 0
        lag = self.lag
        clock = time.perf_counter
        while n < total and not self.fatal:
            now = clock()
            due = started + n * interval
            if due > now:
                # uvloop's timers count whole milliseconds: a shorter sleep returns at once, so
                # above 1,000 req/s the loop would spin at 100 % CPU. Waking at most once a ms
                # and sending what is due in a batch adds at most ~1 ms, which each request's
                # latency (timed from its own schedule) and the lag histogram include.
                await asyncio.sleep(max(due - now, MIN_SLEEP_SECONDS))
                continue
            # Send everything that is due; each request keeps its own scheduled instant.
            while n < total and due <= now:
                lag.append(int((now - due) * 1_000_000))
                self._next(due, False)
                n += 1
                due = started + n * interval
            if n % 64 == 0:
                await asyncio.sleep(0)  # let responses in even when always behind
        remaining = self.phase_end - clock()
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def _closed_loop(self, phase: Phase, started: float) -> None:
        assert phase.users is not None
        users = self._user_share(phase.users)
        spawn = self._share(phase.spawn_rate) if phase.spawn_rate else None
        clock = time.perf_counter
        for k in range(users):
            if spawn is not None:
                due = started + k / spawn
                now = clock()
                if due > self.phase_end:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                now = clock()
                self.lag.append(int(max(0.0, now - due) * 1_000_000))
            self.users += 1
            self._next(clock(), True)
        remaining = self.phase_end - clock()
        if remaining > 0:
            await asyncio.sleep(remaining)
        self.users = 0

    async def _drain(self) -> None:
        deadline = time.perf_counter() + self.config.timeout
        while (self.busy or self.pending or self.opening) and time.perf_counter() < deadline:
            if self.fatal and not self.busy:
                break
            await asyncio.sleep(0.01)
        self._expire(math.inf)

    def _expire(self, older_than: float) -> None:
        """Fail requests waiting or in flight for longer than the timeout (``inf``: all)."""
        now = time.perf_counter()
        limit = now - self.config.timeout if older_than != math.inf else math.inf
        for connection in list(self.busy):
            request = connection.current
            if request is not None and (limit == math.inf or request.scheduled < limit):
                connection.current = None
                self._record_failure(request, 0, CLIENT_TIMEOUT)
                self._drop(connection)
        while self.pending and (limit == math.inf or self.pending[0].scheduled < limit):
            self._record_failure(self.pending.popleft(), 0, CLIENT_TIMEOUT)

    # --- once a second --------------------------------------------------------------------

    async def _ticker(self) -> None:
        started = self._started = time.perf_counter()
        self._last_cpu = self._cpu()
        self._last_tick = started
        while True:
            next_second = started + self._second + 1
            await asyncio.sleep(max(0.0, min(next_second, time.perf_counter() + FOLD_SECONDS)
                                    - time.perf_counter()))  # fmt: skip
            if time.perf_counter() < next_second:
                await self._fold_gradually(self._take())
                continue
            # The second's counts and values are taken at its end, folded a chunk at a time
            # (folding them in one go paused the loop for ~6 ms each second at 40k req/s, which
            # the lag check saw), then reported.
            snapshot, histogram, jobs = self._end_second(final=False)
            try:
                await self._fold_gradually(jobs)
            finally:
                self._publish(snapshot, histogram)
            self._expire(0.0)

    def _take(self) -> _Jobs:
        """Hand the hot path fresh arrays; return the filled ones with their histograms."""
        jobs: _Jobs = []
        second = self._second_histogram
        # Requests of earlier phases may still complete: fold every phase's recorders.
        for recorders, _ in self._phase_recorders:
            for recorder in recorders:
                if recorder.pending:
                    jobs.append((recorder.pending, (recorder.histogram, second)))
                    recorder.pending = array("q")
        if self.lag:
            self._lag_max_us = max(self._lag_max_us, max(self.lag))
            jobs.append((array("q", self.lag), (self._phase_lag,)))
            del self.lag[:]  # in place: the open loop holds a reference to this array
        return jobs

    def _fold(self) -> None:
        for values, histograms in self._take():
            fold(values, *histograms)

    async def _fold_gradually(self, jobs: _Jobs) -> None:
        """The ticker's fold: a few hundred counter updates, then let the loop send and
        receive. Folding 0.1 s of 15k req/s at once paused the loop for ~7 ms, which the lag
        check saw as a generator that cannot keep its schedule."""
        pending = [(list(collections.Counter(v).items()), h) for v, h in jobs]
        try:
            while pending:
                items, histograms = pending[-1]
                chunk, rest = items[:FOLD_CHUNK], items[FOLD_CHUNK:]
                for histogram in histograms:
                    _record(chunk, histogram)
                if rest:
                    pending[-1] = (rest, histograms)
                else:
                    pending.pop()
                await asyncio.sleep(0)
        finally:
            for items, histograms in pending:  # cancelled mid-way: nothing is lost
                for histogram in histograms:
                    _record(items, histogram)

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def _tick(self, *, final: bool) -> None:
        snapshot, histogram, jobs = self._end_second(final=final)
        for values, histograms in jobs:
            fold(values, *histograms)
        if final:
            self._finish()
        self._publish(snapshot, histogram)

    def _end_second(self, *, final: bool) -> tuple[Snapshot | None, HdrHistogram, _Jobs]:
        """Close the second: its counts, its histogram (filled by the returned jobs) and what
        is still to fold into it; the hot path goes on into the next second's."""
        histogram = self._second_histogram
        jobs = self._take()
        self._second_histogram = new_second_histogram()
        lag_max = self._lag_max_us / 1000.0
        self._lag_max_us = 0
        if self._started is None:
            return None, histogram, jobs
        now = time.perf_counter()
        cpu = self._cpu()
        phase = self.running_phase
        snapshot = Snapshot(
            worker=self.worker,
            second=self._second,
            phase=self.phase_index,
            target_rate=None if phase is None or phase.rate is None else self._share(phase.rate),
            users=self.users,
            sent=self.sent - self._last_sent,
            ok=self.ok_total - self._last_ok,
            errors=self.errors_total - self._last_errors,
            per_target=[a - b for a, b in zip(self.per_target, self._last_targets, strict=True)],
            histogram="",  # filled in by _publish once the jobs are folded
            lag_max_ms=lag_max,
            cpu_percent=(cpu - self._last_cpu) / max(now - self._last_tick, 1e-9) * 100.0,
            in_flight=len(self.busy) + len(self.pending),
            final=final,
        )
        self._second += 1
        self._last_cpu, self._last_tick = cpu, now
        self._last_sent, self._last_ok, self._last_errors = (
            self.sent,
            self.ok_total,
            self.errors_total,
        )
        self._last_targets = list(self.per_target)
        return snapshot, histogram, jobs

    def _publish(self, snapshot: Snapshot | None, histogram: HdrHistogram) -> None:
        if snapshot is None:
            return
        if histogram.get_total_count():
            snapshot.histogram = histogram.encode().decode("ascii")
        idle = not (snapshot.sent or snapshot.ok or snapshot.errors)
        if self.on_snapshot is not None and not (snapshot.final and idle):
            self.on_snapshot(snapshot)

    def _finish(self) -> None:
        for result, (recorders, lag_histogram) in zip(
            self.result.phases, self._phase_recorders, strict=False
        ):
            result.lag_histogram = lag_histogram.encode().decode("ascii")
            result.recorders = [
                {
                    "target": r.target,
                    "ok": r.ok,
                    "errors": [[s, c, n] for (s, c), n in r.errors.items()],
                    "histogram": r.histogram.encode().decode("ascii")
                    if r.histogram.get_total_count()
                    else "",
                    "first_send": r.first_send if r.first_send != math.inf else None,
                    "last_done": r.last_done or None,
                }
                for r in recorders
            ]
