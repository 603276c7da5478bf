"""Limits and slow clients: oversized bodies, heads and responses get clear errors with memory
bounded; dripped heads and bodies, idle sockets and clients that do not read their responses are
closed at configurable deadlines; well-behaved clients are unaffected meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from conftest import container, deploy, multi_model
from hardening_support import (
    ATTRIBUTES,
    RawConnection,
    connection,
    exchange,
    hardening_config,
    invocations,
    percentile,
    request,
)

from mce_router import Router
from mce_router.config import Limits

pytestmark = pytest.mark.hardening

E = "limits"
MIB = 1024 * 1024


@asynccontextmanager
async def serving(tmp_path: Path, limits: Limits | None = None) -> AsyncIterator[Router]:
    async with Router(hardening_config(tmp_path / "state", limits)) as router:
        await deploy(router, multi_model(E, [container("a"), container("b")], "Direct"))
        yield router


async def small_buffer_connection(port: int) -> RawConnection:
    """A client socket with a 16 KiB receive buffer, so the router's writes back up quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(5):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
    except BaseException:
        sock.close()
        raise
    return RawConnection(reader, writer)


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


# --- bodies, heads, responses --------------------------------------------------------------


async def test_body_over_6_mib_is_413_before_any_container_while_the_client_still_sends(
    tmp_path: Path,
) -> None:
    """The 413 comes right after the head; the client reads it although it is still sending its
    7 MiB (the router half-closes and drains instead of resetting the answer away)."""
    async with serving(tmp_path) as router:
        body = b"z" * (7 * MIB)
        started = time.monotonic()
        response, closed = await exchange(router.runtime_port, request(E, body=body))
        assert (response.status, response.error_code) == (413, "ValidationError"), response
        assert "7340032 bytes or more" in response.message
        assert "6291456-byte limit" in response.message
        # A person can act on it: the config key that raises the limit is named.
        assert "limits.max_request_body_bytes" in response.message
        assert closed and time.monotonic() - started < 5
        assert await invocations(router, E, "a") == 0


async def test_oversized_chunked_body_is_cut_at_the_limit_with_memory_bounded(
    tmp_path: Path,
) -> None:
    """Without Content-Length the router counts while the body streams in: 64 MiB sent, at most
    the 1 MiB limit is ever held."""
    async with serving(tmp_path, Limits(max_request_body_bytes=MIB)) as router:
        before = rss()
        async with connection(router.runtime_port) as conn:
            await conn.send(
                request(E, "Transfer-Encoding: chunked", content_length=False, body=b"")
            )
            chunk = b"10000\r\n" + b"c" * 0x10000 + b"\r\n"
            for _ in range(1024):  # 64 MiB, far beyond the limit
                conn.writer.write(chunk)
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()
                if conn.writer.is_closing():
                    break
            response = await conn.response()
            assert (response.status, response.error_code) == (413, "ValidationError")
            assert "1048576-byte limit" in response.message
            assert await conn.closed_by_router()
        growth = rss() - before
        assert growth < 32 * MIB, f"RSS grew by {growth / MIB:.1f} MiB for a 1 MiB limit"
        assert await invocations(router, E, "a") == 0


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        pytest.param(
            [f"X-Extra-{i}: v" for i in range(101)], "limit of 100 headers", id="101-headers"
        ),
        pytest.param(["X-Big: " + "v" * 20_000], "16384 bytes", id="one-20k-header-one-read"),
        pytest.param(
            [f"X-Mid-{i}: " + "m" * 1000 for i in range(20)], "16384 bytes", id="20x1k-headers"
        ),
    ],
)
async def test_too_many_or_too_long_headers_are_431(
    tmp_path: Path, head: list[str], fragment: str
) -> None:
    """Including a head that arrives in a single read (it used to pass the byte limit)."""
    async with serving(tmp_path) as router:
        response, closed = await exchange(router.runtime_port, request(E, *head))
        assert (response.status, response.error_code) == (431, "ValidationError"), response
        assert fragment in response.message
        assert closed
        assert await invocations(router, E, "a") == 0


async def test_streamed_head_and_url_over_the_limit_are_431(tmp_path: Path) -> None:
    async with serving(tmp_path) as router:
        async with connection(router.runtime_port) as conn:
            await conn.send(b"POST /endpoints/limits/invocations HTTP/1.1\r\nX-Endless: ")
            for _ in range(40):  # 40 reads of 1 KiB of one never-ending header value
                await conn.send(b"e" * 1024)
                await asyncio.sleep(0.005)
            response = await conn.response()
            assert (response.status, response.error_code) == (431, "ValidationError")
            assert await conn.closed_by_router()
        long_url, closed = await exchange(
            router.runtime_port, request(E, path=f"/endpoints/{E}/invocations?" + "q" * 20_000)
        )
        assert (long_url.status, "URL is too long" in long_url.message) == (431, True)
        assert closed
        assert await invocations(router, E, "a") == 0


async def test_huge_container_response_is_a_model_error_with_memory_bounded(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as router:
        exact, _ = await exchange(
            router.runtime_port, request(E, f"{ATTRIBUTES}: action=big:{6 * MIB}")
        )
        assert (exact.status, len(exact.body)) == (200, 6 * MIB)
        before = rss()
        response, closed = await exchange(
            router.runtime_port, request(E, f"{ATTRIBUTES}: action=big:{64 * MIB}")
        )
        assert (response.status, response.error_code) == (424, "ModelError")
        assert response.json()["OriginalStatusCode"] == 0
        assert "larger than the 6291456-byte limit" in response.message
        assert not closed  # the client's connection is fine; the container's was dropped
        growth = rss() - before
        assert growth < 32 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
        again, _ = await exchange(router.runtime_port, request(E, body=b"next"))
        assert (again.status, again.body) == (200, b"next")


# --- slow clients ----------------------------------------------------------------------------

FAST_DEADLINES = Limits(
    header_read_timeout_seconds=0.5,
    body_read_timeout_seconds=0.5,
    client_keepalive_timeout_seconds=1.0,
)


async def drip(conn: RawConnection, data: bytes, interval: float) -> None:
    """Send ``data`` one byte at a time until done or the router closes."""
    for index in range(len(data)):
        if conn.writer.is_closing() or conn.reader.at_eof():
            return
        conn.writer.write(data[index : index + 1])
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()
        await asyncio.sleep(interval)


@pytest.mark.parametrize("part", ["head", "body"])
async def test_dripped_request_is_408_at_the_read_deadline(tmp_path: Path, part: str) -> None:
    """Each byte comes well within any per-byte timeout; the deadline is for the whole head
    (0.5 s here, 10 s by default) or body (0.5 s here, 60 s by default)."""
    async with serving(tmp_path, FAST_DEADLINES) as router:
        raw = request(E, body=b"b" * 200)
        head, _, body = raw.partition(b"\r\n\r\n")
        async with connection(router.runtime_port) as conn:
            started = time.monotonic()
            if part == "head":
                dripping = asyncio.create_task(drip(conn, raw, 0.02))
            else:
                await conn.send(head + b"\r\n\r\n")
                dripping = asyncio.create_task(drip(conn, body, 0.02))
            try:
                response = await conn.response(5.0)
            finally:
                dripping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dripping
            elapsed = time.monotonic() - started
            assert (response.status, response.error_code) == (408, "ValidationError"), response
            assert "not received completely in time" in response.message
            assert 0.4 < elapsed < 2.0, elapsed
            assert await conn.closed_by_router()
        assert await invocations(router, E, "a") == 0


async def test_silent_and_idle_connections_are_closed_at_their_deadlines(tmp_path: Path) -> None:
    async with serving(tmp_path, FAST_DEADLINES) as router:
        # A new connection that never sends a byte: closed at the header deadline (0.5 s), not
        # after the keep-alive window, and without an answer.
        async with connection(router.runtime_port) as silent:
            started = time.monotonic()
            assert await silent.closed_by_router(5.0)
            assert 0.4 < time.monotonic() - started < 1.0
        # After one request, an idle keep-alive connection lasts the keep-alive deadline (1 s).
        async with connection(router.runtime_port) as idle:
            await idle.send(request(E, body=b"once"))
            assert (await idle.response()).body == b"once"
            started = time.monotonic()
            assert await idle.closed_by_router(5.0)
            assert 0.9 < time.monotonic() - started < 1.6
        assert not router.runtime_server.connections


async def test_client_that_reads_its_response_too_slowly_is_cut_at_the_deadline(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, FAST_DEADLINES) as router:
        conn = await small_buffer_connection(router.runtime_port)
        try:
            await conn.send(request(E, "Connection: close", f"{ATTRIBUTES}: action=big:{6 * MIB}"))
            started = time.monotonic()
            received = 0
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(10):
                    while chunk := await conn.reader.read(4096):
                        received += len(chunk)
                        await asyncio.sleep(0.05)  # ~80 KiB/s: 6 MiB would take 75 s
            elapsed = time.monotonic() - started
        finally:
            await conn.close()
        assert received < 6 * MIB
        assert elapsed < 4.0, f"the slow reader held its socket for {elapsed:.1f} s"
        assert not router.runtime_server.connections  # the router's side is gone too


async def test_client_that_pipelines_and_never_reads_cannot_grow_memory(tmp_path: Path) -> None:
    """Regression: 100 pipelined requests for 1 MiB answers used to pile ~100 MB into the
    transport's write buffer. Now nothing more is served until the client reads, and the
    socket is aborted at the keep-alive deadline."""
    async with serving(tmp_path, FAST_DEADLINES) as router:
        conn = await small_buffer_connection(router.runtime_port)
        try:
            await conn.send(
                request(E, f"{ATTRIBUTES}: action=big:{MIB}", target="b", body=b"") * 100
            )

            # Look as soon as the first answer is buffered (the socket is aborted 1 s after the
            # client stopped reading, so a fixed pause could miss the window on a slow machine),
            # then once more after the router had time to serve more if it would.
            def write_buffers() -> list[int]:
                return [
                    c.transport.get_write_buffer_size()
                    for c in router.runtime_server.connections
                    if c.transport is not None
                ]

            async with asyncio.timeout(5):
                while not any(write_buffers()):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            buffered = write_buffers()
            assert buffered and max(buffered) <= 2 * MIB, buffered
            served = await invocations(router, E, "b")
            assert 1 <= served <= 10, served

            async def gone() -> bool:
                return not router.runtime_server.connections

            deadline = time.monotonic() + 5
            while not await gone():
                assert time.monotonic() < deadline, "the non-reading client was never cut"
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        assert await invocations(router, E, "b") == served


async def test_well_behaved_clients_are_unaffected_by_200_slowloris_sockets(
    tmp_path: Path,
) -> None:
    """Correctness, not a benchmark: while 200 sockets drip their heads, every request of a
    good client is answered, each within 2 s (they take milliseconds; the bound only has to
    catch a router that waits on the slow sockets, whose deadlines are 3 s, and leave room for
    a loaded machine running 200 drip tasks in this same event loop)."""
    limits = Limits(header_read_timeout_seconds=3.0, body_read_timeout_seconds=3.0)
    async with serving(tmp_path, limits) as router:
        port = router.runtime_port

        async def good_latencies(count: int) -> list[float]:
            latencies = []
            async with connection(port) as conn:
                for i in range(count):
                    started = time.perf_counter()
                    await conn.send(request(E, target="b", body=f"good {i}".encode()))
                    response = await conn.response(5.0)
                    latencies.append(time.perf_counter() - started)
                    assert (response.status, response.body) == (200, f"good {i}".encode())
            return latencies

        baseline = await good_latencies(30)
        slow = [await RawConnection.open(port) for _ in range(200)]
        partial = request(E, body=b"x" * 100)
        drips = [asyncio.create_task(drip(conn, partial, 0.1)) for conn in slow]
        try:
            await asyncio.sleep(0.3)
            open_now = len(router.runtime_server.connections)
            assert open_now >= 200, open_now
            during = await good_latencies(30)
        finally:
            for task in drips:
                task.cancel()
            await asyncio.gather(*drips, return_exceptions=True)
            for conn in slow:
                await conn.close()
        assert max(during) < 2.0, (
            f"good client p50 {percentile(during, 0.5) * 1000:.1f} ms, max "
            f"{max(during) * 1000:.1f} ms during the attack; baseline p50 "
            f"{percentile(baseline, 0.5) * 1000:.1f} ms"
        )
