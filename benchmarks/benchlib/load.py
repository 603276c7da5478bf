"""wrk runs: one warm-up, one measured run, CPU and RSS of the proxy under test around it."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .procs import (
    LOAD_CPU,
    BenchError,
    ForeignLoad,
    Managed,
    log,
    pinned,
    tree_cpu_seconds,
    tree_rss,
    which,
)

LUA = Path(__file__).resolve().parent.parent / "lua" / "post.lua"
TARGET_HEADER = "X-Amzn-SageMaker-Target-Container-Hostname"


@dataclass(frozen=True)
class Case:
    """One thing to measure: a URL under a given load, and which process is the proxy."""

    id: str
    group: str  # throughput | latency | body | variant
    path: str  # origin | nginx | router | router-serial3 | ... (the label in tables)
    url: str
    connections: int
    body_file: Path
    body_bytes: int
    content_type: str = "application/json"
    targets: tuple[str, ...] = ()
    #: Name of the process (key of the stack's process map) whose CPU/RSS is measured.
    proxy: str | None = None
    #: Returns extra headers per run (e.g. a fresh SigV4 signature); None = no extra headers.
    headers: Callable[[], dict[str, str]] | None = None
    #: Sample RSS every 20 ms instead of 100 ms (large bodies: the peak matters).
    fine_rss: bool = False
    #: Run the warm-up first (1-connection latency runs skip it: nothing to warm).
    warm: bool = True
    #: The CPU wrk is pinned to (None: unpinned, the scheduler's choice) and its threads.
    load_cpu: int | None = LOAD_CPU
    wrk_threads: int = 1


class RssSampler(threading.Thread):
    def __init__(self, procs: list[psutil.Process], interval: float) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.interval = interval
        self.peak = tree_rss(procs)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.procs))

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=2)
        self.peak = max(self.peak, tree_rss(self.procs))
        return self.peak


def run_wrk(
    case: Case, seconds: int, workdir: Path, *, tag: str, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Run wrk once (pinned to the load CPU); returns the Lua ``done()`` JSON."""
    wrk = which("wrk")
    if wrk is None:
        raise BenchError("wrk not found")
    out = workdir / f"wrk-{tag}.json"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(case.body_file),
        "BENCH_CONTENT_TYPE": case.content_type,
        "BENCH_TARGETS": ",".join(case.targets),
        "BENCH_OUT": str(out),
        "BENCH_HEADERS_FILE": "",
    }
    if case.headers is not None:
        headers_file = workdir / f"headers-{tag}.txt"
        headers_file.write_text(
            "".join(f"{k}: {v}\n" for k, v in case.headers().items()), encoding="utf-8"
        )
        env["BENCH_HEADERS_FILE"] = str(headers_file)
    cmd = pinned(
        [
            wrk,
            f"-t{case.wrk_threads}",
            f"-c{case.connections}",
            f"-d{seconds}s",
            f"--timeout={timeout_s:g}s",
            "--latency",
            "-s",
            str(LUA),
            case.url,
        ],
        case.load_cpu,
    )
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=seconds + timeout_s + 30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
    if proc.returncode != 0 or not out.exists():
        raise BenchError(
            f"wrk failed for {case.id} (exit {proc.returncode}):\n"
            f"{stdout.decode(errors='replace')[-1500:]}\n{stderr.decode(errors='replace')[-1500:]}"
        )
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def measure(
    case: Case,
    *,
    seconds: int,
    warmup: int,
    workdir: Path,
    processes: dict[str, Managed],
    round_no: int,
) -> dict[str, Any]:
    """Warm up, then one measured run with the proxy's CPU time and RSS around it."""
    if warmup > 0 and case.warm:
        run_wrk(case, warmup, workdir, tag=f"{case.id}-warmup")
    managed = processes.get(case.proxy) if case.proxy else None
    tree = managed.tree() if managed is not None else []
    cpu_before = tree_cpu_seconds(tree)
    rss_before = tree_rss(tree)
    sampler = RssSampler(tree, 0.02 if case.fine_rss else 0.1) if tree else None
    if sampler is not None:
        sampler.start()
    foreign = ForeignLoad(list(processes.values()))
    started = time.monotonic()
    try:
        raw = run_wrk(case, seconds, workdir, tag=case.id)
    finally:
        wall = time.monotonic() - started
        peak = sampler.stop() if sampler is not None else 0
    foreign_pct = foreign.percent()
    cpu_after = tree_cpu_seconds(tree)
    rss_after = tree_rss(tree)
    duration = raw["duration_us"] / 1e6
    requests = raw["requests"]
    errors = raw["errors"]
    rps = requests / duration if duration > 0 else 0.0
    cpu = cpu_after - cpu_before
    result: dict[str, Any] = {
        "case": case.id,
        "round": round_no,
        "path": case.path,
        "group": case.group,
        "connections": case.connections,
        "body_bytes": case.body_bytes,
        "seconds": duration,
        "requests": requests,
        "rps": rps,
        "mb_per_s": rps * case.body_bytes / 1e6,
        "latency_us": raw["latency_us"],
        "errors": errors,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "non_2xx": errors["status"],
        #: CPU used by processes outside the benchmark during the run, % of one CPU.
        "foreign_cpu_pct": foreign_pct,
    }
    if tree:
        result.update(
            {
                "proxy": case.proxy,
                "proxy_cpu_s": cpu,
                "proxy_cpu_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
                "proxy_cpu_us_per_req": 1e6 * cpu / requests if requests else None,
                "proxy_rss_before": rss_before,
                "proxy_rss_peak": peak,
                "proxy_rss_after": rss_after,
            }
        )
    return result


def interleaved_rounds(
    cases: list[Case],
    *,
    rounds: int,
    seconds: int,
    workdir: Path,
    processes: dict[str, Managed],
) -> list[dict[str, Any]]:
    """Every case once per round, every other round in reverse order (so a drift of the
    machine over the run does not favour the cases measured first); one log line per run."""
    runs: list[dict[str, Any]] = []
    for round_no in range(1, rounds + 1):
        order = cases if round_no % 2 else list(reversed(cases))
        for each in order:
            run = measure(
                each, seconds=seconds, warmup=1, workdir=workdir, processes=processes,
                round_no=round_no,
            )  # fmt: skip
            log(
                f"round {round_no} {each.id}: {run['rps']:,.0f} req/s, "
                f"{run.get('proxy_cpu_us_per_req') or 0:.1f} us CPU/req, "
                f"p99 {run['latency_us']['p99']:,.0f} us, "
                f"errors {run['socket_errors'] + run['non_2xx']}, "
                f"foreign CPU {run['foreign_cpu_pct']:.0f} %"
            )
            runs.append(run)
    return runs


def medians(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per case: median req/s (and each round's), proxy CPU per request, p50, p99, other load;
    errors summed."""
    cases: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = [r for r in runs if r["case"] == name]
        cases[name] = {
            "rps": statistics.median(r["rps"] for r in mine),
            "rounds_rps": [round(r["rps"]) for r in mine],
            "cpu_us_per_req": statistics.median(r.get("proxy_cpu_us_per_req") or 0 for r in mine),
            "p50_us": statistics.median(r["latency_us"]["p50"] for r in mine),
            "p99_us": statistics.median(r["latency_us"]["p99"] for r in mine),
            "errors": sum(r["socket_errors"] + r["non_2xx"] for r in mine),
            "foreign_cpu_pct": statistics.median(r["foreign_cpu_pct"] for r in mine),
        }
    return cases


def write_results(stem: str, result: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/STEM.json and STEM.md; the markdown is printed too."""
    out = Path(__file__).resolve().parent.parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown, encoding="utf-8")
    print(markdown)


def case_table(cases: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown table of :func:`medians`' cases."""
    lines = [
        "| case | req/s | rounds | proxy CPU µs/req | p50 µs | p99 µs | errors | other load % |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, case in cases.items():
        rounds = ", ".join(f"{x:,}" for x in case["rounds_rps"])
        lines.append(
            f"| {name} | {case['rps']:,.0f} | {rounds} | {case['cpu_us_per_req']:.1f} | "
            f"{case['p50_us']:,.0f} | {case['p99_us']:,.0f} | {case['errors']} | "
            f"{case['foreign_cpu_pct']:.0f} |"
        )
    return lines
