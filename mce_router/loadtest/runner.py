"""``run_load(LoadConfig) -> Report``: processes, phases, find-the-limit, the router's metrics."""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import queue
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import psutil
import uvloop
from hdrh.histogram import HdrHistogram

from . import autoscale
from .config import FindLimit, LoadConfig, LoadTestError, Phase, Thresholds
from .engine import Engine, Snapshot, WorkerResult, new_histogram
from .progress import Progress, Timeline
from .report import SCHEMA, Report, stats
from .routermetrics import RouterWatcher, probe_admin_url

#: Processes are spawned, import the package, then all start at this delay after the parent
#: asked them to, so their rates add up from the first second.
SPAWN_LEAD_SECONDS = 1.5


def run_load(config: LoadConfig, *, out: TextIO | None = None) -> Report:
    """Run the configured load against the endpoint and return the report.

    Blocking, with its own (uvloop) event loop; from async code call it in a thread. Raises
    :class:`LoadTestError` (one line) when the target cannot be reached at all.
    """
    return _Run(config, out).run()


@dataclass(slots=True)
class _Segment:
    """One engine run: phases run back to back by every process."""

    label: str
    names: list[str]
    phases: list[Phase]
    results: list[WorkerResult]


class _Run:
    def __init__(self, config: LoadConfig, out: TextIO | None) -> None:
        self.config = config
        self.names = [t.name for t in config.mix.targets]
        self.progress = Progress(out, enabled=config.progress)
        self.started = time.time()
        self.timeline = Timeline(self.names, self.started)
        self.segments: list[_Segment] = []
        self.notes: list[str] = []

    def run(self) -> Report:
        preflight(self.config)
        admin_url = probe_admin_url(self.config)
        watcher = RouterWatcher(admin_url, self.config.endpoint) if admin_url else None
        if watcher is not None:
            watcher.start()
        elif self.config.admin_url == "auto":
            self.notes.append(
                "router metrics: none (no router admin port found at the runtime port + 1; "
                "pass --admin-url)"
            )
        limit = None
        try:
            if self.config.find_limit is not None:
                limit = self._find_limit(self.config.find_limit)
            else:
                self._segment("load", list(self.config.phases), self.config)
        finally:
            self.progress.close()
            if watcher is not None:
                watcher.stop()
        duration = time.time() - self.started
        return self._report(limit, watcher, duration)

    # --- running -------------------------------------------------------------------------

    def _segment(self, label: str, phases: list[Phase], config: LoadConfig) -> _Segment:
        offset = round(time.time() - self.started)
        names = [t.name for t in config.mix.targets]
        index = {n: i for i, n in enumerate(self.names)}

        def on_snapshot(snapshot: Snapshot) -> None:
            # Per-target counts are reported in the run's target order whatever the sub-mix.
            full = [0] * len(self.names)
            for name, count in zip(names, snapshot.per_target, strict=True):
                full[index[name]] += count
            snapshot.per_target = full
            second = self.timeline.add(snapshot, offset)
            if snapshot.final:
                return  # a partial second: in the timeline, not worth a progress line
            phase = phases[min(snapshot.phase, len(phases) - 1)]
            label_now = f"{label} {snapshot.phase + 1}/{len(phases)}" if len(phases) > 1 else label
            if label_now != self.progress.label:
                self.progress.phase(label_now)
            elapsed = snapshot.second + 1 - sum(p.duration for p in phases[: snapshot.phase])
            self.progress.show(second, self.names, elapsed / phase.duration, config.processes)

        self.progress.phase(label)
        results = _run_processes(config, phases, on_snapshot)
        errors = [e for r in results for e in r.connect_errors]
        if errors and not any(r.connections_opened for r in results):
            raise LoadTestError(errors[0])
        segment = _Segment(label, names, phases, results)
        self.segments.append(segment)
        return segment

    def _find_limit(self, spec: FindLimit) -> dict[str, Any]:
        result: dict[str, Any] = {
            "thresholds": _thresholds_dict(spec.thresholds),
            "endpoint": self._search(spec, self.config, "endpoint"),
            "containers": {},
        }
        if spec.per_container and len(self.names) > 1:
            for name in self.names:
                sub = self.config.replace(mix=self.config.mix.only(name))
                result["containers"][name] = self._search(spec, sub, name)
        return result

    def _search(self, spec: FindLimit, config: LoadConfig, label: str) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        stopped_by = "max_rate reached"
        invocations = 0
        for rate in spec.rates():
            phase = Phase(duration=spec.step_duration, rate=rate, name=f"{label} {rate:g}/s")
            segment = self._segment(f"limit {label} {rate:g}/s", [phase], config)
            merged = _merge_phase(segment.results, 0, len(config.mix.targets))
            step_stats = stats(merged.histogram, merged.ok, merged.errors, merged.window)
            verdict = _verdict(self.config, segment.results)
            invocations += step_stats["requests"]
            failed = _failed_thresholds(spec.thresholds, step_stats)
            step = {
                "target_rps": rate,
                "achieved_rps": step_stats["achieved_rps"],
                "requests": step_stats["requests"],
                "error_rate": step_stats["error_rate"],
                "latency_ms": step_stats["latency_ms"],
                "passed": not failed and verdict["valid"],
                "failed": failed,
                "generator_valid": verdict["valid"],
            }
            steps.append(step)
            if not verdict["valid"]:
                stopped_by = "the generator saturated: " + "; ".join(verdict["reasons"])
                break
            if failed:
                stopped_by = ", ".join(failed)
                break
            best = step
            if spec.thresholds.max_invocations and invocations >= spec.thresholds.max_invocations:
                stopped_by = f"max_invocations {spec.thresholds.max_invocations} reached"
                break
        return {
            "max_rps": None if best is None else best["target_rps"],
            "achieved_rps": None if best is None else best["achieved_rps"],
            "p99_ms": None if best is None else best["latency_ms"]["p99"],
            "stopped_by": stopped_by,
            "valid": all(s["generator_valid"] for s in steps[:-1]) if steps else False,
            "steps": steps,
        }

    # --- the report ---------------------------------------------------------------------

    def _report(
        self, limit: dict[str, Any] | None, watcher: RouterWatcher | None, duration: float
    ) -> Report:
        count = len(self.names)
        phases_out: list[dict[str, Any]] = []
        overall = _Merged()
        per_target = [_Merged() for _ in self.names]
        for segment in self.segments:
            sub_names = segment.names
            for p, phase in enumerate(segment.phases):
                merged = _merge_phase(segment.results, p, len(sub_names))
                overall.absorb(merged)
                containers = {}
                for i, name in enumerate(sub_names):
                    one = _merge_phase(segment.results, p, len(sub_names), only=i)
                    per_target[self.names.index(name)].absorb(one)
                    containers[name] = stats(one.histogram, one.ok, one.errors, one.window)
                verdict = _verdict(self.config, segment.results, phase=p)
                phases_out.append(
                    {
                        "name": phase.name or segment.label,
                        "mode": phase.mode,
                        "target_rps": phase.rate,
                        "users": phase.users,
                        "duration_s": phase.duration,
                        "overall": stats(merged.histogram, merged.ok, merged.errors, merged.window),
                        "containers": containers,
                        "generator": verdict,
                    }
                )
        reasons = sorted({r for p in phases_out for r in p["generator"]["reasons"]})
        if limit is not None:
            # In find-the-limit the step that saturated the generator ends the search; the
            # rates below it are still valid measurements.
            valid = all(s["valid"] for s in [limit["endpoint"], *limit["containers"].values()])
        else:
            valid = not reasons
        overall_stats = stats(overall.histogram, overall.ok, overall.errors, overall.window)
        containers_stats = {
            name: stats(m.histogram, m.ok, m.errors, m.window)
            for name, m in zip(self.names, per_target, strict=True)
        }
        router = watcher.report(duration) if watcher is not None else None
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "started_at": self.started,
            "duration_s": duration,
            "url": self.config.url,
            "endpoint": self.config.endpoint,
            "processes": self.config.processes,
            "signed": _signed(self.config),
            "mix": [
                {
                    "container": t.container,
                    "name": t.name,
                    "weight": t.weight,
                    "payloads": list(t.payload_names),
                    "content_type": t.content_type,
                    "accept": t.accept,
                }
                for t in self.config.mix.targets
            ],
            "valid": valid,
            "invalid_reasons": reasons,
            "notes": self.notes,
            "overall": overall_stats,
            "containers": containers_stats,
            "phases": phases_out,
            "limit": limit,
            "timeline": self.timeline.rows(),
            "router": router,
            "autoscaling": None,
        }
        data["autoscaling"] = self._autoscaling(data, count)
        return Report(data)

    def _autoscaling(self, data: dict[str, Any], count: int) -> dict[str, Any] | None:
        router = data.get("router") or {}
        containers = router.get("containers") or {}
        if count < 2 or not containers:
            return None
        duration = data["duration_s"]
        requests: dict[str, float] = {}
        cost: dict[str, float] = {}
        for name, entry in containers.items():
            invocations = entry.get("invocations") or 0
            cpu = (entry.get("cpu_percent") or {}).get("mean")
            if invocations and cpu is not None:
                requests[name] = invocations
                cost[name] = cpu / 100.0 * duration / invocations
        cores = self.config.instance_cores or float(psutil.cpu_count() or 1)
        return autoscale.analyse(
            requests,
            cost,
            invocations_per_instance=sum(requests.values()) / duration if duration else 0.0,
            cores=cores,
            cpu_target=self.config.cpu_target,
        )


def _signed(config: LoadConfig) -> bool:
    from .signing import resolve_credentials

    return resolve_credentials(config) is not None


def _thresholds_dict(t: Thresholds) -> dict[str, Any]:
    return {
        "p50_ms": t.p50_ms,
        "p90_ms": t.p90_ms,
        "p99_ms": t.p99_ms,
        "error_rate": t.error_rate,
        "max_invocations": t.max_invocations,
    }


def _failed_thresholds(t: Thresholds, s: dict[str, Any]) -> list[str]:
    failed = []
    latency = s["latency_ms"]
    for key, limit in (("p50", t.p50_ms), ("p90", t.p90_ms), ("p99", t.p99_ms)):
        value = latency[key]
        if limit is not None and (value is None or value > limit):
            failed.append(f"{key} {value if value is None else round(value, 2)} ms > {limit:g} ms")
    if t.error_rate is not None and s["error_rate"] > t.error_rate:
        failed.append(f"error rate {s['error_rate']:.3g} > {t.error_rate:g}")
    return failed


class _Merged:
    __slots__ = ("end", "errors", "histogram", "ok", "start")

    def __init__(self) -> None:
        self.histogram = new_histogram()
        self.ok = 0
        self.errors: collections.Counter[tuple[int, str]] = collections.Counter()
        self.start = float("inf")
        self.end = 0.0

    @property
    def window(self) -> float:
        return max(self.end - self.start, 0.0) if self.end else 0.0

    def absorb(self, other: _Merged) -> None:
        self.histogram.add(other.histogram)
        self.ok += other.ok
        self.errors.update(other.errors)
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)


def _merge_phase(
    results: list[WorkerResult], phase: int, targets: int, only: int | None = None
) -> _Merged:
    """One phase over every process (and one target, or all): the phase runs from its start to
    its end or the last answer of its requests, whichever is later, so a backlog still being
    served after the phase lowers the achieved rate instead of being hidden."""
    merged = _Merged()
    for result in results:
        if phase >= len(result.phases):
            continue
        p = result.phases[phase]
        merged.start = min(merged.start, p.started)
        merged.end = max(merged.end, p.ended)
        for r in p.recorders:
            if only is not None and r["target"] != only:
                continue
            merged.ok += r["ok"]
            for status, code, n in r["errors"]:
                merged.errors[(status, code)] += n
            if r["histogram"]:
                merged.histogram.add(HdrHistogram.decode(r["histogram"]))
            if r["last_done"]:
                merged.end = max(merged.end, r["last_done"])
    del targets
    return merged


def _verdict(
    config: LoadConfig, results: list[WorkerResult], phase: int | None = None
) -> dict[str, Any]:
    """Whether the generator kept up: scheduling lag and its own CPU, per process."""
    lag = new_histogram()
    cpu = 0.0
    for result in results:
        for p in result.phases:
            if phase is not None and p.phase != phase:
                continue
            if p.lag_histogram:
                lag.add(HdrHistogram.decode(p.lag_histogram))
            cpu = max(cpu, p.cpu_percent)
    counted = lag.get_total_count() > 0
    lag_p99 = lag.get_value_at_percentile(99) / 1000.0 if counted else 0.0
    reasons = []
    if lag_p99 > config.max_lag_ms:
        reasons.append(
            f"generator scheduling lag p99 {lag_p99:.1f} ms > {config.max_lag_ms:g} ms: it could "
            "not send on time (add --processes or a machine)"
        )
    if cpu > config.max_cpu_percent:
        reasons.append(
            f"generator CPU {cpu:.0f} % of a core > {config.max_cpu_percent:g} %: the harness, "
            "not the system under test, may be the bottleneck"
        )
    return {
        "valid": not reasons,
        "reasons": reasons,
        "lag_ms": {
            "p50": lag.get_value_at_percentile(50) / 1000.0 if counted else 0.0,
            "p99": lag_p99,
            "max": lag.get_max_value() / 1000.0 if counted else 0.0,
        },
        "cpu_percent": cpu,
    }


def preflight(config: LoadConfig) -> None:
    """Fail fast, in one line, when nothing listens at the URL."""
    try:
        with socket.create_connection((config.host, config.port), timeout=3.0):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise LoadTestError(f"cannot connect to {config.url}: {reason}") from None


# --- processes -----------------------------------------------------------------------------


def _run_processes(
    config: LoadConfig, phases: list[Phase], on_snapshot: Callable[[Snapshot], None]
) -> list[WorkerResult]:
    if config.processes == 1:
        engine = Engine(config, on_snapshot=on_snapshot)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return [runner.run(engine.run(phases))]
    context = multiprocessing.get_context("spawn")
    channel: Any = context.Queue()
    start_at = time.time() + SPAWN_LEAD_SECONDS
    workers = [
        context.Process(
            target=_worker_main,
            args=(config, phases, i, config.processes, start_at, channel),
            name=f"mce-loadtest-{i}",
            daemon=True,
        )
        for i in range(config.processes)
    ]
    for w in workers:
        w.start()
    results: dict[int, WorkerResult] = {}
    deadline = start_at + sum(p.duration for p in phases) + config.timeout + 30.0
    try:
        while len(results) < len(workers):
            try:
                kind, payload = channel.get(timeout=0.5)
            except queue.Empty:
                if time.time() > deadline or not any(w.is_alive() for w in workers):
                    dead = [w.name for w in workers if w.exitcode not in (None, 0)]
                    raise LoadTestError(
                        f"generator processes did not report ({', '.join(dead) or 'timeout'})"
                    ) from None
                continue
            if kind == "snapshot":
                on_snapshot(payload)
            elif kind == "error":
                raise LoadTestError(str(payload))
            else:
                results[payload.worker] = payload
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
        channel.close()
        channel.join_thread()
    return [results[i] for i in sorted(results)]


def _worker_main(
    config: LoadConfig, phases: list[Phase], worker: int, shares: int, start_at: float, channel: Any
) -> None:
    try:
        engine = Engine(
            config,
            worker=worker,
            shares=shares,
            on_snapshot=lambda s: channel.put(("snapshot", s)),
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(engine.run(phases, start_at))
        channel.put(("result", result))
    except LoadTestError as exc:
        channel.put(("error", exc.message))
    except Exception as exc:  # reported to the parent, which raises it as one line
        channel.put(("error", f"generator process {worker}: {type(exc).__name__}: {exc}"))
        print(f"mce-router loadtest: worker {worker}: {exc!r}", file=sys.stderr)
