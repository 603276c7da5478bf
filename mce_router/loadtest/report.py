"""The load-test report: a plain JSON document (schema ``mce-router-loadtest/1``, documented in
docs/loadtest-report.md) with a text summary and a self-contained HTML rendering."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from .document import limit_entries, thresholds_text, verdict
from .html import render

SCHEMA = "mce-router-loadtest/1"
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def stats(
    histogram: HdrHistogram,
    ok: int,
    errors: collections.Counter[tuple[int, str]],
    window: float,
) -> dict[str, Any]:
    """The numbers of one container or of the whole run. Latency is that of successful (2xx)
    answers, from each request's scheduled send time; errors are counted apart."""
    failed = sum(errors.values())
    requests = ok + failed
    counted = histogram.get_total_count() > 0
    latency: dict[str, float | None] = {
        name: histogram.get_value_at_percentile(p) / 1000.0 if counted else None
        for name, p in PERCENTILES
    }
    latency["max"] = histogram.get_max_value() / 1000.0 if counted else None
    latency["min"] = histogram.get_min_value() / 1000.0 if counted else None
    latency["mean"] = histogram.get_mean_value() / 1000.0 if counted else None
    by_status: collections.Counter[str] = collections.Counter()
    by_code: collections.Counter[str] = collections.Counter()
    for (status, code), n in errors.items():
        by_status[str(status)] += n
        by_code[code or f"HTTP {status}"] += n
    return {
        "requests": requests,
        "ok": ok,
        "errors": failed,
        "error_rate": failed / requests if requests else 0.0,
        "achieved_rps": requests / window if window > 0 else 0.0,
        "window_s": window,
        "latency_ms": latency,
        "errors_by_status": dict(sorted(by_status.items())),
        "errors_by_code": dict(sorted(by_code.items())),
        # Percentile curve for plots: (percentile, ms) at HDR's quarter-halving ticks.
        "percentile_curve": _curve(histogram) if counted else [],
    }


def _curve(histogram: HdrHistogram) -> list[list[float]]:
    points = []
    for p in (0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100):
        points.append([p, histogram.get_value_at_percentile(p) / 1000.0])
    return points


@dataclass(frozen=True, slots=True)
class Report:
    data: dict[str, Any]

    @property
    def valid(self) -> bool:
        return bool(self.data["valid"])

    @property
    def overall(self) -> dict[str, Any]:
        return dict(self.data["overall"])

    @property
    def containers(self) -> dict[str, Any]:
        return dict(self.data["containers"])

    @property
    def limit(self) -> dict[str, Any] | None:
        limit = self.data.get("limit")
        return None if limit is None else dict(limit)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)

    def write_json(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n", encoding="utf-8")

    def write_html(self, path: Path) -> None:
        path.write_text(render(self.data), encoding="utf-8")

    def summary(self) -> str:
        """The end-of-run text: per container and overall, then the verdicts."""
        lines = []
        header = f"{'target':<24} {'requests':>9} {'errors':>7} {'req/s':>9} " + " ".join(
            f"{k:>8}" for k in ("p50", "p90", "p99", "p99.9", "max")
        )
        lines.append(header + "   (latency in ms)")
        rows = [*self.data["containers"].items(), ("overall", self.data["overall"])]
        for name, s in rows:
            latency = s["latency_ms"]
            values = " ".join(
                f"{latency[k]:>8.2f}" if latency[k] is not None else f"{'-':>8}"
                for k in ("p50", "p90", "p99", "p999", "max")
            )
            lines.append(
                f"{name:<24} {s['requests']:>9} {s['errors']:>7} {s['achieved_rps']:>9.1f} {values}"
            )
            if s["errors_by_code"]:
                codes = ", ".join(f"{c} {n}" for c, n in s["errors_by_code"].items())
                lines.append(f"{'':<24} errors: {codes}")
        router = self.data.get("router") or {}
        if router.get("containers"):
            lines.append("router's view (ContainerLatency / OverheadLatency mean ms, CPU %):")
            for name, c in router["containers"].items():
                if not c["invocations"]:
                    continue  # a container of the endpoint that the mix does not target
                cl = c["container_latency_ms"]["mean"]
                ol = c["overhead_latency_ms"]["mean"]
                cpu = c["cpu_percent"]["mean"]
                lines.append(
                    f"  {name:<22} invocations {c['invocations']:.0f}  "
                    f"container {_fmt(cl)} ms  overhead {_fmt(ol, 3)} ms  CPU {_fmt(cpu)} %"
                )
        elif router.get("error"):
            lines.append(f"router metrics: {router['error']}")
        limit = self.data.get("limit")
        if limit:
            lines.append(f"find-the-limit ({thresholds_text(limit['thresholds'])}):")
            for name, entry in limit_entries(limit):
                best = entry["max_rps"]
                lines.append(
                    f"  {name:<22} highest rate meeting them: "
                    f"{'none' if best is None else f'{best:g} req/s'}"
                    f" (stopped by {entry['stopped_by']})"
                )
        auto = self.data.get("autoscaling")
        if auto and auto.get("warning"):
            lines.append("WARNING autoscaling: " + auto["warning"])
        for note in self.data["notes"]:
            lines.append("note: " + note)
        if self.data["valid"]:
            lines.append(f"result: valid ({verdict(self.data)})")
        else:
            lines.append("result: INVALID, the generator was the bottleneck:")
            lines.extend("  " + r for r in self.data["invalid_reasons"])
        return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
