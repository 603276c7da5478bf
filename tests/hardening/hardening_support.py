"""Helpers of the hardening suite: a raw HTTP/1.1 client that sees exactly what the router sends
(status, headers, body framed by Content-Length, whether the connection was closed), request
builders, and router configurations with the hostile container.

Every read is bounded by a timeout: a hardening test must fail, never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import container_port, images_for_tests, make_config

from mce_router import Router, RouterConfig
from mce_router.config import Limits, ProcessImage

HOSTILE_CONTAINER = Path(__file__).parent / "hostile_container.py"
HOSTILE_IMAGE = "test/hostile:latest"
TARGET = "X-Amzn-SageMaker-Target-Container-Hostname"
ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"

#: Header names a container may ever receive from the router (lower-case): the allowlist of
#: README "Headers to containers" plus the framing headers the router writes itself.
ALLOWED_UPSTREAM_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "accept",
        "x-amzn-sagemaker-custom-attributes",
        "x-amzn-sagemaker-inference-id",
        "x-amzn-sagemaker-enable-explanations",
        "x-amzn-sagemaker-target-model",
        "x-amzn-sagemaker-session-id",
        # W3C trace context: the client's when valid, else one the router starts.
        "traceparent",
        "tracestate",
    }
)


def hardening_config(state_dir: Path, limits: Limits | None = None, **changes: Any) -> RouterConfig:
    """The test configuration (fast health settings) plus the hostile container image."""
    images = dict(changes.pop("images", None) or images_for_tests())
    images[HOSTILE_IMAGE] = ProcessImage(command=(sys.executable, str(HOSTILE_CONTAINER)))
    return make_config(state_dir, limits=limits, images=images, **changes)


def request(
    endpoint: str,
    *headers: str,
    body: bytes = b"x",
    target: str | None = "a",
    method: str = "POST",
    path: str | None = None,
    version: str = "HTTP/1.1",
    host: bool = True,
    content_length: bool = True,
) -> bytes:
    """A raw request to ``endpoint``; ``headers`` are complete header lines (no CRLF)."""
    lines = [f"{method} {path or f'/endpoints/{endpoint}/invocations'} {version}"]
    if host:
        lines.append("Host: router")
    if target is not None:
        lines.append(f"{TARGET}: {target}")
    lines.extend(headers)
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def error_code(self) -> str | None:
        """The SageMaker error code boto3 would parse (x-amzn-ErrorType up to the ':')."""
        value = self.header("x-amzn-ErrorType")
        return None if value is None else value.split(":", 1)[0]

    @property
    def message(self) -> str:
        return str(json.loads(self.body).get("message", "")) if self.body else ""

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One client socket to the router, spoken to in raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, timeout: float = 5.0) -> RawConnection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def response(self, timeout: float = 10.0) -> RawResponse:
        """Read exactly one response (interim 1xx ones included), framed by Content-Length."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            version, status, *reason = lines[0].split(" ", 2)
            assert version == "HTTP/1.1", lines[0]
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                assert sep and name == name.strip(), f"bad header line {line!r}"
                headers.append((name, value.strip()))
            names = [name.lower() for name, _ in headers]
            for framing in ("content-length", "transfer-encoding", "connection"):
                assert names.count(framing) <= 1, f"{framing} twice in {headers}"
            response = RawResponse(int(status), reason[0] if reason else "", headers, b"")
            if response.status >= 200:
                length = response.header("Content-Length")
                assert length is not None, f"no Content-Length in {headers}"
                response.body = await self.reader.readexactly(int(length))
            return response

    async def closed_by_router(self, timeout: float = 5.0) -> bool:
        """True once the router closed (EOF or reset) within ``timeout``; False if the socket
        is still open then. Fails if the router sends anything more."""
        try:
            async with asyncio.timeout(timeout):
                extra = await self.reader.read(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        assert extra == b"", f"unexpected bytes after the response: {extra[:200]!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[RawConnection]:
    conn = await RawConnection.open(port)
    try:
        yield conn
    finally:
        await conn.close()


async def exchange(
    port: int, data: bytes, timeout: float = 10.0, open_wait: float = 0.05
) -> tuple[RawResponse, bool]:
    """Send ``data`` on a new connection, read one final response (skipping a 100 Continue),
    and report whether the router then closed the connection: waited for (up to ``timeout``)
    when the response says ``Connection: close``, else checked for ``open_wait`` seconds (tests
    that need proof of a usable connection send a second request on it instead)."""
    async with connection(port) as conn:
        await conn.send(data)
        response = await conn.response(timeout)
        while response.status < 200:
            response = await conn.response(timeout)
        return response, await conn.closed_by_router(
            open_wait if _keeps_open(response) else timeout
        )


def _keeps_open(response: RawResponse) -> bool:
    return (response.header("Connection") or "").lower() != "close"


async def invocations(router: Router, endpoint: str, host: str) -> int:
    """The container's own count of ``POST /invocations`` it received (via GET /stats)."""
    return (await stats(router, endpoint, host))["invocations"]


async def stats(router: Router, endpoint: str, host: str) -> dict[str, int]:
    """The fault container's ``GET /stats``; ``active_connections`` excludes this request's."""
    port = container_port(router, endpoint, host)
    async with connection(port) as conn:
        await conn.send(f"GET /stats HTTP/1.1\r\nHost: c:{port}\r\n\r\n".encode())
        response = await conn.response(5.0)
    assert response.status == 200, response
    result: dict[str, int] = response.json()
    result["active_connections"] -= 1
    return result


def header_report(response: RawResponse) -> list[tuple[str, str]]:
    """The headers a fault container reported with ``action=headers``."""
    assert response.status == 200, (response.status, response.body[:300])
    received = [(name, value) for name, value in response.json()["headers"]]
    # Every call carries a traceparent (the router starts one when the client sent none or a
    # malformed one; tests/integration/test_trace_context.py): checked here, then left out.
    traceparents = [value for name, value in received if name == "traceparent"]
    assert len(traceparents) == 1, received
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", traceparents[0]), traceparents
    return [(name, value) for name, value in received if name != "traceparent"]


def percentile(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started
