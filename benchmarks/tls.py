#!/usr/bin/env python3
"""TLS on the runtime listener: the router against nginx terminating TLS, same run, same origin.

    python benchmarks/tls.py            # 3 interleaved rounds of 5 s per case, ~2 min
    python benchmarks/tls.py --quick    # 1 round of 2 s

Both proxies: one process pinned to the proxy CPU, TLS 1.2+ with OpenSSL's defaults (TLS 1.3,
the cipher wrk and the server agree on is printed), keep-alive client connections (wrk opens
64 and reuses them: handshakes are not what is measured), plain keep-alive upstream connections
to the same nginx origin. The plain-HTTP pair runs in the same rounds, so the table shows what
TLS costs each proxy. Results: benchmarks/results/tls.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import trustme
import yaml
from benchlib.load import Case, case_table, interleaved_rounds, medians, write_results
from benchlib.procs import (
    LOAD_CPU,
    PROXY_CPU,
    BenchError,
    Processes,
    free_ports,
    log,
    raise_nofile_limit,
    wait_http_ok,
    workspace,
)
from benchlib.stack import (
    HOST,
    ORIGIN_BODY,
    REQUEST_BODY,
    router_command,
    router_config,
    start_nginx,
)

CONNECTIONS = 64


def _pki(workdir: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert(HOST, "localhost")
    paths = {name: workdir / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for index, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=index > 0)
    server.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def _start_router(
    procs: Processes, name: str, config: dict[str, Any], port: int, admin: int, tls: bool
) -> Any:
    path = procs.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    stdout = procs.workdir / f"{name}.stdout"
    cmd = [*router_command(), "serve", "--config", str(path), "--port", str(port)]
    cmd += ["--admin-port", str(admin), "--state-dir", str(procs.workdir / f"{name}-state")]
    managed = procs.spawn(name, cmd, cpu=PROXY_CPU, stdout_path=stdout, grace=10.0)
    deadline = time.monotonic() + 90
    while "mce-router ready" not in stdout.read_text(errors="replace"):
        if managed.popen.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"router {name} did not start:\n{managed.tail()}")
        time.sleep(0.05)
    if not tls:
        wait_http_ok(HOST, port, "/ping", 10.0, managed)
    return managed


def _negotiated(port: int, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with context.wrap_socket(socket.create_connection((HOST, port)), server_hostname=HOST) as sock:
        return f"{sock.version()} {sock.cipher()[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args(argv)
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.seconds)
    nofile = raise_nofile_limit()
    with workspace() as (workdir, procs):
        pki = _pki(workdir)
        origin, nginx_tls, nginx_plain, router_tls, router_plain, *admins = free_ports(7)
        (workdir / "body.json").write_bytes(REQUEST_BODY)
        processes = {
            "origin": start_nginx(
                procs, "origin-nginx", "origin.conf.tmpl",
                {"LISTEN": f"        listen {HOST}:{origin} backlog=4096;",
                 "BODY": ORIGIN_BODY.decode()},
                cpu=LOAD_CPU, ping_port=origin, ping_path="/ping", nofile=nofile,
            ),
            "nginx-tls": start_nginx(
                procs, "nginx-tls", "proxy-tls.conf.tmpl",
                {"PORT": nginx_tls, "PING_PORT": nginx_plain, "ORIGIN_PORT": origin,
                 "CERT": pki["cert"], "KEY": pki["key"]},
                cpu=PROXY_CPU, ping_port=nginx_plain, ping_path="/ping", nofile=nofile,
            ),
        }  # fmt: skip
        config = router_config([origin], origin, endpoints=("direct",))
        tls_config = {
            **config,
            "listen": {
                **config["listen"],
                "tls_cert_file": str(pki["cert"]),
                "tls_key_file": str(pki["key"]),
            },
        }
        processes["router-tls"] = _start_router(
            procs, "router-tls", tls_config, router_tls, admins[0], tls=True
        )
        processes["router"] = _start_router(
            procs, "router", config, router_plain, admins[1], tls=False
        )
        ciphers = {
            "nginx": _negotiated(nginx_tls, pki["ca"]),
            "router": _negotiated(router_tls, pki["ca"]),
        }
        log(f"negotiated: {ciphers}")
        body = workdir / "body.json"

        def case(case_id: str, path: str, url: str, proxy: str) -> Case:
            return Case(
                case_id, "throughput", path, url, CONNECTIONS, body, len(REQUEST_BODY),
                targets=("origin",), proxy=proxy,
            )  # fmt: skip

        invocations = "/endpoints/direct/invocations"
        cases = [
            case("nginx-tls", "nginx TLS", f"https://{HOST}:{nginx_tls}/invocations", "nginx-tls"),
            case("router-tls", "router TLS", f"https://{HOST}:{router_tls}{invocations}",
                 "router-tls"),
            case("nginx", "nginx", f"http://{HOST}:{nginx_plain}/invocations", "nginx-tls"),
            case("router", "router", f"http://{HOST}:{router_plain}{invocations}", "router"),
        ]  # fmt: skip
        runs = interleaved_rounds(
            cases, rounds=rounds, seconds=seconds, workdir=workdir, processes=processes
        )
    result = _summarize(runs, ciphers, rounds, seconds)
    write_results("tls", result, _markdown(result))
    return 0


def _summarize(
    runs: list[dict[str, Any]], ciphers: dict[str, str], rounds: int, seconds: int
) -> dict[str, Any]:
    cases = medians(runs, ["nginx-tls", "router-tls", "nginx", "router"])

    def ratio(a: str, b: str, key: str) -> float:
        return cases[a][key] / cases[b][key] if cases[b][key] else float("nan")

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "negotiated": ciphers,
        "cases": cases,
        "ratios": {
            "router_tls_vs_nginx_tls_rps": ratio("router-tls", "nginx-tls", "rps"),
            "router_plain_vs_nginx_plain_rps": ratio("router", "nginx", "rps"),
            "router_tls_cost_cpu": ratio("router-tls", "router", "cpu_us_per_req"),
            "nginx_tls_cost_cpu": ratio("nginx-tls", "nginx", "cpu_us_per_req"),
        },
        "python": sys.version.split()[0],
    }


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# TLS benchmark ({result['date']})",
        "",
        f"{result['rounds']} interleaved rounds of {result['seconds']} s, wrk with "
        f"{result['connections']} keep-alive connections, Direct to one nginx origin; medians. "
        f"Negotiated: nginx {result['negotiated']['nginx']}, router "
        f"{result['negotiated']['router']}.",
        "",
    ]
    lines += case_table(result["cases"])
    r = result["ratios"]
    lines += [
        "",
        f"- router TLS / nginx TLS, req/s: **{r['router_tls_vs_nginx_tls_rps']:.2f}x** "
        f"(plain: {r['router_plain_vs_nginx_plain_rps']:.2f}x)",
        f"- CPU per request with TLS / without: router {r['router_tls_cost_cpu']:.2f}x, "
        f"nginx {r['nginx_tls_cost_cpu']:.2f}x",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
