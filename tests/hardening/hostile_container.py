#!/usr/bin/env python3
"""A container that breaks HTTP in ways ``fault_container.py`` does not (stdlib only).

It is ``tests/containers/fault_container.py`` (same knobs, same ``GET /stats``, same actions)
plus the actions below, chosen through ``X-Amzn-SageMaker-Custom-Attributes: action=...``:

``double``
    Two complete 200 responses (``first``, ``second``) in one write for one request.
``trailing-garbage``
    A complete 200 response (``ok``) followed by ``garbage`` bytes in the same write.
``interim``
    ``100 Continue`` and ``103 Early Hints`` before the real 200 (echo).
``switch``
    ``101 Switching Protocols`` (Upgrade: websocket) although nobody asked for it.
``bad-chunk``
    A chunked 200 whose chunk size is not hexadecimal.
``cl-te``
    A 200 with both ``Content-Length`` and ``Transfer-Encoding: chunked``.
``two-lengths``
    A 200 with two different ``Content-Length`` headers.
``short``
    ``Content-Length: 1000``, 10 bytes, then close (the process stays alive).
``eof-body``
    A 200 without ``Content-Length`` or chunking, delimited by closing the connection.
``huge-head:N``
    A 200 whose head carries one header of N bytes.
``endless-head``
    A response head that never ends (one header value grows by 16 KiB every 10 ms).
``trailer-flood``
    A chunked 200 followed by a trailer section that never ends.
``drip:SECONDS``
    A complete echo response written one byte every SECONDS.

``HOSTILE_CLOSE_PROBABILITY=P`` (0..1): after each ``/invocations`` answer the connection is,
with probability P (seeded by ``HOSTILE_SEED``), closed 0-2 ms later *without* announcing it
(no ``Connection: close``), discarding any request already sent on it: the keep-alive race.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "containers"))

import fault_container as base

_close_probability = float(os.environ.get("HOSTILE_CLOSE_PROBABILITY") or 0)
_random = random.Random(int(os.environ.get("HOSTILE_SEED") or 0))


async def _write(writer: asyncio.StreamWriter, *parts: bytes) -> None:
    writer.write(b"".join(parts))
    await writer.drain()


class HostileServer(base.Server):
    async def invoke(
        self,
        request: base.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        attributes = base.parse_attributes(request.header(base.CUSTOM_ATTRIBUTES))
        action, _, arg = attributes.get("action", self.default_action).partition(":")
        body = request.body
        ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        if action == "double":
            await _write(
                writer,
                ok,
                b"Content-Length: 5\r\n\r\nfirst",
                ok,
                b"Content-Length: 6\r\n\r\nsecond",
            )
            return True
        if action == "trailing-garbage":
            await _write(writer, ok, b"Content-Length: 2\r\n\r\nok", b"garbage")
            return True
        if action == "interim":
            await _write(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
            await _write(writer, b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
            await _write(writer, ok, b"Content-Length: %d\r\n\r\n" % len(body), body)
            return True
        if action == "switch":
            await _write(
                writer,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\nnot http any more",
            )
            return True
        if action == "bad-chunk":
            await _write(writer, ok, b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
            return False
        if action == "cl-te":
            await _write(
                writer,
                ok,
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            return False
        if action == "two-lengths":
            await _write(writer, ok, b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
            return False
        if action == "short":
            await _write(writer, ok, b"Content-Length: 1000\r\n\r\n", b"x" * 10)
            return False
        if action == "eof-body":
            await _write(writer, ok, b"\r\n", body)
            return False
        if action == "huge-head":
            await _write(
                writer, ok, b"X-Huge: ", b"h" * int(arg), b"\r\nContent-Length: 2\r\n\r\nok"
            )
            return True
        if action == "endless-head":
            await _write(writer, ok, b"X-Endless: ")
            while True:
                await _write(writer, b"e" * 16384)
                await asyncio.sleep(0.01)
        if action == "trailer-flood":
            await _write(writer, ok, b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Flood: ")
            while True:
                await _write(writer, b"t" * 16384)
                await asyncio.sleep(0.01)
        if action == "drip":
            response = ok + b"Content-Length: %d\r\n\r\n" % len(body) + body
            for index in range(len(response)):
                await _write(writer, response[index : index + 1])
                await asyncio.sleep(float(arg))
            return True
        keep_alive = await super().invoke(request, reader, writer)
        if keep_alive and _close_probability and _random.random() < _close_probability:
            # The keep-alive race: the answer said nothing about closing, the router may be
            # sending its next request on this connection right now.
            await asyncio.sleep(_random.random() * 0.002)
            return False
        return keep_alive


def main() -> int:
    # fault_container.main builds its Server; swap the class in before it does.
    base.Server = HostileServer  # type: ignore[misc]
    return base.main()


if __name__ == "__main__":
    sys.exit(main())
