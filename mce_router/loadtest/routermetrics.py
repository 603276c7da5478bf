"""The router's own view of the run, read from its admin port's ``/metrics`` over HTTP.

Counters and latency histograms are read before and after the run (the difference is the
run's); the CPU and memory gauges are polled during it. Everything is per container of the
endpoint under test, so client-side and server-side latency can sit side by side.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families

from .config import LoadConfig

POLL_SECONDS = 1.0

_CONTAINER_COUNTERS = {
    "sagemaker_container_invocations": "invocations",
    "sagemaker_container_invocation_4xx_errors": "errors_4xx",
    "sagemaker_container_invocation_5xx_errors": "errors_5xx",
}
_HISTOGRAMS = {
    "sagemaker_container_latency_seconds": "container_latency",
    "sagemaker_container_overhead_latency_seconds": "overhead_latency",
}
_GAUGES = {
    "sagemaker_container_cpu_utilization_percent": "cpu",
    "sagemaker_container_memory_utilization_percent": "memory",
}


@dataclass(slots=True)
class Scrape:
    counters: dict[tuple[str, str], float] = field(default_factory=dict)
    #: (container, histogram) -> {upper bound: cumulative count}, plus sums and counts
    buckets: dict[tuple[str, str], dict[float, float]] = field(default_factory=dict)
    sums: dict[tuple[str, str], float] = field(default_factory=dict)
    counts: dict[tuple[str, str], float] = field(default_factory=dict)
    gauges: dict[tuple[str, str], float] = field(default_factory=dict)


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def parse(text: str, endpoint: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("endpoint_name") != endpoint or "container_name" not in labels:
                continue
            container = labels["container_name"]
            name = sample.name
            base = name.removesuffix("_total")
            if base in _CONTAINER_COUNTERS:
                key = (container, _CONTAINER_COUNTERS[base])
                scrape.counters[key] = scrape.counters.get(key, 0.0) + sample.value
                continue
            for prefix, what in _HISTOGRAMS.items():
                if name == f"{prefix}_bucket":
                    bound = float(labels["le"])
                    series = scrape.buckets.setdefault((container, what), {})
                    series[bound] = series.get(bound, 0.0) + sample.value
                elif name == f"{prefix}_sum":
                    scrape.sums[(container, what)] = sample.value
                elif name == f"{prefix}_count":
                    scrape.counts[(container, what)] = sample.value
            if name in _GAUGES:
                scrape.gauges[(container, _GAUGES[name])] = sample.value
    return scrape


def bucket_percentile(buckets: dict[float, float], fraction: float) -> float | None:
    """Percentile from cumulative Prometheus buckets, interpolated inside the bucket (what
    ``histogram_quantile`` does); ``None`` without samples."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = fraction * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return bounds[-1]


def probe_admin_url(config: LoadConfig) -> str | None:
    """``auto``: the router's admin port is, by its default layout, the runtime port + 1."""
    if config.admin_url is None:
        return None
    if config.admin_url != "auto":
        return config.admin_url.rstrip("/")
    parts = urlsplit(config.url)
    if parts.scheme != "http":
        return None
    candidate = urlunsplit(("http", f"{parts.hostname}:{config.port + 1}", "", "", ""))
    try:
        text = fetch(f"{candidate}/metrics", timeout=1.0)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    if f'endpoint_name="{config.endpoint}"' not in text:
        return None
    return candidate


class RouterWatcher:
    """Scrapes ``/metrics`` before, during (a background thread) and after the run."""

    def __init__(self, admin_url: str, endpoint: str) -> None:
        self.admin_url = admin_url
        self.endpoint = endpoint
        self.before: Scrape | None = None
        self.after: Scrape | None = None
        #: raw /metrics texts polled during the run, parsed only afterwards (see _poll)
        self.texts: list[tuple[float, str]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = 0.0

    def _scrape(self) -> Scrape:
        return parse(fetch(f"{self.admin_url}/metrics"), self.endpoint)

    def start(self) -> None:
        self.started = time.time()
        try:
            self.before = self._scrape()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self.error = f"cannot read {self.admin_url}/metrics: {exc}"
            return
        self._thread = threading.Thread(target=self._poll, name="router-metrics", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        # Only fetch here: parsing Prometheus text is pure Python and would hold the GIL for
        # milliseconds while the generator's event loop waits for it at every socket call (the
        # convoy effect: its scheduling lag went from under 1 ms to 10-20 ms).
        url = f"{self.admin_url}/metrics"
        while not self._stop.wait(POLL_SECONDS):
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                self.texts.append((time.time() - self.started, fetch(url)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.before is not None:
            try:
                self.after = self._scrape()
            except (OSError, urllib.error.URLError, ValueError) as exc:
                self.error = f"cannot read {self.admin_url}/metrics: {exc}"

    def report(self, duration: float) -> dict[str, Any] | None:
        """Per container: the run's invocations and errors, ContainerLatency and
        OverheadLatency (mean, p50, p99 from the router's buckets, in ms) and CPU/memory."""
        if self.before is None or self.after is None:
            return None if self.error is None else {"error": self.error}
        before, after = self.before, self.after
        samples = [(t, parse(text, self.endpoint)) for t, text in self.texts]
        containers = sorted({c for c, _ in after.counters})
        result: dict[str, Any] = {}
        for container in containers:
            entry: dict[str, Any] = {
                what: after.counters.get((container, what), 0.0)
                - before.counters.get((container, what), 0.0)
                for what in _CONTAINER_COUNTERS.values()
            }
            for what in _HISTOGRAMS.values():
                key = (container, what)
                delta = {
                    bound: count - before.buckets.get(key, {}).get(bound, 0.0)
                    for bound, count in after.buckets.get(key, {}).items()
                }
                n = after.counts.get(key, 0.0) - before.counts.get(key, 0.0)
                total = after.sums.get(key, 0.0) - before.sums.get(key, 0.0)
                p50 = bucket_percentile(delta, 0.5)
                p99 = bucket_percentile(delta, 0.99)
                entry[f"{what}_ms"] = {
                    "mean": total / n * 1000.0 if n else None,
                    "p50": None if p50 is None else p50 * 1000.0,
                    "p99": None if p99 is None else p99 * 1000.0,
                }
            for what in _GAUGES.values():
                series = [
                    [round(t, 3), s.gauges[(container, what)]]
                    for t, s in samples
                    if (container, what) in s.gauges
                ]
                values = [v for _, v in series]
                entry[f"{what}_percent"] = {
                    "mean": sum(values) / len(values) if values else None,
                    "max": max(values) if values else None,
                    "samples": series,
                }
            entry["invocations_per_second"] = entry["invocations"] / duration if duration else None
            result[container] = entry
        return {"admin_url": self.admin_url, "containers": result}
