"""Caps that keep one flood or one slow model from taking the router down for everyone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import deploy, direct_model, running_router, until_invoked
from hardening_support import connection, exchange, hardening_config, request

from mce_router.config import Limits
from mce_router.dataplane.proxy import (
    EndpointRoute,
    InstanceRoute,
    RoutingTable,
    RuntimeServer,
    Upstream,
    VariantRoute,
)

pytestmark = pytest.mark.hardening


async def test_client_connections_beyond_the_cap_get_503_and_are_closed(tmp_path: Path) -> None:
    config = hardening_config(tmp_path / "state", Limits(max_client_connections=3))
    async with running_router(config) as router:
        await deploy(router, direct_model("capped", ["a"]))
        port = router.runtime_port
        async with connection(port) as c1, connection(port) as c2, connection(port) as c3:
            del c1, c2, c3  # three idle sockets fill the cap
            await asyncio.sleep(0.1)  # connection_made has run for all three
            async with connection(port) as refused:
                response = await refused.response(timeout=5)
                assert response.status == 503
                assert response.error_code == "ServiceUnavailable"
                assert "max_client_connections" in response.message
                assert await refused.closed_by_router()
        # Once they are gone, new clients are served again.
        response, _ = await exchange(port, request("capped", body=b"ok"))
        assert (response.status, response.body) == (200, b"ok")


async def test_a_request_queued_behind_a_busy_container_gets_429_at_the_queue_wait(
    tmp_path: Path,
) -> None:
    limits = Limits(
        max_connections_per_container=1,
        max_queue_wait_seconds=0.3,
        invocation_timeout_seconds=30,
    )
    async with running_router(hardening_config(tmp_path / "state", limits)) as router:
        await deploy(router, direct_model("queued", ["a"]))
        port = router.runtime_port
        slow = asyncio.ensure_future(
            exchange(
                port,
                request("queued", "X-Amzn-SageMaker-Custom-Attributes: action=sleep:2"),
            )
        )
        await until_invoked(router, "queued", "a", 1)  # it holds the only connection
        started = time.monotonic()
        response, _ = await exchange(port, request("queued", body=b"waiting"))
        waited = time.monotonic() - started
        assert response.status == 429
        assert response.error_code == "ModelNotReadyException"
        assert "no free connection within 0.3 s" in response.message
        # Answered at the queue deadline (sweep resolution 0.1 s), not the 30 s timeout.
        assert waited < 5
        slow_response, _ = await slow
        assert slow_response.status == 200


async def test_a_client_that_disconnects_mid_body_leaves_no_body_behind(tmp_path: Path) -> None:
    """Closed client connections sit in reference cycles (parser callbacks, transport) until a
    full garbage collection; the body they were receiving must be released at once."""
    import gc

    from mce_router.dataplane.proxy import ClientConnection

    async with running_router(hardening_config(tmp_path / "state")) as router:
        await deploy(router, direct_model("dropped", ["a"]))
        for _ in range(3):
            async with connection(router.runtime_port) as conn:
                head = request("dropped", body=b"").replace(
                    b"Content-Length: 0", b"Content-Length: 6000000"
                )
                await conn.send(head + b"x" * 4_000_000)
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # connection_lost has run for all three
        held = [
            sum(len(chunk) for chunk in obj._body)
            for obj in gc.get_objects()
            if isinstance(obj, ClientConnection) and obj.closing
        ]
        assert sum(held) == 0, held


@contextlib.asynccontextmanager
async def proxy_to(port: int, limits: Limits) -> AsyncIterator[int]:
    """A bare runtime listener (no control plane) whose endpoint ``slow`` has one container
    ``a`` at 127.0.0.1:``port``; yields the listener's port."""
    loop = asyncio.get_running_loop()
    server = RuntimeServer(limits, loop)
    upstream = Upstream(
        endpoint_name="slow",
        variant_name="AllTraffic",
        instance_id="i-0",
        container_name="a",
        host="127.0.0.1",
        port=port,
        log_stream_arn="arn",
        log_path="",
        limits=limits,
        loop=loop,
    )
    upstream.mark_available()
    instance = InstanceRoute("i-0", (upstream,), {"a": upstream})
    server.set_table(
        RoutingTable([EndpointRoute("slow", (VariantRoute("AllTraffic", 1.0, (instance,), True),))])
    )
    listener = await loop.create_server(server.protocol_factory, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        server.abort_all()
        upstream.pool.close()
        server.close()
        await listener.wait_closed()


@contextlib.contextmanager
def full_accept_queue() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A listener whose accept queue (backlog 0: room for one) is full: the kernel drops further
    SYNs, so a connect to it takes at least the 1 s SYN retransmission."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener, filler
    finally:
        filler.close()
        listener.close()


async def test_a_connection_that_opens_after_the_queue_wait_still_serves_the_call() -> None:
    """The queue wait bounds waiting behind busy connections, not a connect in progress: that
    is bounded by the connect timeout (a stalled loop or a slow accept must not turn into a 429
    saying all connections are busy when none is)."""
    limits = Limits(
        max_queue_wait_seconds=0.3, connect_timeout_seconds=10, invocation_timeout_seconds=30
    )
    with full_accept_queue() as (listener, _):
        async with proxy_to(listener.getsockname()[1], limits) as port:
            call = asyncio.ensure_future(exchange(port, request("slow", body=b"x"), timeout=20))
            await asyncio.sleep(0.6)  # past the queue wait, the router's SYN dropped
            assert not call.done(), call.result()
            loop = asyncio.get_running_loop()
            first, _ = await loop.sock_accept(listener)  # the filler: room for the retry
            first.close()
            container, _ = await loop.sock_accept(listener)  # the router, after its retry
            with container:
                request_head = await loop.sock_recv(container, 65536)
                assert request_head.startswith(b"POST /invocations HTTP/1.1\r\n"), request_head
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                await loop.sock_sendall(container, answer)
                response, _ = await call
    assert (response.status, response.body) == (200, b"ok"), response


async def test_a_connect_that_never_completes_fails_as_a_connect_timeout_not_a_busy_pool() -> None:
    limits = Limits(
        max_queue_wait_seconds=0.3, connect_timeout_seconds=1.5, invocation_timeout_seconds=30
    )
    with full_accept_queue() as (listener, _):
        async with proxy_to(listener.getsockname()[1], limits) as port:
            started = time.monotonic()
            response, _ = await exchange(port, request("slow", body=b"x"), timeout=20)
            waited = time.monotonic() - started
    assert response.status == 424, response
    assert response.error_code == "ModelError", response
    assert "Container a: connecting failed: timed out" in response.message, response
    assert 1.4 < waited < 10, waited
