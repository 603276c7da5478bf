#!/usr/bin/env python3
"""A SageMaker model container with a known capacity, for the load-test harness's tests
(stdlib only, raw asyncio streams, HTTP/1.1 keep-alive, Content-Length bodies).

``POST /invocations`` echoes the body; ``GET /ping`` answers 200 at once, whatever the
invocations do, so the router's health checks never restart it mid-test. Knobs (environment):

``PACED_MAX_RPS=K``
    Invocations are served one at a time, each taking 1/K s (asleep, not burning CPU): the
    container serves at most K requests per second; more queue up. Each one's end is set on
    an absolute timeline (the previous end plus 1/K, or now plus 1/K when idle), so timer
    overshoot on a loaded machine delays answers but does not lower the capacity below K.
``PACED_STALL_AFTER=S`` and ``PACED_STALL_SECONDS=D``
    S seconds after the first invocation, every invocation waits until the stall window
    [S, S+D] is over: a container that stops answering for D seconds mid-run.
``PACED_CPU_MS=M``
    Each invocation burns M ms of CPU (a costlier model).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

MAX_RPS = float(os.environ.get("PACED_MAX_RPS", "0"))
STALL_AFTER = float(os.environ.get("PACED_STALL_AFTER", "-1"))
STALL_SECONDS = float(os.environ.get("PACED_STALL_SECONDS", "0"))
CPU_MS = float(os.environ.get("PACED_CPU_MS", "0"))

_first: float | None = None
#: When the invocation served last ends (monotonic seconds): the next one starts there.
_busy_until = 0.0


async def _invoke(body: bytes) -> bytes:
    global _first, _busy_until
    now = time.monotonic()
    if _first is None:
        _first = now
    if STALL_AFTER >= 0:
        start = _first + STALL_AFTER
        end = start + STALL_SECONDS
        if start <= now < end:
            await asyncio.sleep(end - now)
    if CPU_MS > 0:
        deadline = time.process_time() + CPU_MS / 1000.0
        while time.process_time() < deadline:
            pass
    if MAX_RPS > 0:
        ends = _busy_until = max(time.monotonic(), _busy_until) + 1.0 / MAX_RPS
        await asyncio.sleep(max(ends - time.monotonic(), 0.0))
    return body


def _response(status: str, body: bytes, content_type: bytes = b"application/octet-stream") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Content-Type: "
        + content_type
        + b"\r\n\r\n"
        + body
    )


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            content_type = b"application/octet-stream"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "content-type":
                    content_type = value.strip().encode("latin-1")
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/ping":
                writer.write(_response("200 OK", b""))
            elif method == "POST" and path == "/invocations":
                writer.write(_response("200 OK", await _invoke(body), content_type))
            else:
                writer.write(_response("404 Not Found", b"not found"))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main() -> None:
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"paced container on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
