#!/usr/bin/env python3
"""All cores: the router with 1 and N data-plane workers against nginx with 1 and N worker
processes, same run, same origin, interleaved.

    python benchmarks/workers.py              # 3 rounds of 5 s per case, ~3 min
    python benchmarks/workers.py --quick      # 1 round of 2 s
    python benchmarks/workers.py --workers 4  # N (default: the usable CPUs)

Nothing is pinned: on a machine with few cores the origin, wrk (2 threads) and the proxy share
them, as they would in production on one host, so both proxies meet the same contention. Each
case: wrk with 64 keep-alive connections, Direct, 97-byte answers from one nginx origin. The
proxy's CPU is its whole process tree (the router's workers included). Results:
benchmarks/results/workers.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any

from benchlib.load import Case, case_table, interleaved_rounds, medians, write_results
from benchlib.procs import free_ports, raise_nofile_limit, workspace
from benchlib.stack import (
    HOST,
    ORIGIN_BODY,
    REQUEST_BODY,
    router_config,
    start_nginx,
    start_router,
)

from mce_router.config import usable_cpus

CONNECTIONS = 64
WRK_THREADS = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=usable_cpus())
    args = parser.parse_args(argv)
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.seconds)
    many = max(2, args.workers)
    nofile = raise_nofile_limit()
    with workspace() as (workdir, procs):
        origin, nginx_1, nginx_n, router_1, router_n, *admins = free_ports(7)
        (workdir / "body.json").write_bytes(REQUEST_BODY)
        processes = {
            "origin": start_nginx(
                procs, "origin-nginx", "origin.conf.tmpl",
                {"LISTEN": f"        listen {HOST}:{origin} backlog=4096;",
                 "BODY": ORIGIN_BODY.decode()},
                cpu=None, ping_port=origin, ping_path="/ping", nofile=nofile,
            ),
        }  # fmt: skip
        for name, port, count in (("nginx-1", nginx_1, 1), (f"nginx-{many}", nginx_n, many)):
            processes[name] = start_nginx(
                procs, name, "proxy-workers.conf.tmpl",
                {"PORT": port, "ORIGIN_PORT": origin, "WORKERS": count},
                cpu=None, ping_port=port, ping_path="/ping", nofile=nofile,
            )  # fmt: skip
        config = router_config([origin], origin, endpoints=("direct",))
        for (name, port, count), admin in zip(
            (("router-1", router_1, 1), (f"router-{many}", router_n, many)), admins, strict=True
        ):
            started = start_router(
                procs, name, config, port=port, admin_port=admin, cpu=None,
                extra_args=("--workers", str(count)),
            )  # fmt: skip
            assert started.managed is not None
            processes[name] = started.managed
        body = workdir / "body.json"

        def case(name: str, url: str) -> Case:
            return Case(
                name, "throughput", name, url, CONNECTIONS, body, len(REQUEST_BODY),
                targets=("origin",), proxy=name, load_cpu=None, wrk_threads=WRK_THREADS,
            )  # fmt: skip

        invocations = "/endpoints/direct/invocations"
        cases = [
            case("nginx-1", f"http://{HOST}:{nginx_1}/invocations"),
            case("router-1", f"http://{HOST}:{router_1}{invocations}"),
            case(f"nginx-{many}", f"http://{HOST}:{nginx_n}/invocations"),
            case(f"router-{many}", f"http://{HOST}:{router_n}{invocations}"),
        ]
        runs = interleaved_rounds(
            cases, rounds=rounds, seconds=seconds, workdir=workdir, processes=processes
        )
    result = _summarize(runs, many, rounds, seconds)
    write_results("workers", result, _markdown(result))
    return 0


def _summarize(runs: list[dict[str, Any]], many: int, rounds: int, seconds: int) -> dict[str, Any]:
    cases = medians(runs, ["nginx-1", "router-1", f"nginx-{many}", f"router-{many}"])
    rps = {name: case["rps"] for name, case in cases.items()}
    ratios = {
        "router_vs_nginx_1": rps["router-1"] / rps["nginx-1"],
        f"router_vs_nginx_{many}": rps[f"router-{many}"] / rps[f"nginx-{many}"],
        "router_gain": rps[f"router-{many}"] / rps["router-1"],
        "nginx_gain": rps[f"nginx-{many}"] / rps["nginx-1"],
    }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": usable_cpus(),
        "workers": many,
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "load_average": os.getloadavg(),
        "cases": cases,
        "ratios": ratios,
        "python": sys.version.split()[0],
    }


def _markdown(result: dict[str, Any]) -> str:
    many = result["workers"]
    lines = [
        f"# Workers benchmark ({result['date']})",
        "",
        f"{result['cpus']} CPUs, nothing pinned; {result['rounds']} interleaved rounds of "
        f"{result['seconds']} s, wrk ({result['wrk_threads']} threads) with "
        f"{result['connections']} keep-alive connections, Direct to one nginx origin; medians. "
        f"Load average at the end: {', '.join(f'{x:.2f}' for x in result['load_average'])}.",
        "",
    ]
    lines += case_table(result["cases"])
    r = result["ratios"]
    lines += [
        "",
        f"- router / nginx, 1 worker each: **{r['router_vs_nginx_1']:.2f}x**",
        f"- router / nginx, {many} workers each: **{r[f'router_vs_nginx_{many}']:.2f}x**",
        f"- gain from 1 to {many} workers: router **{r['router_gain']:.2f}x**, "
        f"nginx {r['nginx_gain']:.2f}x",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
