"""The in-process fuzz target of the request path, shared by the hypothesis tests and the
atheris harness: raw bytes go into a real :class:`ClientConnection` (llhttp, header checks,
routing, pipelining, rejections) on a fake transport that records what the router writes.

The routing table holds one Direct endpoint whose only container is unavailable, so a routed
invocation ends in a 503 without any socket: everything up to the container call is exercised.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mce_router.config import Limits
from mce_router.dataplane.proxy import (
    ClientConnection,
    EndpointRoute,
    InstanceRoute,
    RoutingTable,
    RuntimeServer,
    Upstream,
    VariantRoute,
)

# The end-to-end target reuses the hardening suite's raw client (tests/hardening is not on
# sys.path when tests/fuzz runs alone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hardening"))
from hardening_support import (
    ALLOWED_UPSTREAM_HEADERS,
    RawConnection,
    exchange,
    hardening_config,
    invocations,
    request,
)

__all__ = [
    "ALLOWED_UPSTREAM_HEADERS",
    "RawConnection",
    "exchange",
    "hardening_config",
    "invocations",
    "request",
]

ENDPOINT = "fuzz"
#: Every status the runtime API may answer a client with, for any input.
ALLOWED_STATUSES = frozenset({100, 200, 400, 404, 408, 413, 424, 429, 431, 503})
#: Statuses after which the connection is always closed (a 400 closes only when the request
#: itself is malformed; a 400 for a semantic error keeps the connection).
CLOSING_STATUSES = frozenset({408, 413, 431})


class FakeTransport:
    """Enough of asyncio.Transport for ClientConnection, recording writes and state."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.eof_written = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written, "write after close"
        self.written += data

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@dataclass
class Parsed:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)


def parse_responses(data: bytes) -> list[Parsed]:
    """Split what the router wrote into responses; fail on anything that is not well framed."""
    responses = []
    rest = bytes(data)
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"unterminated response head {head[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(": ")
            assert colon and name and "\r" not in value and "\n" not in value, line
            assert name.lower() not in headers, f"duplicate response header {name}"
            headers[name.lower()] = value
        code = int(status)
        body = b""
        if code >= 200:
            length = int(headers["content-length"])
            body, rest = rest[:length], rest[length:]
            assert len(body) == length, "truncated response"
        responses.append(Parsed(code, headers, body))
    return responses


class Target:
    """One RuntimeServer (on a loop that is never run) and fresh connections on demand."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.limits = limits or Limits(max_request_body_bytes=4096, max_header_bytes=2048)
        self.server = RuntimeServer(self.limits, self.loop)
        upstream = Upstream(
            endpoint_name=ENDPOINT,
            variant_name="AllTraffic",
            instance_id="i-0",
            container_name="a",
            host="127.0.0.1",
            port=9,
            log_stream_arn="arn",
            log_path="",
            limits=self.limits,
            loop=self.loop,
        )
        instance = InstanceRoute("i-0", (upstream,), {"a": upstream})
        variant = VariantRoute("AllTraffic", 1.0, (instance,), True)
        self.server.table = RoutingTable([EndpointRoute(ENDPOINT, (variant,))])

    def close(self) -> None:
        self.server.close()
        self.loop.close()

    def run(self, chunks: list[bytes]) -> tuple[list[Parsed], FakeTransport]:
        """Feed ``chunks`` (one ``data_received`` each) to a new connection, then check the
        invariants every input must satisfy; returns the responses and the transport."""
        transport = FakeTransport()
        conn = ClientConnection(self.server)
        conn.connection_made(transport)  # type: ignore[arg-type]
        try:
            for chunk in chunks:
                if transport.closed or not transport.reading:
                    break  # the router stopped reading; a real socket would hold the bytes
                conn.data_received(chunk)
        finally:
            conn.connection_lost(None)
        responses = parse_responses(transport.written)
        for index, response in enumerate(responses):
            assert response.status in ALLOWED_STATUSES, response
            if response.status >= 400:
                assert response.headers["content-type"] == "application/json"
                assert response.headers["x-amzn-errortype"].split(":", 1)[0] in (
                    "ValidationError",
                    "UnknownOperationException",
                    "ServiceUnavailable",
                ), response
            if response.status in CLOSING_STATUSES:
                assert response.headers.get("connection") == "close", response
            if response.headers.get("connection") == "close":
                assert index == len(responses) - 1, "a response after Connection: close"
                assert transport.eof_written or transport.closed
        assert self.server.in_flight == 0
        assert not self.server.orphans
        return responses, transport
