#!/usr/bin/env python3
"""How many requests per second one core of each load generator sends: ``mce-router loadtest``
next to wrk, hey and Locust, against the same nginx, in the same run.

nginx (one worker) is pinned to CPU 0 and answers every POST with a fixed 97-byte JSON body;
each generator in turn is pinned to CPU 1 with 64 connections (closed loop, as fast as it can:
that is what "requests per second one core generates" means) for ``--seconds``, rounds
interleaved, medians reported. The harness is also run open-loop at 80 % of its own closed-loop
rate, to show the rate it can schedule on time (its self-check then says valid or not), and with
its own find-the-limit mode stepping the open-loop rate up until its self-check fails: the
highest *valid* open-loop rate one harness core keeps.

Then the issue's yardstick, "one harness core drives at least the rate one router core serves":
``mce-router serve`` pinned to CPU 0 in front of a second nginx on CPU 1 (the layout of
benchmarks/run.py), driven from CPU 1 first by wrk (the rate one router core serves) and then by
the harness, closed loop (can one harness core saturate one router core?).

    python benchmarks/loadgen.py            # about 2 minutes: 3 rounds of 5 s per tool
    python benchmarks/loadgen.py --rounds 1 --seconds 3

Writes benchmarks/results/loadgen.{json,md}. Needs nginx, wrk and hey (Debian: apt-get install
nginx-light wrk hey) and the ``loadtest`` extra (hdrhistogram, Locust).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.procs import (
    LOAD_CPU,
    PROXY_CPU,
    BenchError,
    command_output,
    free_ports,
    log,
    pinned,
    raise_nofile_limit,
    which,
    workspace,
)
from benchlib.stack import HOST, ORIGIN_BODY, router_config, start_nginx, start_router

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONNECTIONS = 64
BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'
ENDPOINT = "bench"
PATH = f"/endpoints/{ENDPOINT}/invocations"
TOOLS = ("mce-router loadtest", "wrk", "hey", "locust")


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        pinned(cmd, LOAD_CPU),
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if done.returncode not in (0, 3):  # 3: the harness ran but marked its result invalid
        raise BenchError(
            f"{cmd[0]} exited {done.returncode}:\n{done.stdout.decode(errors='replace')[-800:]}"
            f"\n{done.stderr.decode(errors='replace')[-800:]}"
        )
    return done.stdout.decode(errors="replace")


def _harness(
    url: str, workdir: Path, load: list[str], timeout: float, endpoint: str, container: str
) -> dict[str, Any]:
    mix = workdir / "mix.yaml"
    (workdir / "body.json").write_bytes(BODY)
    mix.write_text(
        f"targets: [{{container: {container}, payload: body.json, "
        "content_type: application/json}]\n"
    )
    report = workdir / "harness.json"
    _run(
        [sys.executable, "-m", "mce_router.loadtest", "--url", url, "--endpoint", endpoint,
         "--mix", str(mix), *load, "--admin-url", "none", "--sign", "off", "--quiet",
         "--report-json", str(report)],
        timeout,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def run_harness(
    url: str,
    workdir: Path,
    seconds: int,
    rate: float | None = None,
    endpoint: str = ENDPOINT,
    container: str = "model",
) -> dict[str, Any]:
    load = ["--rate", f"{rate:g}"] if rate else ["--users", str(CONNECTIONS)]
    load += ["--duration", str(seconds)]
    data = _harness(url, workdir, load, seconds + 60, endpoint, container)
    overall = data["overall"]
    return {
        "rps": overall["achieved_rps"],
        "errors": overall["errors"],
        "p50_ms": overall["latency_ms"]["p50"],
        "p99_ms": overall["latency_ms"]["p99"],
        "valid": data["valid"],
        "generator_cpu_percent": max(p["generator"]["cpu_percent"] for p in data["phases"]),
        "invalid_reasons": data["invalid_reasons"],
    }


LIMIT_START, LIMIT_STEP, LIMIT_MAX, LIMIT_STEP_SECONDS = 4000, 4000, 80000, 2


def run_harness_limit(url: str, workdir: Path) -> dict[str, Any]:
    """The harness's find-the-limit mode against nginx, which serves far more than one harness
    core sends: the search stops where the generator's own check fails, so its last passing
    step is the highest open-loop rate one harness core keeps on schedule."""
    steps = (LIMIT_MAX - LIMIT_START) // LIMIT_STEP + 1
    load = ["--find-limit", "--endpoint-only", "--start-rate", str(LIMIT_START),
            "--step", str(LIMIT_STEP), "--max-rate", str(LIMIT_MAX),
            "--step-duration", str(LIMIT_STEP_SECONDS)]  # fmt: skip
    data = _harness(url, workdir, load, steps * (LIMIT_STEP_SECONDS + 5) + 60, ENDPOINT, "model")
    endpoint = data["limit"]["endpoint"]
    return {
        "rps": endpoint["max_rps"] or 0.0,
        "stopped_by": endpoint["stopped_by"],
        "steps": [
            {k: step[k] for k in ("target_rps", "achieved_rps", "passed", "generator_valid")}
            for step in endpoint["steps"]
        ],
    }


def run_wrk(
    url: str, workdir: Path, seconds: int, path: str = PATH, container: str = "model"
) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-Amzn-SageMaker-Target-Container-Hostname"] = "{container}"\n'
    )
    wrk = which("wrk")
    assert wrk is not None
    out = _run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
         url + path],
        seconds + 30,
    )  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise BenchError(f"wrk output without Requests/sec:\n{out}")
    return {"rps": float(match.group(1)), "errors": _wrk_errors(out)}


def _wrk_errors(out: str) -> int:
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return int(match.group(1)) if match else 0


def run_hey(url: str, workdir: Path, seconds: int) -> dict[str, Any]:
    hey = which("hey")
    assert hey is not None
    body = workdir / "body.json"
    body.write_bytes(BODY)
    out = _run(
        [hey, "-z", f"{seconds}s", "-c", str(CONNECTIONS), "-m", "POST", "-D", str(body),
         "-T", "application/json", "-H", "X-Amzn-SageMaker-Target-Container-Hostname: model",
         url + PATH],
        seconds + 30,
        env={**os.environ, "GOMAXPROCS": "1"},
    )  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise BenchError(f"hey output without Requests/sec:\n{out}")
    return {"rps": float(match.group(1)), "errors": 0 if "[200]" in out else -1}


def run_locust(url: str, workdir: Path, seconds: int) -> dict[str, Any]:
    mix = workdir / "mix.yaml"
    prefix = workdir / "locust"
    locustfile = HERE.parent / "examples" / "loadtest" / "locustfile.py"
    _run(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
         "-u", str(CONNECTIONS), "-r", str(CONNECTIONS), "-t", f"{seconds}s", "--host", url,
         "--mce-mix", str(mix), "--mce-endpoint", ENDPOINT, "--mce-sign", "off",
         "--json-file", str(prefix), "--only-summary"],
        seconds + 60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    rows = json.loads(Path(f"{prefix}.json").read_text())
    requests = sum(r["num_requests"] for r in rows)
    start = min(r["start_time"] for r in rows)
    end = max(r["last_request_timestamp"] for r in rows)
    return {
        "rps": requests / (end - start) if end > start else 0.0,
        "errors": sum(r["num_failures"] for r in rows),
    }


RUNNERS = {"mce-router loadtest": run_harness, "wrk": run_wrk, "hey": run_hey, "locust": run_locust}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--output", default="loadgen")
    args = parser.parse_args()
    missing = [t for t in ("nginx", "wrk", "hey") if which(t) is None]
    if missing:
        log(f"missing {', '.join(missing)}: apt-get install -y nginx-light wrk hey")
        return 2
    nofile = raise_nofile_limit()
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    open_loop: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    router_runs: dict[str, list[dict[str, Any]]] = {"wrk": [], "mce-router loadtest": []}
    with workspace() as (workdir, procs):
        port, origin_port, router_port, admin_port = free_ports(4)
        start_nginx(
            procs,
            "origin-nginx",
            "origin.conf.tmpl",
            {"LISTEN": f"        listen {HOST}:{port} backlog=4096;", "BODY": ORIGIN_BODY.decode()},
            cpu=PROXY_CPU,
            ping_port=port,
            ping_path="/ping",
            nofile=nofile,
        )
        url = f"http://{HOST}:{port}"
        log(f"nginx on {url}, CPU {PROXY_CPU}; generators on CPU {LOAD_CPU}")
        # The router's own core: as in benchmarks/run.py, the router alone on CPU 0 and its
        # origin (a second nginx) on CPU 1 beside the generator.
        start_nginx(
            procs,
            "router-origin-nginx",
            "origin.conf.tmpl",
            {
                "LISTEN": f"        listen {HOST}:{origin_port} backlog=4096;",
                "BODY": ORIGIN_BODY.decode(),
            },
            cpu=LOAD_CPU,
            ping_port=origin_port,
            ping_path="/ping",
            nofile=nofile,
        )
        start_router(
            procs,
            "router",
            router_config([origin_port], origin_port, endpoints=("direct",)),
            port=router_port,
            admin_port=admin_port,
        )
        router_url = f"http://{HOST}:{router_port}"
        log(f"mce-router on {router_url}, CPU {PROXY_CPU}, origin nginx on CPU {LOAD_CPU}")
        for round_index in range(args.rounds):
            for tool in TOOLS:
                result = RUNNERS[tool](url, workdir, args.seconds)
                result["round"] = round_index
                runs[tool].append(result)
                log(f"round {round_index + 1} {tool}: {result['rps']:,.0f} req/s")
                time.sleep(1)
            # The open-loop check: 80 % of what the harness just did closed-loop.
            target = 0.8 * runs["mce-router loadtest"][-1]["rps"]
            result = run_harness(url, workdir, args.seconds, rate=target)
            result["target_rps"] = target
            open_loop.append(result)
            log(f"round {round_index + 1} open loop at {target:,.0f}/s: valid={result['valid']}")
            limit = run_harness_limit(url, workdir)
            limit["round"] = round_index
            limits.append(limit)
            log(f"round {round_index + 1} highest valid open-loop rate: {limit['rps']:,.0f}/s")
            time.sleep(1)
            wrk_router = run_wrk(
                router_url, workdir, args.seconds, "/endpoints/direct/invocations", "origin"
            )
            harness_router = run_harness(
                router_url, workdir, args.seconds, endpoint="direct", container="origin"
            )
            for tool, r in (("wrk", wrk_router), ("mce-router loadtest", harness_router)):
                r["round"] = round_index
                router_runs[tool].append(r)
                log(f"round {round_index + 1} {tool} -> router: {r['rps']:,.0f} req/s")
            time.sleep(1)
    medians = {tool: statistics.median(r["rps"] for r in rs) for tool, rs in runs.items()}
    harness = medians["mce-router loadtest"]
    router_core = statistics.median(r["rps"] for r in router_runs["wrk"])
    harness_at_router = statistics.median(r["rps"] for r in router_runs["mce-router loadtest"])
    open_limit = statistics.median(r["rps"] for r in limits)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average": os.getloadavg(),
            "nginx": command_output(["nginx", "-v"]).strip(),
            "wrk": command_output(["wrk", "-v"]).strip().splitlines()[0],
        },
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "connections": CONNECTIONS},
        "runs": runs,
        "open_loop": open_loop,
        "median_rps": medians,
        "harness_vs": {tool: harness / rps for tool, rps in medians.items() if rps},
        "open_loop_limit": {"median_rps": open_limit, "runs": limits},
        "router_core": {
            "runs": router_runs,
            "router_rps_with_wrk": router_core,
            "router_rps_with_harness": harness_at_router,
            "harness_closed_vs_router_core": harness / router_core,
            "harness_open_vs_router_core": open_limit / router_core,
            "harness_saturates_router": harness_at_router / router_core,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    (RESULTS / f"{args.output}.md").write_text(markdown)
    print(markdown)
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        f"# Load generators, one core each ({result['date']})",
        "",
        f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"{result['machine']['nginx']}, {result['machine']['wrk']}; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in result['machine']['load_average'])} (shared machine). "
        f"nginx (1 worker) on CPU {PROXY_CPU}, each generator on CPU {LOAD_CPU}, "
        f"{CONNECTIONS} connections, POST of {len(BODY)} bytes, 97-byte answers, "
        f"{result['settings']['rounds']} rounds x {result['settings']['seconds']} s, medians. "
        "Regenerate: `python benchmarks/loadgen.py`.",
        "",
        "| generator | req/s (median) | rounds | harness / this |",
        "| --- | --- | --- | --- |",
    ]
    for tool in TOOLS:
        rounds = ", ".join(f"{r['rps']:,.0f}" for r in result["runs"][tool])
        ratio = result["harness_vs"].get(tool)
        lines.append(
            f"| {tool} | {result['median_rps'][tool]:,.0f} | {rounds} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |"
        )
    lines += ["", "Harness open loop at 80 % of its closed-loop rate:", ""]
    lines += [
        "| target req/s | achieved | p50 ms | p99 ms | generator CPU | valid |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["open_loop"]:
        lines.append(
            f"| {r['target_rps']:,.0f} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['generator_cpu_percent']:.0f} % | {'yes' if r['valid'] else 'no'} |"
        )
    limit = result["open_loop_limit"]
    lines += [
        "",
        f"Highest valid open-loop rate (the harness's find-the-limit against nginx, steps of "
        f"{LIMIT_STEP:,}/s for {LIMIT_STEP_SECONDS} s, stopped by its own lag/CPU check): "
        f"median **{limit['median_rps']:,.0f} req/s** (rounds: "
        + ", ".join(f"{r['rps']:,.0f} ({r['stopped_by']})" for r in limit["runs"])
        + ").",
    ]
    core = result["router_core"]
    lines += [
        "",
        f"One router core (mce-router serve on CPU {PROXY_CPU}, a second nginx and the "
        f"generator on CPU {LOAD_CPU}), {CONNECTIONS} connections:",
        "",
        "| | req/s (median) | rounds |",
        "| --- | --- | --- |",
    ]
    for tool, label in (("wrk", "wrk -> router"), ("mce-router loadtest", "harness -> router")):
        rounds = ", ".join(f"{r['rps']:,.0f}" for r in core["runs"][tool])
        median = statistics.median(r["rps"] for r in core["runs"][tool])
        lines.append(f"| {label} | {median:,.0f} | {rounds} |")
    lines += [
        "",
        f"One harness core vs one router core: closed loop "
        f"{core['harness_closed_vs_router_core']:.2f}x, open loop (highest valid rate) "
        f"{core['harness_open_vs_router_core']:.2f}x; driving the router, the harness reaches "
        f"{core['harness_saturates_router']:.2f}x of the rate wrk gets from it. The issue asks "
        f">= 1.00x: "
        + (
            "met."
            if min(core["harness_closed_vs_router_core"], core["harness_open_vs_router_core"])
            >= 1.0
            else "not met by one harness core; use --processes N or Locust's distributed mode."
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
