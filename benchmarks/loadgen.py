#!/usr/bin/env python3
"""How many requests per second one core of each load generator sends: ``mce-router loadtest``
next to wrk, hey and Locust, against the same nginx, in the same run.

nginx (one worker) is pinned to CPU 0 and answers every POST with a fixed 97-byte JSON body;
each generator in turn is pinned to CPU 1 with 64 connections (closed loop, as fast as it can:
that is what "requests per second one core generates" means) for ``--seconds``, rounds
interleaved, medians reported. The harness is also run open-loop at 80 % of its own closed-loop
rate, to show the rate it can schedule on time (its self-check then says valid or not).

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
from benchlib.stack import HOST, ORIGIN_BODY, start_nginx

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


def run_harness(url: str, workdir: Path, seconds: int, rate: float | None = None) -> dict[str, Any]:
    mix = workdir / "mix.yaml"
    (workdir / "body.json").write_bytes(BODY)
    mix.write_text(
        "targets: [{container: model, payload: body.json, content_type: application/json}]\n"
    )
    report = workdir / "harness.json"
    load = ["--rate", f"{rate:g}"] if rate else ["--users", str(CONNECTIONS)]
    _run(
        [sys.executable, "-m", "mce_router.loadtest", "--url", url, "--endpoint", ENDPOINT,
         "--mix", str(mix), *load, "--duration", str(seconds), "--admin-url", "none",
         "--sign", "off", "--quiet", "--report-json", str(report)],
        seconds + 60,
    )  # fmt: skip
    data = json.loads(report.read_text())
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


def run_wrk(url: str, workdir: Path, seconds: int) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["X-Amzn-SageMaker-Target-Container-Hostname"] = "model"\n'
    )
    wrk = which("wrk")
    assert wrk is not None
    out = _run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
         url + PATH],
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
    with workspace() as (workdir, procs):
        (port,) = free_ports(1)
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
    medians = {tool: statistics.median(r["rps"] for r in rs) for tool, rs in runs.items()}
    harness = medians["mce-router loadtest"]
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
