#!/usr/bin/env python3
"""A SageMaker model container that streams its answers, for the response-streaming tests.

Stdlib only (raw asyncio streams, HTTP/1.1 keep-alive, Content-Length request bodies), run as
``python tests/containers/stream_container.py`` on ``127.0.0.1:$SAGEMAKER_BIND_TO_PORT``. It
must not import project modules.

``POST /invocations`` reads ``X-Amzn-SageMaker-Custom-Attributes`` as ``key=value`` pairs split
on ``;`` (default ``action=stream``; ``STREAM_DEFAULT_ACTION`` overrides the default):

``stream``
    ``parts`` (default 3) chunks of ``size`` bytes (default: ``part <i>\\n``) with ``gap``
    seconds (default 0) between them, ``Transfer-Encoding: chunked``, Content-Type
    ``application/jsonlines``; the first part is written and flushed before the gap.
``sse``
    The same as ``text/event-stream`` events ``data: token <i>\\n\\n``.
``plain``
    A ``Content-Length`` body of ``parts`` pieces written ``gap`` seconds apart.
``echo``
    The request body back in one chunked part, its Content-Type and custom attributes copied;
    the request's Accept (or ``none``) in the header ``X-Seen-Accept``, also as the last part
    ``accept=<value>`` when ``report=1``.
``die``
    Two parts, then ``os._exit(1)`` (the container dies mid-stream).
``silent``
    One part, then nothing (the connection stays open until the router closes it).
``status:N``
    Answer status N with ``message`` (default ``error N``) as text/plain.
``big``
    ``parts`` chunks of ``size`` bytes as fast as the socket takes them (backpressure tests).

``GET /ping`` answers 200; ``GET /stats`` returns JSON ``{"connections", "active",
"invocations", "finished", "aborted", "pings"}`` (accepted sockets, open sockets, requests,
streams sent to their end, streams whose connection broke while writing, pings answered).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

HOST = "127.0.0.1"
STATS = {
    "connections": 0, "active": 0, "invocations": 0, "finished": 0, "aborted": 0, "pings": 0,
}  # fmt: skip


def _attributes(value: str) -> dict[str, str]:
    pairs = {}
    for item in value.split(";"):
        key, _, val = item.strip().partition("=")
        if key:
            pairs[key] = val
    return pairs


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _stream(
    writer: asyncio.StreamWriter,
    content_type: str,
    pieces: list[bytes],
    gap: float,
    extra: str = "",
) -> None:
    writer.write(
        (
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{extra}"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    for index, piece in enumerate(pieces):
        if index and gap:
            await asyncio.sleep(gap)
        writer.write(_chunk(piece))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _invocation(writer: asyncio.StreamWriter, headers: dict[str, str], body: bytes) -> None:
    raw_attributes = headers.get("x-amzn-sagemaker-custom-attributes", "")
    attrs = _attributes(raw_attributes)
    action = attrs.get("action", os.environ.get("STREAM_DEFAULT_ACTION", "stream"))
    parts = int(attrs.get("parts", "3"))
    gap = float(attrs.get("gap", "0"))
    size = int(attrs.get("size", "0"))

    def piece(index: int) -> bytes:
        return b"x" * size if size else b"part %d\n" % index

    if action == "stream":
        await _stream(writer, "application/jsonlines", [piece(i) for i in range(parts)], gap)
    elif action == "sse":
        events = [b"data: token %d\n\n" % i for i in range(parts)]
        await _stream(writer, "text/event-stream", events, gap)
    elif action == "plain":
        pieces = [piece(i) for i in range(parts)]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % sum(len(p) for p in pieces)
        )
        for index, data in enumerate(pieces):
            if index and gap:
                await asyncio.sleep(gap)
            writer.write(data)
            await writer.drain()
    elif action == "echo":
        accept = headers.get("accept", "none")
        extra = f"X-Seen-Accept: {accept}\r\n"
        if raw_attributes:
            extra += f"X-Amzn-SageMaker-Custom-Attributes: {raw_attributes}\r\n"
        pieces = [body]
        if attrs.get("report") == "1":
            pieces.append(f"accept={accept}".encode())
        ctype = headers.get("content-type", "application/octet-stream")
        await _stream(writer, ctype, pieces, 0, extra)
    elif action == "die":
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(_chunk(b"part 0\n") + _chunk(b"part 1\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        os._exit(1)
    elif action == "silent":
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(_chunk(b"part 0\n"))
        await writer.drain()
        await asyncio.Event().wait()  # until the router closes the connection
    elif action.startswith("status:"):
        status = int(action.split(":", 1)[1])
        message = attrs.get("message", f"error {status}").encode()
        writer.write(
            b"HTTP/1.1 %d Error\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(message), message)
        )
    elif action == "big":
        await _stream(writer, "application/octet-stream", [piece(i) for i in range(parts)], 0)
    else:
        message = f"unknown action {action}".encode()
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(message), message)
        )
    STATS["finished"] += 1


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    STATS["connections"] += 1
    STATS["active"] += 1
    try:
        while True:
            request = await _read_request(reader)
            if request is None:
                return
            method, path, headers, body = request
            if path == "/ping":
                STATS["pings"] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            elif path == "/stats":
                data = json.dumps(STATS).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data)
                )
                await writer.drain()
                return
            elif method == "POST" and path == "/invocations":
                STATS["invocations"] += 1
                await _invocation(writer, headers, body)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        STATS["aborted"] += 1
    finally:
        STATS["active"] -= 1
        writer.close()


async def main() -> None:
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    server = await asyncio.start_server(_serve, HOST, port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"stream container listening on {HOST}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
