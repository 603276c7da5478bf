#!/usr/bin/env python3
"""The per-core targets of the second performance round, in one run, and where the time goes.

    python benchmarks/targets.py           # 3 interleaved rounds of 5 s, then perf, ~4 min
    python benchmarks/targets.py --quick   # 1 round of 2 s
    python benchmarks/targets.py --no-perf # skip the perf breakdown

The proxy under test is pinned to CPU 0; the nginx origin and wrk (1 thread) to CPU 1, as in
``benchmarks/run.py``. 64 keep-alive connections, 97-byte answers. Cases: the origin hit
directly, nginx as the keep-alive proxy (1 worker), the router Direct (metrics on, as it ships),
the router Direct with SigV4 + IAM on (every request signed as boto3 signs it; one credential,
one Allow statement), and the router Serial through 3 stages. From them:

- Direct req/s against nginx's (per core: each has one core);
- CPU per request with authentication on against off;
- what each added Serial stage costs in CPU against a whole Direct hop:
  ``(serial3 - direct) / 2 / direct``;
- the latency the proxy adds at p99 (its p99 minus the origin's) against nginx's.

With perf (``perf`` on the PATH and allowed), each router case is recorded for 4 s under the
same load and its samples are split by shared object into µs per request (kernel, llhttp,
libpython's allocator and interpreter, the compiled router code, libc, uvloop).
Results: benchmarks/results/targets.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from benchlib.load import (
    TARGET_HEADER,
    Case,
    case_table,
    interleaved_rounds,
    medians,
    run_wrk,
    write_results,
)
from benchlib.procs import (
    LOAD_CPU,
    PROXY_CPU,
    Managed,
    free_ports,
    log,
    pin_self,
    raise_nofile_limit,
    workspace,
)
from benchlib.stack import (
    HOST,
    ORIGIN_BODY,
    REQUEST_BODY,
    router_config,
    start_nginx,
    start_router,
)
from benchlib.variants import VARIANTS, sigv4_headers

CONNECTIONS = 64
PERF_SECONDS = 4
CASES = ("origin", "nginx", "router", "router-auth", "router-serial3")
PROFILED = ("router", "router-auth", "router-serial3")

#: perf's shared-object names -> the part of the work they stand for.
_PARTS: tuple[tuple[str, str], ...] = (
    (r"\[kernel", "kernel (TCP over loopback, wake-ups)"),
    (r"httptools|parser\.cpython", "llhttp (requests, httptools)"),
    (r"_llresponse", "llhttp (responses, the C reader)"),
    (r"__mypyc|dataplane/.*\.so|proxy\.cpython|headers\.cpython|stats\.cpython", "compiled router"),
    (r"libpython|python3", "interpreter and allocator (libpython)"),
    (r"uvloop|loop\.cpython", "uvloop (libuv)"),
    (r"libc[.-]", "libc (syscall wrappers, memcpy)"),
    (r"_hashlib|libcrypto|_hmac|_sha", "hashing (OpenSSL: SHA-256, HMAC)"),
    (r"vdso", "vdso (clock reads)"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--no-perf", action="store_true")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.seconds)
    pin_self(LOAD_CPU)
    nofile = raise_nofile_limit()
    perf = None if args.no_perf else shutil.which("perf")
    with workspace() as (workdir, procs):
        o1, o2, o3, nginx_port, router_port, auth_port, *admins = free_ports(9)
        origins = [o1, o2, o3]
        body = workdir / "body.json"
        body.write_bytes(REQUEST_BODY)
        listen = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in origins)
        processes: dict[str, Managed] = {
            "origin": start_nginx(
                procs, "origin-nginx", "origin.conf.tmpl",
                {"LISTEN": listen, "BODY": ORIGIN_BODY.decode()},
                cpu=LOAD_CPU, ping_port=o1, ping_path="/ping", nofile=nofile,
            ),
            "nginx": start_nginx(
                procs, "nginx", "proxy-workers.conf.tmpl",
                {"PORT": nginx_port, "ORIGIN_PORT": o1, "WORKERS": 1},
                cpu=PROXY_CPU, ping_port=nginx_port, ping_path="/ping", nofile=nofile,
            ),
        }  # fmt: skip
        config = router_config(origins, o1, endpoints=("direct", "serial3"))
        auth = next(v for v in VARIANTS if v.name == "auth")
        for name, port, admin, extra in (
            ("router", router_port, admins[0], {}),
            ("router-auth", auth_port, admins[1], auth.on),
        ):
            started = start_router(procs, name, {**config, **extra}, port=port, admin_port=admin)
            assert started.managed is not None
            processes[name] = started.managed
        # One process serves both router cases: Direct and Serial meet the same process.
        processes["router-serial3"] = processes["router"]
        direct = f"http://{HOST}:{router_port}/endpoints/direct/invocations"
        signed = f"http://{HOST}:{auth_port}/endpoints/direct/invocations"

        def sign() -> dict[str, str]:
            base = {"Content-Type": "application/json", TARGET_HEADER: "origin"}
            return sigv4_headers(signed, REQUEST_BODY, base)

        def case(name: str, url: str, **kw: Any) -> Case:
            return Case(
                name, "throughput", name, url, CONNECTIONS, body, len(REQUEST_BODY),
                proxy=name, **kw,
            )  # fmt: skip

        cases = {
            "origin": case("origin", f"http://{HOST}:{o1}/invocations"),
            "nginx": case("nginx", f"http://{HOST}:{nginx_port}/invocations"),
            "router": case("router", direct, targets=("origin",)),
            "router-auth": case("router-auth", signed, targets=("origin",), headers=sign),
            "router-serial3": case(
                "router-serial3", f"http://{HOST}:{router_port}/endpoints/serial3/invocations"
            ),
        }
        runs = interleaved_rounds(
            list(cases.values()), rounds=rounds, seconds=seconds, workdir=workdir,
            processes=processes,
        )  # fmt: skip
        breakdown: dict[str, Any] = {}
        if perf is not None:
            for name in PROFILED:
                breakdown[name] = _perf_breakdown(perf, cases[name], processes[name], workdir)
                log(f"perf {name}: {breakdown[name].get('parts') or breakdown[name]}")
    result = _summarize(runs, breakdown, rounds, seconds)
    write_results("targets", result, _markdown(result))
    return 0


def _perf_breakdown(perf: str, case: Case, managed: Managed, workdir: Path) -> dict[str, Any]:
    """perf samples of the router process while wrk drives ``case``, by shared object."""
    data = workdir / f"perf-{case.id}.data"
    outcome: dict[str, Any] = {}

    def drive() -> None:
        outcome["wrk"] = run_wrk(case, PERF_SECONDS + 2, workdir, tag=f"{case.id}-perf")

    load = threading.Thread(target=drive, daemon=True)
    load.start()
    record = subprocess.run(
        [perf, "record", "-e", "cpu-clock", "-F", "2000", "-o", str(data), "-p",
         str(managed.pid), "--", "sleep", str(PERF_SECONDS)],
        capture_output=True, text=True, timeout=PERF_SECONDS + 30, check=False,
    )  # fmt: skip
    load.join(timeout=PERF_SECONDS + 30)
    if record.returncode != 0 or not data.exists():
        return {"error": f"perf record failed: {record.stderr.strip()[-300:]}"}
    report = subprocess.run(
        [perf, "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    shares: collections.Counter[str] = collections.Counter()
    by_dso: dict[str, float] = {}
    for line in report.stdout.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S.*)$", line)
        if not match:
            continue
        percent, dso = float(match.group(1)), match.group(2).strip()
        by_dso[dso] = percent
        part = next((label for pattern, label in _PARTS if re.search(pattern, dso)), "other")
        shares[part] += percent
    wrk = outcome.get("wrk")
    rps = wrk["requests"] / (wrk["duration_us"] / 1e6) if wrk else 0.0
    return {
        "rps_while_recorded": rps,
        "parts": {k: round(v, 1) for k, v in shares.most_common()},
        "by_dso": dict(sorted(by_dso.items(), key=lambda kv: -kv[1])[:15]),
    }


def _summarize(
    runs: list[dict[str, Any]], breakdown: dict[str, Any], rounds: int, seconds: int
) -> dict[str, Any]:
    cases = medians(runs, list(CASES))
    cpu = {name: case["cpu_us_per_req"] for name, case in cases.items()}
    p99 = {name: case["p99_us"] for name, case in cases.items()}
    stage = (cpu["router-serial3"] - cpu["router"]) / 2
    targets = {
        "direct_vs_nginx": cases["router"]["rps"] / cases["nginx"]["rps"],
        "auth_cpu_ratio": cpu["router-auth"] / cpu["router"],
        "serial_stage_vs_direct_hop": stage / cpu["router"],
        "serial_stage_cpu_us": stage,
        "added_p99_router_us": p99["router"] - p99["origin"],
        "added_p99_nginx_us": p99["nginx"] - p99["origin"],
    }
    for name, parts in breakdown.items():
        if "parts" in parts:
            parts["us_per_request"] = {
                part: round(share / 100 * cpu[name], 2) for part, share in parts["parts"].items()
            }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "cases": cases,
        "targets": targets,
        "perf": breakdown,
        "python": sys.version.split()[0],
    }


def _markdown(result: dict[str, Any]) -> str:
    t = result["targets"]
    lines = [
        f"# Per-core targets ({result['date']})",
        "",
        f"Proxy on CPU 0, origin and wrk on CPU 1; {result['rounds']} interleaved rounds of "
        f"{result['seconds']} s, {result['connections']} keep-alive connections; medians. "
        "Regenerate: `python benchmarks/targets.py`.",
        "",
    ]
    lines += case_table(result["cases"])
    lines += [
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        f"| Direct, one core, >= 1.0x nginx req/s | {t['direct_vs_nginx']:.2f}x | "
        f"{_verdict(t['direct_vs_nginx'] >= 1.0)} |",
        f"| SigV4 + IAM <= 1.3x the CPU per request of auth off | {t['auth_cpu_ratio']:.2f}x | "
        f"{_verdict(t['auth_cpu_ratio'] <= 1.3)} |",
        f"| each added Serial stage <= 1.0x a Direct hop in CPU | "
        f"{t['serial_stage_vs_direct_hop']:.2f}x ({t['serial_stage_cpu_us']:.1f} µs) | "
        f"{_verdict(t['serial_stage_vs_direct_hop'] <= 1.0)} |",
        f"| p99 added at 64 connections <= nginx's | router +{t['added_p99_router_us']:,.0f} "
        f"µs, nginx +{t['added_p99_nginx_us']:,.0f} µs | "
        f"{_verdict(t['added_p99_router_us'] <= t['added_p99_nginx_us'])} |",
        "",
    ]
    perf = result["perf"]
    if perf:
        names = [n for n in PROFILED if "us_per_request" in perf.get(n, {})]
        parts = list(dict.fromkeys(p for n in names for p in perf[n]["us_per_request"]))
        lines += [
            "Where the CPU goes, µs per request (Linux perf, samples by shared object, "
            f"{PERF_SECONDS} s per case under the same load):",
            "",
            "| part | " + " | ".join(names) + " |",
            "| --- |" + " ---: |" * len(names),
        ]
        for part in parts:
            cells = [f"{perf[n]['us_per_request'].get(part, 0):.2f}" for n in names]
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
        lines.append(
            "| total (measured CPU per request) | "
            + " | ".join(f"{result['cases'][n]['cpu_us_per_req']:.2f}" for n in names)
            + " |"
        )
        for name in PROFILED:
            if "error" in perf.get(name, {}):
                lines.append(f"\nperf {name}: {perf[name]['error']}")
        lines.append("")
    return "\n".join(lines)


def _verdict(passed: bool) -> str:
    return "pass" if passed else "missed"


if __name__ == "__main__":
    sys.exit(main())
