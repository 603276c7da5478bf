#!/usr/bin/env python3
"""Response streaming (InvokeEndpointWithResponseStream) through mce_router, against the same
streaming container hit directly and behind nginx relaying it unbuffered (proxy_buffering off).

    python benchmarks/streaming.py            # ~1 min; prints and writes results/streaming.json
    python benchmarks/streaming.py --quick    # smoke check, fewer rounds

Measured in one run, so the ratios compare like with like on a shared machine:

- time to first byte: request sent -> the first part's bytes received, one stream at a time on
  a kept-alive connection (the container sends its first part at once); medians, interleaved;
- throughput: 1 MiB streamed in 1 KiB parts (1,024 parts), MB/s of payload, median;
- memory: RSS growth of the router's process for 1,000 concurrent open streams (each got its
  first part; the container then stays silent), per stream.

The container is tests/containers/stream_container.py (asyncio, stdlib only); as the origin it
bounds the throughput of all three paths alike.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httptools
import psutil
from benchlib.procs import (
    LOAD_CPU,
    BenchError,
    Processes,
    free_ports,
    log,
    raise_nofile_limit,
    wait_http_ok,
    workspace,
)
from benchlib.stack import HOST, start_nginx, start_router

HERE = Path(__file__).resolve().parent
ORIGIN = HERE.parent / "tests" / "containers" / "stream_container.py"
IMAGE = "bench.local/stream:latest"
STREAMS = 1000


class _Response:
    """Client side: httptools parses the chunked answer; the test is for the first payload."""

    def __init__(self, marker: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.marker = marker
        self.seen = b""
        self.first_at = 0.0
        self.body_bytes = 0
        self.done = False
        self.status = 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if not self.first_at:
            self.seen = (self.seen + body)[-4096:]
            if self.marker in self.seen:
                self.first_at = time.perf_counter()

    def on_message_complete(self) -> None:
        self.done = True


class Target:
    def __init__(self, name: str, port: int, path: str, headers: str) -> None:
        self.name = name
        self.port = port
        self.path = path
        self.headers = headers
        self.sock: socket.socket | None = None

    def request(self, attributes: str) -> bytes:
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n{self.headers}"
            f"X-Amzn-SageMaker-Custom-Attributes: {attributes}\r\n\r\n"
        ).encode()

    def call(self, attributes: str, marker: bytes) -> tuple[float, float, int]:
        """(seconds to the first part, seconds to the end, body bytes) of one stream."""
        if self.sock is None:
            self.sock = socket.create_connection((HOST, self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        response = _Response(marker)
        started = time.perf_counter()
        self.sock.sendall(self.request(attributes))
        while not response.done:
            data = self.sock.recv(1 << 18)
            if not data:
                raise BenchError(f"{self.name} closed the connection")
            response.parser.feed_data(data)
        ended = time.perf_counter()
        if response.status != 200 or not response.first_at:
            raise BenchError(f"{self.name} answered {response.status} without the first part")
        return response.first_at - started, ended - started, response.body_bytes

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def time_to_first_byte(targets: list[Target], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for target in targets:  # warm-up: connections, pools, caches
        for _ in range(20):
            target.call("action=stream;parts=1", b"part 0")
    for _ in range(rounds):
        for target in targets:  # interleaved: drift on the shared machine hits all alike
            first, _, _ = target.call("action=stream;parts=1", b"part 0")
            samples[target.name].append(first)
    return {name: _median_ms(values) for name, values in samples.items()}


def throughput(targets: list[Target], rounds: int) -> dict[str, float]:
    payload = 1024 * 1024
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            _, total, received = target.call("action=big;parts=1024;size=1024", b"xxxx")
            if received < payload:
                raise BenchError(f"{target.name} sent {received} bytes, not 1 MiB")
            samples[target.name].append(payload / total / 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def open_streams_memory(target: Target, pid: int, count: int) -> dict[str, float]:
    """RSS growth of ``pid`` with ``count`` streams open at once (each past its first part)."""
    process = psutil.Process(pid)
    before = process.memory_info().rss
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection((HOST, target.port))
            sock.sendall(target.request("action=silent"))
            socks.append(sock)
        deadline = time.monotonic() + 60
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            seen = b""
            while b"part 0" not in seen:
                data = sock.recv(65536)
                if not data:
                    raise BenchError(f"{target.name} closed an open stream")
                seen += data
        time.sleep(0.5)
        during = process.memory_info().rss
    finally:
        for sock in socks:
            sock.close()
    return {
        "rss_before_mib": before / 2**20,
        "rss_open_mib": during / 2**20,
        "per_stream_kib": (during - before) / count / 1024,
    }


def router_config(origin_port: int) -> dict[str, Any]:
    return {
        "listen": {"host": HOST},
        "images": {IMAGE: {"url": f"http://{HOST}:{origin_port}"}},
        "limits": {
            "max_connections_per_container": 2 * STREAMS,
            "max_idle_connections_per_container": 2 * STREAMS,
        },
        "models": [
            {
                "ModelName": "stream",
                "ExecutionRoleArn": "arn:aws:iam::000000000000:role/benchmark",
                "InferenceExecutionConfig": {"Mode": "Direct"},
                "Containers": [{"ContainerHostname": "origin", "Image": IMAGE}],
            }
        ],
        "endpoint_configs": [
            {
                "EndpointConfigName": "stream",
                "ProductionVariants": [
                    {"VariantName": "AllTraffic", "ModelName": "stream", "InitialInstanceCount": 1}
                ],
            }
        ],
        "endpoints": [{"EndpointName": "stream", "EndpointConfigName": "stream"}],
    }


def run(procs: Processes, rounds: int) -> dict[str, Any]:
    origin_port, nginx_port, router_port, admin_port = free_ports(4)
    origin = procs.spawn(
        "stream-origin",
        [sys.executable, str(ORIGIN)],
        cpu=LOAD_CPU,
        env={**os.environ, "SAGEMAKER_BIND_TO_PORT": str(origin_port)},
    )
    wait_http_ok(HOST, origin_port, "/ping", 15.0, origin)
    start_nginx(
        procs,
        "nginx-stream",
        "stream-proxy.conf.tmpl",
        {"PORT": nginx_port, "ORIGIN_PORT": origin_port},
        cpu=0,
        ping_port=nginx_port,
        ping_path="/ping",
        nofile=4 * STREAMS,
    )
    router = start_router(
        procs, "router", router_config(origin_port), port=router_port, admin_port=admin_port
    )
    assert router.managed is not None
    targets = [
        Target("direct", origin_port, "/invocations", ""),
        Target("nginx", nginx_port, "/invocations", ""),
        Target(
            "router",
            router_port,
            "/endpoints/stream/invocations-response-stream",
            "X-Amzn-SageMaker-Target-Container-Hostname: origin\r\n",
        ),
    ]
    try:
        log("time to first byte ...")
        ttfb = time_to_first_byte(targets, rounds * 100)
        log("throughput, 1 MiB in 1 KiB parts ...")
        rates = throughput(targets, rounds * 3)
    finally:
        for target in targets:
            target.close()
    log(f"memory, {STREAMS} concurrent open streams ...")
    memory = open_streams_memory(targets[2], router.managed.popen.pid, STREAMS)
    direct = ttfb["direct"]
    return {
        "time_to_first_byte_ms": ttfb,
        "added_ttfb_ms": {"router": ttfb["router"] - direct, "nginx": ttfb["nginx"] - direct},
        "ttfb_ratio_router_to_nginx": ttfb["router"] / ttfb["nginx"],
        "throughput_mb_s": rates,
        "throughput_ratio_router_to_nginx": rates["router"] / rates["nginx"],
        "throughput_ratio_router_to_direct": rates["router"] / rates["direct"],
        "open_streams": STREAMS,
        "router_memory": memory,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke check)")
    args = parser.parse_args()
    raise_nofile_limit()
    with workspace() as (_, procs):
        results = run(procs, 1 if args.quick else 5)
    text = json.dumps(results, indent=2)
    print(text)
    out = HERE / "results" / ("streaming-quick.json" if args.quick else "streaming.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
