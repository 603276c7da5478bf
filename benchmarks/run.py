#!/usr/bin/env python3
"""Performance benchmark of mce_router against nginx and against hitting the origin directly.

    python benchmarks/run.py            # full run (~6-7 min), writes benchmarks/results/latest.*
    python benchmarks/run.py --quick    # smoke check: 1 round of 2 s runs -> results/quick.*
    python benchmarks/run.py --profile-only   # py-spy flame graph of the router under load

See benchmarks/README.md for what is measured and how to read the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import report
from benchlib.load import TARGET_HEADER, Case, measure, run_wrk
from benchlib.procs import (
    LOAD_CPU,
    PROXY_CPU,
    BenchError,
    Managed,
    Processes,
    can_pin,
    command_output,
    ensure_tools,
    free_ports,
    log,
    pin_self,
    pinned,
    raise_nofile_limit,
    tree_cpu_seconds,
    tree_rss,
    wait_until_quiet,
    which,
    workspace,
)
from benchlib.stack import (
    DIRECT15_HOSTS,
    HOST,
    MODEL_BATCH_BODY,
    ORIGIN_BODY,
    REQUEST_BODY,
    router_config,
    router_log_problems,
    start_example_container,
    start_lean_proxy,
    start_nginx,
    start_router,
)
from benchlib.variants import VARIANTS, Variant, sigv4_headers

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------
# The stack under test
# ----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    procs: Processes
    origin_ports: list[int] = field(default_factory=list)
    echo_port: int = 0
    #: The example container scoring a JSON batch (the "realistic Python container").
    model_port: int = 0
    proxy_port: int = 0
    proxy_echo_port: int = 0
    proxy_model_port: int = 0
    #: nginx proxying large bodies to the nginx origin (in-memory buffers, as for the echo).
    proxy_sink_port: int = 0
    #: A second nginx with its defaults for large bodies (temp files): to the origin, the echo.
    plain_sink_port: int = 0
    plain_echo_port: int = 0
    router_port: int = 0
    #: The lean reference proxy and the router with its hot path as Python source.
    lean_port: int = 0
    pure_port: int = 0
    processes: dict[str, Managed] = field(default_factory=dict)
    #: variant name -> {"status": ..., "on_port": ..., "off_port": ...}
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    #: The main router's RSS after each round.
    rss_by_round: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds spent waiting for other processes on the machine to go quiet.
    quiet_waited: float = 0.0

    def router_url(self, endpoint: str, port: int | None = None) -> str:
        return f"http://{HOST}:{port or self.router_port}/endpoints/{endpoint}/invocations"

    @staticmethod
    def invocations_url(port: int) -> str:
        """POST /invocations on ``port``: a container hit directly, or nginx in front of it."""
        return f"http://{HOST}:{port}/invocations"


def start_stack(workdir: Path, procs: Processes, args: argparse.Namespace, nofile: int) -> Stack:
    # 15 origin ports, echo container, 2 nginx proxy ports, router + admin, lean proxy, pure-Python
    # router + admin, 2 routers per variant, then the model container and its nginx proxy port,
    # then nginx's large-body port to the origin, then the plain nginx's two ports.
    ports = free_ports(15 + 1 + 2 + 2 + 3 + 4 * len(VARIANTS) + 5)
    stack = Stack(workdir, procs)
    stack.origin_ports = ports[:15]
    stack.echo_port = ports[15]
    stack.proxy_port, stack.proxy_echo_port = ports[16], ports[17]
    stack.router_port, router_admin = ports[18], ports[19]
    stack.lean_port, stack.pure_port, pure_admin = ports[20], ports[21], ports[22]
    stack.model_port, stack.proxy_model_port = ports[-5], ports[-4]
    stack.proxy_sink_port = ports[-3]
    stack.plain_sink_port, stack.plain_echo_port = ports[-2], ports[-1]
    spare = ports[23:-5]

    for name, size in (("small", len(REQUEST_BODY)), ("1m", MIB), ("6m", 6 * MIB)):
        path = workdir / f"body-{name}.bin"
        path.write_bytes(REQUEST_BODY if name == "small" else os.urandom(size))
        stack.files[name] = path
    stack.files["batch"] = workdir / "body-batch.json"
    stack.files["batch"].write_bytes(MODEL_BATCH_BODY)

    listen = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in stack.origin_ports)
    stack.processes["origin"] = start_nginx(
        procs,
        "origin-nginx",
        "origin.conf.tmpl",
        {"LISTEN": listen, "BODY": ORIGIN_BODY.decode()},
        cpu=LOAD_CPU,
        ping_port=stack.origin_ports[0],
        ping_path="/ping",
        nofile=nofile,
    )
    log(f"origin nginx on ports {stack.origin_ports[0]}..(15 ports), CPU {LOAD_CPU}")
    stack.processes["echo"] = start_example_container(procs, stack.echo_port, "echo")
    log(f"example echo container (aiohttp) on {stack.echo_port}, CPU {LOAD_CPU}")
    stack.processes["model"] = start_example_container(procs, stack.model_port, "model")
    log(f"example model container (aiohttp) on {stack.model_port}, CPU {LOAD_CPU}")
    stack.processes["nginx"] = start_nginx(
        procs,
        "proxy-nginx",
        "proxy.conf.tmpl",
        {
            "PORT": stack.proxy_port,
            "ECHO_PROXY_PORT": stack.proxy_echo_port,
            "ORIGIN_PORT": stack.origin_ports[0],
            "ECHO_PORT": stack.echo_port,
            "MODEL_PROXY_PORT": stack.proxy_model_port,
            "MODEL_PORT": stack.model_port,
            "ORIGIN_BODY_PROXY_PORT": stack.proxy_sink_port,
        },
        cpu=PROXY_CPU,
        ping_port=stack.proxy_port,
        ping_path="/ping",
        nofile=nofile,
    )
    log(f"nginx proxy on {stack.proxy_port} (echo: {stack.proxy_echo_port}), CPU {PROXY_CPU}")
    stack.processes["nginx-plain"] = start_nginx(
        procs,
        "proxy-nginx-plain",
        "proxy-plain.conf.tmpl",
        {
            "PORT": stack.plain_sink_port,
            "ECHO_PROXY_PORT": stack.plain_echo_port,
            "ORIGIN_PORT": stack.origin_ports[0],
            "ECHO_PORT": stack.echo_port,
        },
        cpu=PROXY_CPU,
        ping_port=stack.plain_sink_port,
        ping_path="/ping",
        nofile=nofile,
    )
    log(
        f"nginx proxy with default body buffering on {stack.plain_sink_port} "
        f"(echo: {stack.plain_echo_port}), CPU {PROXY_CPU}"
    )
    main = start_router(
        procs,
        "router",
        router_config(
            stack.origin_ports,
            stack.echo_port,
            endpoints=("direct", "serial3", "direct15", "echo", "model"),
            model_port=stack.model_port,
        ),
        port=stack.router_port,
        admin_port=router_admin,
    )
    assert main.managed is not None
    stack.processes["router"] = main.managed
    log(f"mce-router on {stack.router_port} (pid {main.managed.pid}), CPU {PROXY_CPU}")
    # The same router with its hot path run from the Python source instead of the compiled
    # modules: what compiling buys.
    pure = start_router(
        procs,
        "router-pure",
        router_config(stack.origin_ports, stack.echo_port, endpoints=("direct",)),
        port=stack.pure_port,
        admin_port=pure_admin,
        env={"MCE_ROUTER_PURE_PYTHON": "1"},
    )
    assert pure.managed is not None
    stack.processes["router-pure"] = pure.managed
    log(f"mce-router, pure-Python hot path, on {stack.pure_port}, CPU {PROXY_CPU}")
    stack.processes["lean"] = start_lean_proxy(procs, stack.lean_port, stack.origin_ports[0])
    log(f"lean reference proxy on {stack.lean_port}, CPU {PROXY_CPU}")

    if not args.no_variants:
        for variant, (on_port, on_admin, off_port, off_admin) in zip(
            VARIANTS, [spare[i : i + 4] for i in range(0, len(spare), 4)], strict=True
        ):
            stack.variants[variant.name] = start_variant(
                stack, variant, on_port, on_admin, off_port, off_admin
            )
    return stack


def start_variant(
    stack: Stack, variant: Variant, on_port: int, on_admin: int, off_port: int, off_admin: int
) -> dict[str, Any]:
    base = router_config(stack.origin_ports, stack.echo_port, endpoints=("direct",))
    if variant.sign:
        try:
            import botocore.auth  # noqa: F401
        except ImportError:
            status = "skipped: botocore is needed to sign requests (pip install boto3)"
            log(f"variant {variant.name}: {status}")
            return {"status": status}
    on = start_router(
        stack.procs,
        f"router-{variant.name}-on",
        {**base, **variant.on},
        port=on_port,
        admin_port=on_admin,
        feature_key=variant.key,
    )
    if on.managed is None:
        log(f"variant {variant.name} on: {on.unavailable}")
        return {"status": on.unavailable}
    off = start_router(
        stack.procs,
        f"router-{variant.name}-off",
        {**base, **variant.off},
        port=off_port,
        admin_port=off_admin,
        feature_key=variant.key,
    )
    if off.managed is None:
        stack.procs.stop(on.managed)
        log(f"variant {variant.name} off: {off.unavailable}")
        return {"status": off.unavailable}
    stack.processes[f"router-{variant.name}-on"] = on.managed
    stack.processes[f"router-{variant.name}-off"] = off.managed
    log(f"variant {variant.name}: on router {on_port}, off router {off_port}")
    return {"status": "measured", "on_port": on_port, "off_port": off_port}


# ----------------------------------------------------------------------------------------------
# Sanity: every path answers 200 with the right body before anything is timed
# ----------------------------------------------------------------------------------------------


def post(
    url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0
) -> tuple[int, bytes]:
    rest = url.split("://", 1)[1]
    hostport, path = rest.split("/", 1)
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/" + path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sanity_check(stack: Stack) -> None:
    json_ct = {"Content-Type": "application/json"}
    checks: list[tuple[str, str, bytes, dict[str, str], bytes]] = [
        (
            "origin",
            stack.invocations_url(stack.origin_ports[0]),
            REQUEST_BODY,
            json_ct,
            ORIGIN_BODY,
        ),
        (
            "nginx",
            stack.invocations_url(stack.proxy_port),
            REQUEST_BODY,
            json_ct,
            ORIGIN_BODY,
        ),
        (
            "router direct",
            stack.router_url("direct"),
            REQUEST_BODY,
            {**json_ct, TARGET_HEADER: "origin"},
            ORIGIN_BODY,
        ),
        ("router serial3", stack.router_url("serial3"), REQUEST_BODY, json_ct, ORIGIN_BODY),
    ]
    checks += [
        (
            f"router direct15 {h}",
            stack.router_url("direct15"),
            REQUEST_BODY,
            {**json_ct, TARGET_HEADER: h},
            ORIGIN_BODY,
        )
        for h in DIRECT15_HOSTS
    ]
    big = stack.files["6m"].read_bytes()
    octet = {"Content-Type": "application/octet-stream"}
    for name, size_body in (("small", REQUEST_BODY), ("6 MiB", big)):
        checks += [
            (
                f"echo direct {name}",
                stack.invocations_url(stack.echo_port),
                size_body,
                octet,
                size_body,
            ),
            (
                f"echo nginx {name}",
                stack.invocations_url(stack.proxy_echo_port),
                size_body,
                octet,
                size_body,
            ),
            (
                f"echo nginx-plain {name}",
                stack.invocations_url(stack.plain_echo_port),
                size_body,
                octet,
                size_body,
            ),
            (
                f"echo router {name}",
                stack.router_url("echo"),
                size_body,
                {**octet, TARGET_HEADER: "echo"},
                size_body,
            ),
        ]
    # The origin reads and drops a large body and answers its fixed body, through either proxy.
    checks += [
        ("sink direct 6 MiB", stack.invocations_url(stack.origin_ports[0]), big, octet,
         ORIGIN_BODY),
        ("sink nginx 6 MiB", stack.invocations_url(stack.proxy_sink_port), big, octet,
         ORIGIN_BODY),
        ("sink nginx-plain 6 MiB", stack.invocations_url(stack.plain_sink_port), big,
         octet, ORIGIN_BODY),
        ("sink router 6 MiB", stack.router_url("direct"), big,
         {**octet, TARGET_HEADER: "origin"}, ORIGIN_BODY),
    ]  # fmt: skip
    # The model container's own answer to the batch is what both proxies must return.
    model_url = stack.invocations_url(stack.model_port)
    status, scored = post(model_url, MODEL_BATCH_BODY, json_ct)
    if status != 200 or not scored.startswith(b'{"predictions":'):
        raise BenchError(f"the model container answered {status}: {scored[:300]!r}")
    checks += [
        ("model nginx", stack.invocations_url(stack.proxy_model_port), MODEL_BATCH_BODY,
         json_ct, scored),
        ("model router", stack.router_url("model"), MODEL_BATCH_BODY,
         {**json_ct, TARGET_HEADER: "model"}, scored),
    ]  # fmt: skip
    for variant, info in stack.variants.items():
        if info.get("status") == "measured":
            for side in ("on", "off"):
                url = stack.router_url("direct", info[f"{side}_port"])
                headers = {**json_ct, TARGET_HEADER: "origin"}
                if side == "on" and next(v for v in VARIANTS if v.name == variant).sign:
                    headers.update(sigv4_headers(url, REQUEST_BODY, headers))
                checks.append((f"router {variant}-{side}", url, REQUEST_BODY, headers, ORIGIN_BODY))
    for variant, info in stack.variants.items():
        spec = next(v for v in VARIANTS if v.name == variant)
        if info.get("status") == "measured" and spec.sign:
            # The "on" router must refuse what it did not sign, or "on" measures nothing.
            url = stack.router_url("direct", info["on_port"])
            status, got = post(url, REQUEST_BODY, {**json_ct, TARGET_HEADER: "origin"})
            info["unsigned_status"] = status
            if status == 200:
                log(f"variant {variant}: an unsigned request was answered 200 by the 'on' router")
    for name, url, body, headers, expected in checks:
        status, got = post(url, body, headers)
        if status != 200 or got != expected:
            raise BenchError(
                f"sanity check {name} ({url}) failed: status {status}, "
                f"{len(got)} bytes: {got[:300]!r}"
            )
    log(f"sanity checks passed ({len(checks)} requests, bodies verified)")


# ----------------------------------------------------------------------------------------------
# Plan and rounds
# ----------------------------------------------------------------------------------------------


def build_cases(stack: Stack, args: argparse.Namespace) -> list[Case]:
    small = stack.files["small"]
    n = len(REQUEST_BODY)
    origin_url = stack.invocations_url(stack.origin_ports[0])
    nginx_url = stack.invocations_url(stack.proxy_port)
    echo_url = stack.invocations_url(stack.echo_port)
    echo_nginx_url = stack.invocations_url(stack.proxy_echo_port)
    c = args.connections

    def small_case(cid: str, group: str, path: str, url: str, conns: int, **kw: Any) -> Case:
        return Case(cid, group, path, url, conns, small, n, warm=conns > 1, **kw)

    cases = [
        small_case("c64.origin", "throughput", "origin", origin_url, c, proxy="origin"),
        small_case("c64.nginx", "throughput", "nginx", nginx_url, c, proxy="nginx"),
        small_case(
            "c64.router",
            "throughput",
            "router",
            stack.router_url("direct"),
            c,
            targets=("origin",),
            proxy="router",
        ),
        small_case(
            "c64.router-pure",
            "throughput",
            "router-pure",
            stack.router_url("direct", stack.pure_port),
            c,
            targets=("origin",),
            proxy="router-pure",
        ),
        small_case(
            "c64.lean",
            "throughput",
            "lean",
            stack.invocations_url(stack.lean_port),
            c,
            proxy="lean",
        ),
        small_case(
            "c64.router-serial3",
            "throughput",
            "router-serial3",
            stack.router_url("serial3"),
            c,
            proxy="router",
        ),
        small_case(
            "c64.router-direct15",
            "throughput",
            "router-direct15",
            stack.router_url("direct15"),
            c,
            targets=DIRECT15_HOSTS,
            proxy="router",
        ),
        small_case("c1.origin", "latency", "origin", origin_url, 1, proxy="origin"),
        small_case("c1.nginx", "latency", "nginx", nginx_url, 1, proxy="nginx"),
        small_case(
            "c1.router",
            "latency",
            "router",
            stack.router_url("direct"),
            1,
            targets=("origin",),
            proxy="router",
        ),
        small_case(
            "c1.router-serial3",
            "latency",
            "router-serial3",
            stack.router_url("serial3"),
            1,
            proxy="router",
        ),
        small_case("c64.echo-direct", "throughput", "echo-direct", echo_url, c, proxy="echo"),
        small_case("c64.echo-nginx", "throughput", "echo-nginx", echo_nginx_url, c, proxy="nginx"),
        small_case(
            "c64.echo-router",
            "throughput",
            "echo-router",
            stack.router_url("echo"),
            c,
            targets=("echo",),
            proxy="router",
        ),
    ]
    batch, model_url = stack.files["batch"], stack.invocations_url(stack.model_port)
    for path, url, targets, proxy in (
        ("model-direct", model_url, (), "model"),
        ("model-nginx", stack.invocations_url(stack.proxy_model_port), (), "nginx"),
        ("model-router", stack.router_url("model"), ("model",), "router"),
    ):
        cases.append(
            Case(
                f"c64.{path}",
                "throughput",
                path,
                url,
                c,
                batch,
                len(MODEL_BATCH_BODY),
                targets=targets,
                proxy=proxy,
            )
        )
    # Large bodies two ways: posted to the nginx origin, which reads and drops them and answers
    # its fixed body (what the proxy itself sustains, the setup of the table), and
    # echoed by the Python container (1 MiB each way; the container is the bottleneck). nginx
    # twice: as a plain proxy (its defaults put such bodies in temp files) and tuned to hold
    # them in memory, as the router does.
    sink_nginx_url = stack.invocations_url(stack.proxy_sink_port)
    for size, nbytes in (("1m", MIB), ("6m", 6 * MIB)):
        for path, url, targets, proxy in (
            ("sink-direct", origin_url, (), "origin"),
            ("sink-nginx-plain", stack.invocations_url(stack.plain_sink_port), (),
             "nginx-plain"),
            ("sink-nginx", sink_nginx_url, (), "nginx"),
            ("sink-router", stack.router_url("direct"), ("origin",), "router"),
            ("echo-direct", echo_url, (), "echo"),
            ("echo-nginx-plain", stack.invocations_url(stack.plain_echo_port), (),
             "nginx-plain"),
            ("echo-nginx", echo_nginx_url, (), "nginx"),
            ("echo-router", stack.router_url("echo"), ("echo",), "router"),
        ):  # fmt: skip
            if size == "6m" and path.endswith("-direct"):
                continue  # the 1 MiB direct rows show the origin's and container's ceilings
            cases.append(
                Case(
                    f"body{size}.{path}",
                    "body",
                    path,
                    url,
                    args.body_connections,
                    stack.files[size],
                    nbytes,
                    content_type="application/octet-stream",
                    targets=targets,
                    proxy=proxy,
                    fine_rss=True,
                )
            )
    for variant in VARIANTS:
        info = stack.variants.get(variant.name, {})
        if info.get("status") != "measured":
            continue
        for side in ("on", "off"):
            url = stack.router_url("direct", info[f"{side}_port"])
            sign = None
            if variant.sign and side == "on":
                sign = _signer(url)
            for cid, conns in (
                (f"c64.router-{variant.name}-{side}", c),
                (f"c1.router-{variant.name}-{side}", 1),
            ):
                cases.append(
                    small_case(
                        cid,
                        "variant",
                        f"router-{variant.name}-{side}",
                        url,
                        conns,
                        targets=("origin",),
                        proxy=f"router-{variant.name}-{side}",
                        headers=sign,
                    )
                )
    if args.cases:
        wanted = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [case for case in cases if any(w in case.id for w in wanted)]
    return cases


def _signer(url: str) -> Any:
    def headers() -> dict[str, str]:
        base = {"Content-Type": "application/json", TARGET_HEADER: "origin"}
        return sigv4_headers(url, REQUEST_BODY, base)

    return headers


def run_rounds(stack: Stack, cases: list[Case], args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    router = stack.processes["router"]
    for round_no in range(1, args.rounds + 1):
        # ABBA order: drifts (thermal, page cache, allocator) hit every path alike.
        order = cases if round_no % 2 == 1 else list(reversed(cases))
        log(f"round {round_no}/{args.rounds}: {len(order)} runs")
        for case in order:
            budget = args.quiet_budget - stack.quiet_waited
            if budget > 0.5:
                waited, load = wait_until_quiet(
                    list(stack.processes.values()),
                    threshold=args.quiet_threshold,
                    max_wait=min(budget, 10.0),
                )
                stack.quiet_waited += waited
                if load >= args.quiet_threshold:
                    log(f"  other processes use {load:.0f}% of a CPU; measuring anyway")
            result = measure(
                case,
                seconds=args.seconds,
                warmup=args.warmup,
                workdir=stack.workdir,
                processes=stack.processes,
                round_no=round_no,
            )
            runs.append(result)
            log(_one_line(result))
            _check_alive(stack)
        stack.rss_by_round.append({"round": round_no, "router_rss": tree_rss(router.tree())})
    # Make-up runs for cases with fewer than two quiet rounds, the worst first (bounded).
    deadline = time.monotonic() + args.makeup_budget
    wanted = min(2, args.rounds)

    def quiet_rounds(case: Case) -> int:
        return sum(
            1 for r in runs if r["case"] == case.id and r["foreign_cpu_pct"] < args.quiet_threshold
        )

    noisy = sorted(
        (case for case in cases if args.makeup_budget > 0 and quiet_rounds(case) < wanted),
        key=quiet_rounds,
    )
    if noisy:
        log(f"make-up runs for {len(noisy)} case(s) with fewer than {wanted} quiet rounds")
    for case in noisy:
        if time.monotonic() + args.seconds + args.warmup + 1 > deadline:
            log("  make-up budget used up")
            break
        waited, _ = wait_until_quiet(
            list(stack.processes.values()),
            threshold=args.quiet_threshold,
            max_wait=max(0.0, min(10.0, deadline - time.monotonic() - args.seconds - 2)),
        )
        result = measure(
            case,
            seconds=args.seconds,
            warmup=args.warmup,
            workdir=stack.workdir,
            processes=stack.processes,
            round_no=args.rounds + 1,
        )
        result["makeup"] = True
        runs.append(result)
        log(_one_line(result))
        _check_alive(stack)
    return runs


def _one_line(r: dict[str, Any]) -> str:
    lat = r["latency_us"]
    text = (
        f"  {r['case']:<26} {r['rps']:>10,.0f} req/s  p50 {lat['p50']:>7,} us  "
        f"p99 {lat['p99']:>8,} us"
    )
    if r["body_bytes"] > 1000:
        text += f"  {r['mb_per_s']:>7.1f} MB/s"
    if r.get("proxy_cpu_us_per_req") is not None:
        text += f"  {r['proxy']} {r['proxy_cpu_us_per_req']:.1f} us/req {r['proxy_cpu_pct']:.0f}%"
        if r["body_bytes"] > 1000:
            text += f" peak {r['proxy_rss_peak'] / MIB:.0f} MiB"
    if r["foreign_cpu_pct"] >= 10:
        text += f"  (other processes: {r['foreign_cpu_pct']:.0f}% CPU)"
    if r["socket_errors"] or r["non_2xx"]:
        text += f"  !! errors {r['errors']}"
    return text


def _check_alive(stack: Stack) -> None:
    for name, managed in stack.processes.items():
        if managed.popen.poll() is not None:
            raise BenchError(
                f"{name} exited during the benchmark (status {managed.popen.returncode}):\n"
                f"{managed.tail(30)}"
            )


# ----------------------------------------------------------------------------------------------
# Idle keep-alive connections
# ----------------------------------------------------------------------------------------------


def idle_test(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """Hold N idle keep-alive connections on a fresh router (Direct endpoint only), so its RSS
    is not mixed up with heap the main router kept from the large-body runs."""
    # Chosen now: ports picked at start could have become some connection's source port.
    port, admin = free_ports(2)
    started = start_router(
        stack.procs,
        "router-idle",
        router_config(stack.origin_ports, stack.echo_port, endpoints=("direct",)),
        port=port,
        admin_port=admin,
    )
    assert started.managed is not None
    stack.processes["router-idle"] = started.managed
    try:
        return _idle_test(stack, args, started.managed, port)
    finally:
        del stack.processes["router-idle"]
        stack.procs.stop(started.managed)


def _idle_test(
    stack: Stack, args: argparse.Namespace, router: Managed, port: int
) -> dict[str, Any]:
    tree = router.tree()
    result: dict[str, Any] = {"requested": args.idle_connections, "router": "fresh, Direct only"}
    with contextlib.suppress(Exception):
        import psutil

        result["router_nofile"] = psutil.Process(router.pid).rlimit(psutil.RLIMIT_NOFILE)[0]
    # A few requests first, so the "before" RSS is a router that has served traffic.
    for _ in range(20):
        post(
            stack.router_url("direct", port),
            REQUEST_BODY,
            {"Content-Type": "application/json", TARGET_HEADER: "origin"},
        )
    time.sleep(1.0)
    result["rss_before"] = tree_rss(tree)
    cmd = pinned(
        [
            sys.executable,
            str(HERE / "idle_conns.py"),
            "--port",
            str(port),
            "--path",
            "/endpoints/direct/invocations",
            "--header",
            f"{TARGET_HEADER}: origin",
            "--body",
            REQUEST_BODY.decode(),
            "--count",
            str(args.idle_connections),
            "--hold",
            "180",
            "--open-timeout",
            "120",
        ],
        LOAD_CPU,
    )
    stderr_path = stack.workdir / "idle-conns.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True
    )
    reader.start()
    try:
        try:
            opened = json.loads(lines.get(timeout=150))
        except queue.Empty:
            raise BenchError("idle connection client did not report within 150 s") from None
        result.update(
            held=opened["held"],
            failed=opened["failed"],
            open_seconds=opened["seconds"],
            statuses=opened["statuses"],
            open_errors=opened["errors"],
            client_nofile=opened["nofile"],
        )
        log(
            f"idle: {opened['held']} connections held ({opened['failed']} failed) "
            f"in {opened['seconds']} s"
        )
        time.sleep(1.0)
        result["rss_held"] = tree_rss(tree)
        result["router_established"] = _established(router.pid, port)
        cpu0 = tree_cpu_seconds(tree)
        time.sleep(3.0)
        result["idle_cpu_pct"] = 100 * (tree_cpu_seconds(tree) - cpu0) / 3.0
        c1 = Case(
            "c1.router-with-idle",
            "idle",
            "router-idle",
            stack.router_url("direct", port),
            1,
            stack.files["small"],
            len(REQUEST_BODY),
            targets=("origin",),
            proxy="router-idle",
        )
        meanwhile = measure(
            c1,
            seconds=min(3, args.seconds),
            warmup=0,
            workdir=stack.workdir,
            processes=stack.processes,
            round_no=0,
        )
        result["c1_p50_us"] = meanwhile["latency_us"]["p50"]
        result["c1_p99_us"] = meanwhile["latency_us"]["p99"]
        result["c1_rps"] = meanwhile["rps"]
        result["c1_errors"] = meanwhile["socket_errors"] + meanwhile["non_2xx"]
        result["rss_held_after_c1"] = tree_rss(tree)
        assert proc.stdin is not None
        proc.stdin.write("release\n")
        proc.stdin.flush()
        try:
            closed = json.loads(lines.get(timeout=60))
            result["still_open_at_release"] = closed["still_open_at_release"]
        except queue.Empty:
            result["still_open_at_release"] = None
        proc.wait(timeout=30)
        time.sleep(2.0)
        result["rss_released"] = tree_rss(tree)
        held = result.get("held") or 0
        if held:
            result["bytes_per_conn"] = (result["rss_held"] - result["rss_before"]) / held
        log(
            f"idle: router RSS {result['rss_before'] / 1e6:.1f} MB -> "
            f"{result['rss_held'] / 1e6:.1f} MB holding {held}, "
            f"{result['rss_released'] / 1e6:.1f} MB after release; "
            f"idle CPU {result['idle_cpu_pct']:.1f}%"
        )
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
    return result


def _established(pid: int, port: int) -> int | None:
    try:
        import psutil

        return sum(
            1
            for conn in psutil.Process(pid).net_connections(kind="tcp")
            if conn.status == "ESTABLISHED" and conn.laddr and conn.laddr.port == port
        )
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# Profile (py-spy)
# ----------------------------------------------------------------------------------------------


PROFILES = {
    # name: (router, endpoint, target, body file key, connections arg, output stem)
    "direct": ("router", "direct", "origin", "small", "connections", "router-flame"),
    "body1m": ("router", "echo", "echo", "1m", "body_connections", "router-flame-1mib"),
    # The Direct path of the "auth on" variant router (SigV4-signed requests); skipped when
    # the variant is not available.
    "auth": ("router-auth-on", "direct", "origin", "small", "connections", "router-flame-auth"),
}


def record_profile(stack: Stack, args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """py-spy flame graph (and collapsed stacks) of the router while wrk drives it."""
    pyspy = which("py-spy")
    if pyspy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    seconds = args.profile_seconds
    outputs: dict[str, Any] = {}
    texts = []
    for name in args.profile_paths:
        process, endpoint, target, body, conns_arg, stem = PROFILES[name]
        router = stack.processes.get(process)
        if router is None:
            log(f"profile {name}: skipped ({process} is not running)")
            continue
        port = stack.variants["auth"]["on_port"] if process == "router-auth-on" else None
        url = stack.router_url(endpoint, port)
        body_file = stack.files[body]
        case = Case(
            f"profile.{name}",
            "profile",
            f"router {name}",
            url,
            getattr(args, conns_arg),
            body_file,
            body_file.stat().st_size,
            content_type="application/json" if body == "small" else "application/octet-stream",
            targets=(target,),
            proxy=process,
            headers=_signer(url) if process == "router-auth-on" else None,
        )
        total = 2 + 2 * seconds + 4
        outcome: dict[str, Any] = {}

        def drive(case: Case = case, total: int = total, outcome: dict[str, Any] = outcome) -> None:
            try:
                outcome["wrk"] = run_wrk(case, total, stack.workdir, tag=case.id)
            except Exception as exc:  # reported below
                outcome["error"] = str(exc)

        log(f"profile {name}: wrk drives the router for {total} s; py-spy records {seconds} s")
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        time.sleep(2)
        svg = results / f"{stem}.svg"
        collapsed = results / f"{stem}.collapsed.txt"
        common = ["--pid", str(router.pid), "--duration", str(seconds), "--rate", "200"]
        for cmd in (
            [pyspy, "record", "-o", str(svg), "--format", "flamegraph", *common],
            [pyspy, "record", "-o", str(collapsed), "--format", "raw", "--native", *common],
        ):
            done = subprocess.run(
                pinned(cmd, LOAD_CPU), capture_output=True, text=True, timeout=seconds + 60
            )
            if done.returncode != 0 and "--native" in cmd:
                log("py-spy --native failed; recording Python frames only")
                cmd.remove("--native")
                done = subprocess.run(
                    pinned(cmd, LOAD_CPU), capture_output=True, text=True, timeout=seconds + 60
                )
            if done.returncode != 0:
                driver.join(timeout=total + 30)
                return {"error": f"py-spy failed: {(done.stderr or done.stdout)[-1500:]}"}
        driver.join(timeout=total + 30)
        top = hot_spots(collapsed)
        texts.append(profile_text(name, case, top, outcome.get("wrk"), seconds))
        outputs[name] = {
            "svg": str(svg.relative_to(REPO)) if svg.is_relative_to(REPO) else str(svg),
            "collapsed": (
                str(collapsed.relative_to(REPO))
                if collapsed.is_relative_to(REPO)
                else str(collapsed)
            ),
            "wrk_during_profile": outcome.get("wrk"),
            "wrk_error": outcome.get("error"),
            "top": top,
        }
    summary = results / "router-profile.md"
    summary.write_text("\n".join(texts), encoding="utf-8")
    print("\n".join(texts))
    outputs["summary"] = str(summary)
    return outputs


_LINE = re.compile(r":\d+\)$")
_ADDRESS = re.compile(r"^0x[0-9a-f]+ \((.+)\)$")
#: libc leaf frames that are system calls (kernel time on behalf of the router).
_SYSCALLS = {
    "write",
    "writev",
    "read",
    "readv",
    "send",
    "sendmsg",
    "recv",
    "recvmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "accept4",
    "close",
    "connect",
    "socket",
}


def _is_python(frame: str) -> bool:
    return ".py)" in frame or frame.startswith("<module> (")


def hot_spots(collapsed: Path, limit: int = 20) -> dict[str, Any]:
    """Per-function sample counts of the router's event-loop thread from py-spy's raw output.

    ``self_python`` charges each sample to its innermost Python function (C code it calls,
    such as a socket write, included); ``self_native`` to the innermost native frame when the
    profile was recorded with ``--native`` (system calls show up as ``write (libc)`` etc.).
    Other threads (the metrics sampler's executor, mostly idle) are counted apart.
    """
    self_python: Counter[str] = Counter()
    self_native: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    others: Counter[str] = Counter()
    loop_samples = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(_LINE.sub(")", f)) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        python = [f for f in frames if _is_python(f)]
        if not any(f.startswith("Runner.run (") or f.startswith("run (uvloop") for f in python):
            others[python[-1] if python else frames[-1] if frames else "?"] += n
            continue
        loop_samples += n
        self_python[python[-1]] += n
        leaf = frames[-1]
        match = _ADDRESS.match(leaf)
        if match:
            leaf = f"[{match.group(1)}]"
        name = leaf.split(" (", 1)[0]
        if name in _SYSCALLS and "libc" in leaf:
            leaf = f"syscall {name}"
        self_native[leaf] += n
        for frame in set(python):
            inclusive[frame] += n
    # Frames on every stack (module, main, uvloop's run) say nothing.
    inclusive = Counter({f: c for f, c in inclusive.items() if c < loop_samples})

    def top(counter: Counter[str], k: int) -> list[tuple[str, int, float]]:
        return (
            [(f, c, 100 * c / loop_samples) for f, c in counter.most_common(k)]
            if (loop_samples)
            else []
        )

    syscalls = sum(c for f, c in self_native.items() if f.startswith("syscall "))
    return {
        "samples": loop_samples,
        "other_thread_samples": sum(others.values()),
        "other_threads": others.most_common(3),
        "syscall_pct": 100 * syscalls / loop_samples if loop_samples else 0.0,
        "native": any(not _is_python(f) for f in self_native),
        "self_python": top(self_python, limit),
        "self_native": top(self_native, limit),
        "inclusive": top(inclusive, limit + 10),
    }


def _short(frame: str) -> str:
    # "on_body (/work/main/mce_router/dataplane/proxy.py)" -> "on_body (dataplane/proxy.py)"
    for marker in ("/mce_router/", "/site-packages/", "/lib/python3"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return f"{head}({tail.split(marker, 1)[1]}" if marker in tail else frame
    return frame.replace("(mce_router/", "(")


def profile_text(
    name: str, case: Case, top: dict[str, Any], wrk: dict[str, Any] | None, seconds: int
) -> str:
    body = f"{case.body_bytes:,}-byte bodies" if case.body_bytes > 1000 else "97-byte JSON"
    lines = [
        f"# Router profile: {name} ({case.url.split('/endpoints/')[1]}, {body}, "
        f"{case.connections} connections)\n",
        f"py-spy, {top['samples']} samples of the event-loop thread over {seconds} s "
        "(idle time excluded; py-spy pauses the router for each sample, so req/s is lower "
        "than unprofiled).",
    ]
    if wrk:
        rps = wrk["requests"] / (wrk["duration_us"] / 1e6)
        lines.append(f"wrk during the profile: {rps:,.0f} req/s.")
    if top["native"]:
        lines.append(
            f"System calls (innermost frame in libc): {top['syscall_pct']:.1f}% of samples."
        )
    if top["other_thread_samples"]:
        lines.append(
            f"Other threads: {top['other_thread_samples']} samples, not counted below "
            f"(innermost: {top['other_threads']})."
        )

    def table(title: str, rows: list[tuple[str, int, float]]) -> None:
        lines.append(f"\n## {title}\n")
        lines.append("| % | samples | function |")
        lines.append("| --- | --- | --- |")
        lines.extend(f"| {pct:.1f} | {n} | `{f}` |" for f, n, pct in rows)

    table("Self time by Python function (C calls it makes included)", top["self_python"])
    if top["native"]:
        table("Self time by innermost frame (native)", top["self_native"])
    table("Inclusive time (Python functions)", top["inclusive"])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Metadata, anomalies, main
# ----------------------------------------------------------------------------------------------


def collect_meta(args: argparse.Namespace) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = int(line.split()[1]) * 1024
    versions: dict[str, str] = {"python": platform.python_version()}
    nginx = which("nginx")
    versions["nginx"] = command_output([nginx, "-v"]).rsplit("/", 1)[-1] if nginx else "missing"
    wrk = which("wrk")
    versions["wrk"] = (
        command_output([wrk, "-v"]).split("[")[0].replace("wrk", "").strip() if wrk else "missing"
    )
    versions["router hot path"] = (
        command_output(
            [sys.executable, "-c", "import mce_router.dataplane as d; print(d.implementation())"]
        ).strip()
        or "unknown"
    )
    for dist in ("mce-router", "uvloop", "httptools", "aiohttp"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    commit = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if commit and " " not in commit:
        versions["mce-router commit"] = commit
    # Read-only: which router files differ from that commit (work in progress is measured).
    status = command_output(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all", "mce_router"]
    )
    changed = sorted(
        {line.split()[-1] for line in status.splitlines() if line.strip() and " " in line.strip()}
    )
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": f"python benchmarks/run.py {argv}".strip(),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model,
            "kernel": platform.release(),
            "memory_bytes": mem_total,
        },
        "versions": versions,
        "router_files_changed_since_commit": changed,
    }


def find_anomalies(
    runs: list[dict[str, Any]], stack: Stack, idle: dict[str, Any] | None
) -> list[str]:
    found: list[str] = []
    for run in runs:
        if run["socket_errors"] or run["non_2xx"]:
            found.append(
                f"{run['case']} round {run['round']}: {run['socket_errors']} socket errors "
                f"{run['errors']}, {run['non_2xx']} responses >= 400"
            )
    for name, managed in stack.processes.items():
        if not name.startswith("router"):
            continue
        problems = router_log_problems(managed)
        if problems:
            sample = "; ".join(p[:200] for p in problems[:3])
            found.append(f"{name} logged {len(problems)} warning/error lines, e.g. {sample}")
    for name, info in stack.variants.items():
        if info.get("unsigned_status") == 200:
            found.append(f"variant {name}: the 'on' router answered an unsigned request with 200")
    timeline = stack.rss_by_round
    if len(timeline) >= 2:
        first, last = timeline[0]["router_rss"], timeline[-1]["router_rss"]
        if last - first > 16 * MIB:
            found.append(
                f"router RSS after round 1 {first / MIB:.0f} MiB, after round "
                f"{timeline[-1]['round']} {last / MIB:.0f} MiB (grew {(last - first) / MIB:.0f}"
                " MiB between rounds)"
            )
    if idle and not idle.get("error"):
        held, still = idle.get("held"), idle.get("still_open_at_release")
        if held is not None and still is not None and still < held:
            found.append(f"idle test: the router closed {held - still} of {held} idle connections")
        if idle.get("failed"):
            found.append(
                f"idle test: {idle['failed']} of {idle.get('requested')} connections failed "
                f"({idle.get('open_errors')}, statuses {idle.get('statuses')})"
            )
        if idle.get("c1_errors"):
            found.append(f"idle test: {idle['c1_errors']} errors in the 1-connection run")
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mce_router performance benchmark (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 1 round, 2 s runs, results/quick.*"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--seconds", type=int, help="seconds per measured run (default 4; 2)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per run (default 1)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--body-connections",
        type=int,
        default=8,
        help="connections for the 1 MiB / 6 MiB runs (default 8)",
    )
    parser.add_argument("--idle-connections", type=int, default=10000)
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-connection test")
    parser.add_argument(
        "--no-variants", action="store_true", help="skip the metrics/auth on-off variants"
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=10.0,
        help="before each run, wait for other processes to use less than this %% of a CPU",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        help="total seconds a run may spend waiting for quiet (default 45; --quick: 10)",
    )
    parser.add_argument(
        "--makeup-budget",
        type=float,
        help="seconds for re-running cases that had other load in every round (default 45; "
        "--quick: 0)",
    )
    parser.add_argument("--cases", help="only cases whose id contains one of these (comma list)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the runs, record a py-spy flame graph of the router",
    )
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="only start the stack and record the py-spy flame graph",
    )
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument(
        "--profile-path",
        dest="profile_paths",
        action="append",
        choices=sorted(PROFILES),
        help="what to profile (repeatable; default: direct, body1m and auth when available)",
    )
    parser.add_argument("--output", help="results file prefix (default latest; --quick: quick)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get/pip install missing tools"
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep /tmp/mce-bench-* (configs, logs) for inspection",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2 if args.quick else 4)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.profile_paths = args.profile_paths or ["direct", "body1m", "auth"]
    if args.quiet_budget is None:
        args.quiet_budget = 10.0 if args.quick else 45.0
    if args.makeup_budget is None:
        args.makeup_budget = 0.0 if args.quick else 45.0
    args.output = args.output or ("quick" if args.quick else "latest")
    if args.rounds < 1 or args.seconds < 1 or args.connections < 1:
        parser.error("--rounds, --seconds and --connections must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    ensure_tools(need_pyspy=args.profile or args.profile_only, install=not args.no_install)
    pinned_ok = can_pin()
    if pinned_ok:
        pin_self(LOAD_CPU)
    else:
        log("fewer than 2 CPUs (or no taskset): processes are NOT pinned; results are noisier")
    nofile = raise_nofile_limit()
    meta = collect_meta(args)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    idle: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    anomalies: list[str] = []
    with workspace(keep=args.keep_workdir) as (workdir, procs):
        stack = start_stack(workdir, procs, args, nofile)
        sanity_check(stack)
        if args.profile_only:
            profile = record_profile(stack, args, results_dir)
            if "error" in profile:
                log(profile["error"])
                return 1
            for name in args.profile_paths:
                if name in profile:
                    log(f"flame graph ({name}): {profile[name]['svg']}")
            return 0
        cases = build_cases(stack, args)
        per_run = args.seconds + args.warmup + 0.6
        log(
            f"{len(cases)} cases x {args.rounds} rounds x ~{per_run:.1f} s = "
            f"~{len(cases) * args.rounds * per_run / 60:.1f} min of load"
        )
        runs = run_rounds(stack, cases, args)
        if not args.no_idle:
            try:
                idle = idle_test(stack, args)
            except BenchError as exc:
                idle = {"error": str(exc), "requested": args.idle_connections}
                log(f"idle test failed: {exc}")
        if args.profile:
            profile = record_profile(stack, args, results_dir)
        _check_alive(stack)
        anomalies = find_anomalies(runs, stack, idle)
        rss_timeline = stack.rss_by_round
        variants_status = {name: dict(info) for name, info in stack.variants.items()}
        router_pid = stack.processes["router"].pid
        quiet_waited = stack.quiet_waited

    summary = report.summarize(runs, args.quiet_threshold)
    for name, info in variants_status.items():
        if info.get("status") == "measured":
            for side in ("on", "off"):
                tp = summary.get(f"c64.router-{name}-{side}", {})
                lat = summary.get(f"c1.router-{name}-{side}", {})
                info[side] = {
                    "c64_rps": tp.get("rps"),
                    "cpu_us_per_req": tp.get("cpu_us_per_req"),
                    "c1_p50_us": lat.get("p50_us"),
                    "c1_p99_us": lat.get("p99_us"),
                }
    if not args.no_variants:
        for variant in VARIANTS:
            variants_status.setdefault(variant.name, {"status": "skipped"})
    derived = report.derive(summary, idle, args.body_connections)
    result: dict[str, Any] = {
        "meta": meta,
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "connections": args.connections,
            "body_connections": args.body_connections,
            "idle_connections": args.idle_connections,
            "proxy_cpu": PROXY_CPU,
            "load_cpu": LOAD_CPU,
            "pinned": pinned_ok,
            "request_body_bytes": len(REQUEST_BODY),
            "origin_body_bytes": len(ORIGIN_BODY),
            "wall_seconds": round(time.monotonic() - started, 1),
            "router_pid": router_pid,
            "quiet_threshold_pct": args.quiet_threshold,
            "quiet_waited_s": round(quiet_waited, 1),
        },
        "summary": summary,
        "derived": derived,
        "targets": report.targets(derived, idle),
        "idle": idle,
        "variants": variants_status,
        "router_rss_by_round": rss_timeline,
        "profile": profile,
        "anomalies": anomalies,
        "runs": runs,
    }
    prefix = results_dir / args.output
    md = report.markdown(result)
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    Path(f"{prefix}.md").write_text(md)
    try:
        problem = report.chart(result, Path(f"{prefix}.png"))
    except Exception as exc:  # the numbers are written already; a chart bug must not hide them
        problem = f"chart failed: {exc!r}"
    if problem:
        log(problem)
    print(md)
    log(
        f"wrote {prefix}.json, {prefix}.md"
        + ("" if problem else f", {prefix}.png")
        + f" in {result['settings']['wall_seconds'] / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        sys.exit(130)
