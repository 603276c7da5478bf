"""The floor of the router's design: a featureless asyncio reverse proxy, for comparison only.

This is the "~150-line asyncio Protocol (callbacks, no task per request) + httptools (llhttp) +
keep-alive pool, uvloop, no features" row of the performance issue's table, written to run in
the same benchmark as nginx and the router. It has none of the router's work per request: no
routing table, header allowlist, Direct/Serial rules, metrics, deadlines, limits, request ids or
error shapes, and it trusts every byte it reads. Whatever the router costs above this proxy is
the price of its features; whatever this proxy costs above nginx is the price of Python, uvloop
and llhttp callbacks on this machine.

    python benchmarks/reference/lean_proxy.py LISTEN_PORT ORIGIN_PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import cast

import httptools
import uvloop

HOST = "127.0.0.1"


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the origin; answers go back to ``client``."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's don't subclass it

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.headers.append(b"Content-Type: " + value + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        client, body, headers = self.client, b"".join(self.body), self.headers
        status = self.parser.get_status_code()
        self.client, self.body, self.headers = None, [], []
        self.pool.release(self)
        if client is not None:
            client.respond(status, headers, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.idle = deque(c for c in self.pool.idle if c is not self)
        if self.client is not None:
            self.client.respond(502, [], b"")


class Pool:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: deque[Upstream] = deque()

    def release(self, conn: Upstream) -> None:
        self.idle.append(conn)

    def send(self, client: Client, request: bytes) -> None:
        if self.idle:
            self._send(self.idle.pop(), client, request)
        else:
            asyncio.get_running_loop().create_task(self._open(client, request))

    async def _open(self, client: Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Upstream(self), HOST, self.port)
        self._send(conn, client, request)

    @staticmethod
    def _send(conn: Upstream, client: Client, request: bytes) -> None:
        conn.client = client
        assert conn.transport is not None
        conn.transport.write(request)


class Client(asyncio.Protocol):
    """One client connection; one request at a time in order (wrk does not pipeline)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.content_type = b"application/octet-stream"
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's don't subclass it

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        self.body = []
        head = b"POST /invocations HTTP/1.1\r\nHost: origin\r\nContent-Type: %s\r\n" % (
            self.content_type,
        )
        self.pool.send(self, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def respond(self, status: int, headers: list[bytes], body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d OK\r\n%sContent-Length: %d\r\n\r\n%s"
            % (status, b"".join(headers), len(body), body)
        )


async def main(listen_port: int, origin_port: int) -> None:
    pool = Pool(origin_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool), HOST, listen_port, backlog=4096)
    print(f"lean proxy ready on {HOST}:{listen_port} -> {origin_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
