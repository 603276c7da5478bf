"""Per-container and per-variant metrics in SageMaker's documented shape.

The hot path never touches prometheus-client: each :class:`~mce_router.dataplane.proxy.Upstream`
and :class:`~mce_router.dataplane.proxy.VariantRoute` gets an observer object when the routing
table is built (a compiled :class:`~mce_router.dataplane.stats.CallStats`), and the proxy calls
it once per finished call with plain numbers. Observers keep slot-based accumulators (counts,
sums, histogram buckets, and the current minute's SampleCount/Sum/Minimum/Maximum). Exports read
them:

* ``GET /metrics``: Prometheus text, produced by a prometheus-client custom collector.
* ``GET /metrics/cloudwatch``: PutMetricData datums per minute.

Observers are keyed by their dimensions and reused when a deployment is replaced (blue/green,
restart), so counters keep counting across updates as CloudWatch's do.

Timing (see README "Metrics"): for one request, the router *holds* it from the moment the read
that completes the request arrives until the response has been handed to the client socket.
ContainerLatency of a call runs from just before the request is written to the container
connection until the last response byte is parsed (or the failure is seen). OverheadLatency of a
request is held time minus the sum of its ContainerLatency; per container it is split by stage:
the time before that stage's call since the previous mark (receipt or the previous stage's end),
plus, for the last stage, the time to answer the client. So summed over stages,
ContainerLatency + OverheadLatency == held time, exactly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psutil
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .dataplane.stats import LATENCY_BOUNDS, MINUTES_KEPT, CallMinute, CallStats, RouterAnswers

SAGEMAKER_NAMESPACE = "AWS/SageMaker"
ENDPOINTS_NAMESPACE = "/aws/sagemaker/Endpoints"
#: The router's own metrics (not SageMaker's): the requests it answered itself with an error.
ROUTER_NAMESPACE = "MceRouter"


@dataclass(frozen=True, slots=True)
class MinuteDatum:
    """One minute of one series: CloudWatch's StatisticValues."""

    minute: int  # epoch minute
    count: int
    total: float
    low: float
    high: float


class MinuteSeries:
    """A gauge-like series (resource usage): the current minute and the last hour of minutes."""

    __slots__ = ("count", "high", "history", "low", "minute", "total")

    def __init__(self) -> None:
        self.minute = 0
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.history: collections.deque[MinuteDatum] = collections.deque(maxlen=MINUTES_KEPT)

    def add(self, value: float, minute: int) -> None:
        if minute != self.minute:
            self.roll(minute)
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def roll(self, minute: int) -> None:
        if self.count:
            self.history.append(
                MinuteDatum(self.minute, self.count, self.total, self.low, self.high)
            )
        self.minute = minute
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf

    def data(self, *, include_current: bool, now_minute: int) -> list[MinuteDatum]:
        if self.minute != now_minute:
            self.roll(now_minute)
        result = list(self.history)
        if include_current and self.count:
            result.append(MinuteDatum(self.minute, self.count, self.total, self.low, self.high))
        return result


_time = time.time


def merge_minutes(per_source: Iterable[list[CallMinute]]) -> list[CallMinute]:
    """Combine the minutes of several containers into the variant's (Direct endpoints)."""
    merged: dict[int, CallMinute] = {}
    for minutes in per_source:
        for m in minutes:
            old = merged.get(m.minute)
            merged[m.minute] = m if old is None else CallMinute(
                m.minute, old.count + m.count, old.errors_4xx + m.errors_4xx,
                old.errors_5xx + m.errors_5xx, old.latency_sum + m.latency_sum,
                min(old.latency_min, m.latency_min), max(old.latency_max, m.latency_max),
                old.overhead_sum + m.overhead_sum, min(old.overhead_min, m.overhead_min),
                max(old.overhead_max, m.overhead_max),
            )  # fmt: skip
    return [merged[k] for k in sorted(merged)]


def _cumulative(buckets: list[int]) -> list[tuple[str, float]]:
    running = 0
    result: list[tuple[str, float]] = []
    for bound, count in zip((*LATENCY_BOUNDS, math.inf), buckets, strict=True):
        running += count
        result.append(("+Inf" if bound == math.inf else repr(bound), running))
    return result


class UsageMetrics:
    """CPUUtilization / MemoryUtilization of one container, sampled in the background."""

    __slots__ = ("cpu", "cpu_now", "dimensions", "memory", "memory_now")

    def __init__(self, endpoint: str, variant: str, container: str) -> None:
        self.dimensions = (endpoint, variant, container)
        self.cpu = MinuteSeries()
        self.memory = MinuteSeries()
        self.cpu_now = 0.0
        self.memory_now = 0.0

    def sample(self, cpu_percent: float, memory_percent: float) -> None:
        minute = int(_time() // 60)
        self.cpu_now, self.memory_now = cpu_percent, memory_percent
        self.cpu.add(cpu_percent, minute)
        self.memory.add(memory_percent, minute)


@dataclass(frozen=True, slots=True)
class UsageSource:
    """What the sampler needs of one running container: labels and its root process ids."""

    endpoint: str
    variant: str
    container: str
    pids: tuple[int, ...]
    #: Runtimes that measure usage themselves (a container engine's stats) give this instead
    #: of pids: (CPU percent of one core, memory percent of the instance), None while unknown.
    probe: Callable[[], Awaitable[tuple[float, float] | None]] | None = None


class ProcessTreeSampler:
    """CPU (percent of one core) and memory (percent of host RAM) of process trees, by psutil.

    CPU is the growth of user+system time of the root processes and all their descendants
    between two samples over the wall time between them.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[int, ...], tuple[float, float]] = {}
        self._total_memory = psutil.virtual_memory().total

    def sample(self, pids: tuple[int, ...]) -> tuple[float, float] | None:
        cpu_seconds = 0.0
        rss = 0
        found = False
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for process in (root, *root.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        times = process.cpu_times()
                        cpu_seconds += times.user + times.system
                        rss += process.memory_info().rss
                        found = True
        if not found:
            self._last.pop(pids, None)
            return None
        now = time.monotonic()
        previous = self._last.get(pids)
        self._last[pids] = (now, cpu_seconds)
        if previous is None or now <= previous[0]:
            return None  # a rate needs two samples
        cpu_percent = max(0.0, cpu_seconds - previous[1]) / (now - previous[0]) * 100.0
        return cpu_percent, rss / self._total_memory * 100.0

    def forget_others(self, keep: Iterable[tuple[int, ...]]) -> None:
        wanted = set(keep)
        for key in list(self._last):
            if key not in wanted:
                del self._last[key]


class RouterMetrics(Collector):
    """All metrics of one router; a fresh registry per router, so nothing is global."""

    def __init__(self) -> None:
        self.containers: dict[tuple[str, str, str], CallStats] = {}
        #: InvokeEndpointWithResponseStream calls by container (see :meth:`stream`).
        self.streams: dict[tuple[str, str, str], CallStats] = {}
        #: Variants whose requests are recorded as a whole (Serial pipelines).
        self.variants: dict[tuple[str, str], CallStats] = {}
        #: Direct variants: each request touches one container, so the variant's numbers are
        #: exactly the sum of its containers' and need not be recorded twice per request.
        self.direct_variants: dict[tuple[str, str], list[CallStats]] = {}
        self.usage: dict[tuple[str, str, str], UsageMetrics] = {}
        #: The errors the router answered itself (the data plane records them).
        self.answers = RouterAnswers()
        #: Brings in what other processes recorded (data-plane workers) before an export.
        self.refresh: Callable[[], Awaitable[None]] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._sampler = ProcessTreeSampler()

    async def refreshed(self) -> RouterMetrics:
        """These metrics, with every worker process's calls so far added in."""
        if self.refresh is not None:
            await self.refresh()
        return self

    # binding, at routing-table build time
    def container(self, endpoint: str, variant: str, container: str) -> CallStats:
        key = (endpoint, variant, container)
        found = self.containers.get(key)
        if found is None:
            found = self.containers[key] = CallStats(*key)
        return found

    def stream(self, endpoint: str, variant: str, container: str) -> CallStats:
        """Response streams of a container: the latency recorded is the time to first byte,
        the overhead the stream's whole duration (exported as such, not as OverheadLatency)."""
        key = (endpoint, variant, container)
        found = self.streams.get(key)
        if found is None:
            found = self.streams[key] = CallStats(*key)
        return found

    def variant(self, endpoint: str, variant: str) -> CallStats:
        """The observer of a variant whose requests span several containers (Serial)."""
        key = (endpoint, variant)
        self.direct_variants.pop(key, None)
        found = self.variants.get(key)
        if found is None:
            found = self.variants[key] = CallStats(*key)
        return found

    def direct_variant(self, endpoint: str, variant: str, containers: list[CallStats]) -> None:
        """Declare a Direct variant, derived from its containers' stats at export time."""
        key = (endpoint, variant)
        known = self.direct_variants.setdefault(key, [])
        known.extend(c for c in containers if c not in known)
        if key in self.variants:
            # Switched from Serial by an update: keep the recorded history in the export.
            known.append(self.variants.pop(key))

    def variant_stats(self) -> Iterator[tuple[tuple[str, ...], list[CallStats]]]:
        for key, stats in self.variants.items():
            yield key, [stats]
        yield from self.direct_variants.items()

    # resource sampling, off the hot path
    def sample_usage(self, sources: Iterable[UsageSource]) -> None:
        seen = []
        for source in sources:
            seen.append(source.pids)
            result = self._sampler.sample(source.pids)
            if result is not None:
                self._record_usage(source, result)
        self._sampler.forget_others(seen)

    def _record_usage(self, source: UsageSource, result: tuple[float, float]) -> None:
        key = (source.endpoint, source.variant, source.container)
        usage = self.usage.get(key)
        if usage is None:
            usage = self.usage[key] = UsageMetrics(*key)
        usage.sample(*result)

    async def sample_probes(self, sources: Iterable[UsageSource]) -> None:
        """Ask the runtimes that measure usage themselves (concurrently: one engine call each)."""
        probes = [(source, source.probe) for source in sources if source.probe is not None]
        results = await asyncio.gather(*(probe() for _, probe in probes), return_exceptions=True)
        for (source, _), result in zip(probes, results, strict=True):
            if isinstance(result, tuple):
                self._record_usage(source, result)

    async def run_sampler(
        self, sources: Callable[[], Iterable[UsageSource]], interval: float
    ) -> None:
        while True:
            current = list(sources())
            # psutil reads /proc synchronously; a thread keeps the event loop free.
            await asyncio.to_thread(self.sample_usage, [s for s in current if s.probe is None])
            await self.sample_probes(current)
            await asyncio.sleep(interval)

    async def run_emf_writer(
        self, write: Callable[[str], None], interval: float, namespaces: dict[str, str]
    ) -> None:
        """Every ``interval`` seconds, the minutes finished since the last write as EMF lines
        (:func:`emf_lines`); once cancelled (the router stops), the unfinished minute too."""
        since: float | None = None
        try:
            while True:
                await asyncio.sleep(interval)
                since = self._write_emf(write, namespaces, since, include_current=False)
        finally:
            self._write_emf(write, namespaces, since, include_current=True)

    def _write_emf(
        self,
        write: Callable[[str], None],
        namespaces: dict[str, str],
        since: float | None,
        *,
        include_current: bool,
    ) -> float | None:
        """Write the datums from ``since`` on; returns where the next write starts."""
        datums = self.cloudwatch_datums(include_current=include_current, since=since)
        lines = emf_lines(datums, namespaces)
        if lines:
            write("".join(line + "\n" for line in lines))
        if datums:
            return float(max(d["Timestamp"] for d in datums) + 60)
        return since

    # Prometheus
    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        c_labels = ["endpoint_name", "variant_name", "container_name"]
        v_labels = ["endpoint_name", "variant_name"]
        yield from _call_families(
            "sagemaker_container_",
            "container",
            "Time for the container to respond as seen by the router (ContainerLatency).",
            "sagemaker_container_latency_seconds",
            c_labels,
            ((key, [stats]) for key, stats in self.containers.items()),
        )
        yield from _call_families(
            "sagemaker_",
            "variant",
            "Sum of ContainerLatency over the containers a request went through (ModelLatency).",
            "sagemaker_model_latency_seconds",
            v_labels,
            self.variant_stats(),
        )
        yield from _stream_families(c_labels, self.streams.items())
        cpu = GaugeMetricFamily(
            "sagemaker_container_cpu_utilization_percent",
            "CPU of the container's process tree, percent of one core (CPUUtilization).",
            labels=c_labels,
        )
        memory = GaugeMetricFamily(
            "sagemaker_container_memory_utilization_percent",
            "Resident memory of the container's process tree, percent of host memory "
            "(MemoryUtilization).",
            labels=c_labels,
        )
        for u in self.usage.values():
            cpu.add_metric(list(u.dimensions), u.cpu_now)
            memory.add_metric(list(u.dimensions), u.memory_now)
        yield from (cpu, memory)
        rejected = CounterMetricFamily(
            "mce_router_rejected_requests",
            "Requests the router answered itself with an error: refused before any container "
            "(validation, authentication, unknown endpoint, too large, draining, busy) or a "
            "container failure answered as the router's own error (ModelError). "
            "endpoint_name is empty when no endpoint was named, (other) beyond 100 unknown names.",
            labels=["endpoint_name", "variant_name", "status", "reason"],
        )
        for (endpoint, variant, status, code), count in self.answers.totals.items():
            rejected.add_metric([endpoint, variant, str(status), code], count)
        yield rejected

    # CloudWatch
    def cloudwatch_datums(
        self, *, include_current: bool = False, since: float | None = None
    ) -> list[dict[str, Any]]:
        """PutMetricData datums, one per metric, dimension set and minute, each also naming its
        documented ``Namespace``."""
        now = _time()
        datums: list[dict[str, Any]] = []
        for key, stats in self.containers.items():
            minutes = stats.minutes(include_current=include_current, now=now)
            datums.extend(_call_datums(key, minutes, "ContainerLatency", since))
        for variant_key, sources in self.variant_stats():
            minutes = merge_minutes(
                s.minutes(include_current=include_current, now=now) for s in sources
            )
            datums.extend(_call_datums(variant_key, minutes, "ModelLatency", since))
        now_minute = int(now // 60)
        for u in self.usage.values():
            dims = _dimensions(u.dimensions)
            for name, series in (("CPUUtilization", u.cpu), ("MemoryUtilization", u.memory)):
                for d in series.data(include_current=include_current, now_minute=now_minute):
                    if since is None or d.minute * 60 >= since:
                        datums.append(
                            _datum(
                                ENDPOINTS_NAMESPACE,
                                name,
                                dims,
                                d.minute,
                                "Percent",
                                d.count,
                                d.total,
                                d.low,
                                d.high,
                            )
                        )
        datums.extend(self._answer_datums(include_current, since, now_minute))
        return datums

    def _answer_datums(
        self, include_current: bool, since: float | None, now_minute: int
    ) -> Iterator[dict[str, Any]]:
        for minute, counts in self.answers.minutes.items():
            if (minute == now_minute and not include_current) or (
                since is not None and minute * 60 < since
            ):
                continue
            for (endpoint, variant, status, code), count in counts.items():
                dims = [{"Name": "EndpointName", "Value": endpoint}] if endpoint else []
                if variant:
                    dims.append({"Name": "VariantName", "Value": variant})
                dims += [
                    {"Name": "StatusCode", "Value": str(status)},
                    {"Name": "ErrorCode", "Value": code},
                ]
                yield _datum(
                    ROUTER_NAMESPACE, "RejectedRequests", dims, minute, "Count", count, count,
                    1.0, 1.0,
                )  # fmt: skip


def _call_families(
    prefix: str,
    what: str,
    latency_help: str,
    latency_name: str,
    labels: list[str],
    items: Iterable[tuple[tuple[str, ...], list[CallStats]]],
) -> Iterator[Any]:
    invocations = CounterMetricFamily(
        f"{prefix}invocations", f"Invocations of a {what} (Invocations).", labels=labels
    )
    e4 = CounterMetricFamily(
        f"{prefix}invocation_4xx_errors",
        f"Invocations of a {what} answered with 4xx by the model (Invocation4XXErrors).",
        labels=labels,
    )
    e5 = CounterMetricFamily(
        f"{prefix}invocation_5xx_errors",
        f"Invocations of a {what} answered with 5xx by the model or with no valid answer "
        "(Invocation5XXErrors).",
        labels=labels,
    )
    latency = HistogramMetricFamily(latency_name, latency_help, labels=labels)
    overhead = HistogramMetricFamily(
        f"{prefix}overhead_latency_seconds",
        f"Router time of a {what}'s requests beyond the model's (OverheadLatency).",
        labels=labels,
    )
    for key, sources in items:
        values = list(key)
        invocations.add_metric(values, sum(s.count for s in sources))
        e4.add_metric(values, sum(s.errors_4xx for s in sources))
        e5.add_metric(values, sum(s.errors_5xx for s in sources))
        latency.add_metric(
            values,
            _cumulative([sum(b) for b in zip(*(s.latency_buckets for s in sources), strict=True)]),
            sum(s.latency_sum for s in sources),
        )
        overhead.add_metric(
            values,
            _cumulative([sum(b) for b in zip(*(s.overhead_buckets for s in sources), strict=True)]),
            sum(s.overhead_sum for s in sources),
        )
    yield from (invocations, e4, e5, latency, overhead)


def _stream_families(
    labels: list[str], items: Iterable[tuple[tuple[str, ...], CallStats]]
) -> Iterator[Any]:
    """Response streams per container (RouterMetrics.stream): how many, how long until the
    first part reached the client, how long until the stream ended."""
    invocations = CounterMetricFamily(
        "mce_router_stream_invocations",
        "InvokeEndpointWithResponseStream calls of a container (also counted in its Invocations).",
        labels=labels,
    )
    first_byte = HistogramMetricFamily(
        "mce_router_stream_time_to_first_byte_seconds",
        "From the request sent to the container to its first part handed to the client "
        "(streams that failed before it: 0).",
        labels=labels,
    )
    duration = HistogramMetricFamily(
        "mce_router_stream_duration_seconds",
        "From the request's arrival at the router to the stream's end.",
        labels=labels,
    )
    for key, stats in items:
        values = list(key)
        invocations.add_metric(values, stats.count)
        first_byte.add_metric(values, _cumulative(stats.latency_buckets), stats.latency_sum)
        duration.add_metric(values, _cumulative(stats.overhead_buckets), stats.overhead_sum)
    yield from (invocations, first_byte, duration)


_MICROS = 1_000_000.0


def _call_datums(
    key: tuple[str, ...], minutes: list[CallMinute], latency_name: str, since: float | None
) -> Iterator[dict[str, Any]]:
    dims = _dimensions(key)
    ns = SAGEMAKER_NAMESPACE
    for m in minutes:
        if since is not None and m.minute * 60 < since:
            continue
        n = m.count
        yield _datum(ns, "Invocations", dims, m.minute, "None", n, n, 1.0, 1.0)
        # Errors are published as one 0/1 sample per invocation, so Average is the error rate.
        for name, errors in (
            ("Invocation4XXErrors", m.errors_4xx),
            ("Invocation5XXErrors", m.errors_5xx),
        ):
            yield _datum(
                ns,
                name,
                dims,
                m.minute,
                "None",
                n,
                errors,
                1.0 if errors == n else 0.0,
                1.0 if errors else 0.0,
            )
        yield _datum(
            ns,
            latency_name,
            dims,
            m.minute,
            "Microseconds",
            n,
            m.latency_sum * _MICROS,
            m.latency_min * _MICROS,
            m.latency_max * _MICROS,
        )
        yield _datum(
            ns,
            "OverheadLatency",
            dims,
            m.minute,
            "Microseconds",
            n,
            m.overhead_sum * _MICROS,
            m.overhead_min * _MICROS,
            m.overhead_max * _MICROS,
        )


def _datum(
    namespace: str, name: str, dims: list[dict[str, str]], minute: int, unit: str,
    count: int, total: float, low: float, high: float,
) -> dict[str, Any]:  # fmt: skip
    return {
        "Namespace": namespace,
        "MetricName": name,
        "Dimensions": dims,
        "Timestamp": minute * 60,
        "Unit": unit,
        "StatisticValues": {
            "SampleCount": float(count),
            "Sum": float(total),
            "Minimum": float(low),
            "Maximum": float(high),
        },
    }


def _dimensions(values: tuple[str, ...]) -> list[dict[str, str]]:
    names = ("EndpointName", "VariantName", "ContainerName")
    return [{"Name": n, "Value": v} for n, v in zip(names, values, strict=False)]


def put_metric_data_requests(
    datums: list[dict[str, Any]], namespaces: dict[str, str], batch: int = 1000
) -> list[dict[str, Any]]:
    """Group datums into ``put_metric_data(**request)`` arguments: one namespace per request,
    at most ``batch`` datums each. ``namespaces`` maps documented namespaces to the ones to
    publish under (CloudWatch reserves ``AWS/`` for AWS services)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for datum in datums:
        plain = {k: v for k, v in datum.items() if k != "Namespace"}
        namespace = namespaces.get(datum["Namespace"], datum["Namespace"])
        grouped.setdefault(namespace, []).append(plain)
    return [
        {"Namespace": namespace, "MetricData": items[i : i + batch]}
        for namespace, items in grouped.items()
        for i in range(0, len(items), batch)
    ]


#: Metrics whose one EMF value is the minute's sum (a count, as SageMaker's Sum statistic of
#: them); the others' is the minute's average (emf_lines).
_COUNTED = frozenset(
    {"Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "RejectedRequests"}
)


def emf_lines(datums: list[dict[str, Any]], namespaces: dict[str, str]) -> list[str]:
    """CloudWatch Embedded Metric Format documents (one JSON line each) of PutMetricData
    datums: the same namespaces (renamed as in :func:`put_metric_data_requests`), metric names,
    dimensions, units and minutes. One document per namespace, dimension set and minute.

    EMF carries values, not statistic sets: a count metric's value is the minute's sum, any
    other's the minute's average, with its SampleCount, Minimum and Maximum kept beside it as
    plain members (``<Metric>.SampleCount``, ...) for CloudWatch Logs Insights."""
    documents: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, Any]] = {}
    for datum in datums:
        namespace = namespaces.get(datum["Namespace"], datum["Namespace"])
        dims = tuple((d["Name"], d["Value"]) for d in datum["Dimensions"])
        key = (namespace, dims, int(datum["Timestamp"]))
        document = documents.get(key)
        if document is None:
            document = documents[key] = {
                "_aws": {
                    "Timestamp": int(datum["Timestamp"]) * 1000,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": namespace,
                            "Dimensions": [[name for name, _ in dims]],
                            "Metrics": [],
                        }
                    ],
                },
                **dict(dims),
            }
        name = datum["MetricName"]
        stats = datum["StatisticValues"]
        document["_aws"]["CloudWatchMetrics"][0]["Metrics"].append(
            {"Name": name, "Unit": datum["Unit"]}
        )
        if name in _COUNTED:
            document[name] = stats["Sum"]
        else:
            count = stats["SampleCount"]
            document[name] = stats["Sum"] / count if count else 0.0
            document[f"{name}.SampleCount"] = count
            document[f"{name}.Minimum"] = stats["Minimum"]
            document[f"{name}.Maximum"] = stats["Maximum"]
    return [orjson.dumps(document).decode() for document in documents.values()]
