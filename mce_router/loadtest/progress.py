"""Per-second aggregation of the generator processes' snapshots: the live progress line and the
report's timeline come from the same numbers."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from hdrh.histogram import HdrHistogram

from .engine import Snapshot, new_second_histogram

BAR_WIDTH = 20


@dataclass(slots=True)
class Second:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    per_target: list[int] = field(default_factory=list)
    histogram: HdrHistogram = field(default_factory=new_second_histogram)
    lag_max_ms: float = 0.0
    cpu_percent: list[float] = field(default_factory=list)
    #: per process: the target of the phase it ran in this second (its highest, when one
    #: phase ended and the next began within the second)
    targets: dict[int, float] = field(default_factory=dict)
    user_counts: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    workers: int = 0

    def add(self, s: Snapshot) -> None:
        self.sent += s.sent
        self.ok += s.ok
        self.errors += s.errors
        if not self.per_target:
            self.per_target = [0] * len(s.per_target)
        self.per_target = [a + b for a, b in zip(self.per_target, s.per_target, strict=True)]
        if s.histogram:
            self.histogram.add(HdrHistogram.decode(s.histogram))
        self.lag_max_ms = max(self.lag_max_ms, s.lag_max_ms)
        self.cpu_percent.append(s.cpu_percent)
        if not s.final:  # the partial second after a segment belongs to no phase
            self.targets[s.worker] = max(self.targets.get(s.worker, 0.0), s.target_rate or 0.0)
            self.user_counts[s.worker] = max(self.user_counts.get(s.worker, 0), s.users)
        self.in_flight += s.in_flight
        self.workers += 1

    @property
    def target_rate(self) -> float:
        return sum(self.targets.values())

    @property
    def users(self) -> int:
        return sum(self.user_counts.values())


class Timeline:
    """Seconds since the run started → the sum over processes."""

    def __init__(self, names: list[str], started: float) -> None:
        self.names = names
        self.started = started
        self.seconds: dict[int, Second] = {}

    def add(self, snapshot: Snapshot, offset: int) -> Second:
        """``offset``: whole seconds from the run's start to the start of this engine run."""
        key = offset + snapshot.second
        second = self.seconds.setdefault(key, Second())
        second.add(snapshot)
        return second

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for key in sorted(self.seconds):
            s = self.seconds[key]
            h = s.histogram
            counted = h.get_total_count() > 0
            rows.append(
                {
                    "t": key,
                    "target_rps": s.target_rate or None,
                    "users": s.users or None,
                    "sent": s.sent,
                    "ok": s.ok,
                    "errors": s.errors,
                    "p50_ms": h.get_value_at_percentile(50) / 1000.0 if counted else None,
                    "p99_ms": h.get_value_at_percentile(99) / 1000.0 if counted else None,
                    "max_ms": h.get_max_value() / 1000.0 if counted else None,
                    "containers": dict(zip(self.names, s.per_target, strict=False)),
                    "generator_lag_max_ms": round(s.lag_max_ms, 3),
                    "generator_cpu_percent": round(max(s.cpu_percent, default=0.0), 1),
                    "in_flight": s.in_flight,
                }
            )
        return rows


class Progress:
    """One line per second: phase bar, rate achieved vs target, p50/p99, errors, split."""

    def __init__(self, out: TextIO | None = None, enabled: bool = True) -> None:
        self.out = out or sys.stderr
        self.enabled = enabled
        self.tty = self.out.isatty()
        self.label = ""

    def phase(self, label: str) -> None:
        if self.enabled and self.tty and self.label:
            self.out.write("\n")
        self.label = label

    def show(self, second: Second, names: list[str], done: float, expected_workers: int) -> None:
        """``done``: the share of the phase behind us; shown once every process reported."""
        if not self.enabled or second.workers != expected_workers:
            return
        done = min(1.0, max(0.0, done))
        filled = int(done * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        h = second.histogram
        if h.get_total_count():
            latency = (
                f"p50 {h.get_value_at_percentile(50) / 1000:.1f} ms "
                f"p99 {h.get_value_at_percentile(99) / 1000:.1f} ms"
            )
        else:
            latency = "p50 - p99 -"
        target = f"/{second.target_rate:.0f}" if second.target_rate else f" ({second.users} users)"
        total = sum(second.per_target) or 1
        split = " ".join(
            f"{n} {c / total:.0%}" for n, c in zip(names, second.per_target, strict=False)
        )
        line = (
            f"{self.label} [{bar}] {second.ok + second.errors}{target} req/s {latency} "
            f"errors {second.errors} | {split}"
        )
        if self.tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.out.write("\n")
            self.out.flush()
