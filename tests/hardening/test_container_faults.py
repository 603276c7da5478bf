"""Failing containers: refused connections, hangs, invalid or surplus HTTP, keep-alive
connections closed at random, SIGKILL under load, saturation. Every request gets an answer
(success or a SageMaker-shaped error naming the container), never a truncated 200; a connection
that saw an anomaly is never used again; the container comes back; nothing leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    FAULT_CONTAINER,
    container,
    deploy,
    free_port,
    http_get,
    images_for_tests,
    multi_model,
    slot_of,
    wait_until,
)
from hardening_support import (
    ATTRIBUTES,
    HOSTILE_IMAGE,
    RawResponse,
    connection,
    exchange,
    hardening_config,
    invocations,
    request,
    stats,
)

from mce_router import Router
from mce_router.config import Limits, parse_external_url
from mce_router.dataplane.proxy import UpstreamConnection

pytestmark = pytest.mark.hardening

E = "faults"


@asynccontextmanager
async def serving(
    tmp_path: Path, *containers: dict[str, Any], limits: Limits | None = None, **changes: Any
) -> AsyncIterator[Router]:
    async with Router(hardening_config(tmp_path / "state", limits, **changes)) as router:
        await deploy(router, multi_model(E, list(containers), "Direct"))
        yield router


def pool_connections(router: Router, host: str) -> list[UpstreamConnection]:
    """The idle pooled connections of one container (white box: the pool's LIFO stack)."""
    upstream = slot_of(router, E, host).upstream
    assert upstream is not None
    return list(upstream.pool._idle)


def assert_model_error(response: RawResponse, host: str, detail: str = "") -> None:
    assert (response.status, response.error_code) == (424, "ModelError"), response
    body = response.json()
    assert body["OriginalStatusCode"] == 0, body
    assert f"from {host} with message" in body["message"], body
    assert detail in body["OriginalMessage"], (detail, body)


# --- refused, hung ---------------------------------------------------------------------------


async def test_refused_connections_fail_fast_and_the_container_is_used_again(
    tmp_path: Path,
) -> None:
    """An external container (the router cannot restart it) goes away: each call fails at once
    (connect refused), later ones are 503 once the health check notices, and it serves again
    as soon as it is back."""
    port = free_port()

    async def start_external() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(FAULT_CONTAINER),
            env=dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(port)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def listening() -> bool:
            try:
                return (await http_get(port, "/ping"))[0] == 200
            except OSError:
                return False

        await wait_until(listening, 10.0, "the external container to listen")
        return process

    process = await start_external()
    try:
        images = images_for_tests(
            **{"external/fault:1": parse_external_url(f"http://127.0.0.1:{port}", "test")}
        )
        async with serving(tmp_path, container("a", "external/fault:1"), images=images) as router:
            warm, _ = await exchange(router.runtime_port, request(E, body=b"warm"))
            assert warm.status == 200
            process.kill()
            await process.wait()
            codes = Counter()
            for _ in range(15):
                started = time.monotonic()
                response, _ = await exchange(router.runtime_port, request(E, body=b"gone"))
                assert time.monotonic() - started < 1.0
                codes[response.error_code] += 1
                if response.status == 424:
                    assert_model_error(response, "a")
                else:
                    assert (response.status, response.error_code) == (503, "ServiceUnavailable")
                    assert "Container a of endpoint faults is not available" in response.message
                await asyncio.sleep(0.1)
            assert codes["ModelError"] >= 1, codes
            refused, _ = await exchange(router.runtime_port, request(E, body=b"x"))
            if refused.status == 424:
                assert "connecting failed" in refused.json()["OriginalMessage"]

            process = await start_external()

            async def back() -> bool:
                response, _ = await exchange(router.runtime_port, request(E, body=b"back"))
                return response.status == 200 and response.body == b"back"

            await wait_until(back, 10.0, "the external container to be used again", 0.1)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_hanging_container_times_out_and_leaves_nothing_behind(tmp_path: Path) -> None:
    limits = Limits(invocation_timeout_seconds=1.0)
    async with serving(tmp_path, container("a"), container("b"), limits=limits) as router:
        server = router.runtime_server
        tasks_before = len(asyncio.all_tasks())
        port = router.runtime_port
        started = time.monotonic()

        async def hang() -> RawResponse:
            return (await exchange(port, request(E, f"{ATTRIBUTES}: action=hang")))[0]

        hung = [asyncio.create_task(hang()) for _ in range(5)]
        # A client that gives up while its call hangs: the call still ends at the deadline.
        async with connection(port) as gives_up:
            await gives_up.send(request(E, f"{ATTRIBUTES}: action=hang"))

            async def reached() -> bool:
                return (await stats(router, E, "a"))["active_connections"] == 6

            await wait_until(reached, 5.0, "six hanging calls to reach the container")
        for answer in await asyncio.gather(*hung):
            assert_model_error(
                answer, "a", "timed out while waiting for a response from container a"
            )
        assert 0.9 < time.monotonic() - started < 3.0

        async def released() -> bool:
            return (await stats(router, E, "a"))["active_connections"] == 0

        await wait_until(released, 3.0, "the router to drop every hung connection")
        assert not server.orphans
        assert server.in_flight == 0
        upstream = slot_of(router, E, "a").upstream
        assert upstream is not None and upstream.pool.open_count == 0
        assert len(asyncio.all_tasks()) == tasks_before
        ok, _ = await exchange(port, request(E, body=b"alive"))
        assert (ok.status, ok.body) == (200, b"alive")
        assert slot_of(router, E, "a").restarts == 0


# --- invalid and surplus HTTP from the container ----------------------------------------------


@pytest.mark.parametrize(
    ("action", "detail"),
    [
        ("garbage", "invalid HTTP response"),
        ("close", "closed the connection before answering"),
        ("bad-chunk", "Invalid character in chunk size"),
        ("cl-te", "Transfer-Encoding can't be present with Content-Length"),
        ("two-lengths", "Duplicate Content-Length"),
        ("short", "closed the connection in the middle of its response"),
        ("switch", "switched protocols (101)"),
        ("endless-head", "response head (or trailer section) is larger than the 65536-byte"),
        ("trailer-flood", "response head (or trailer section) is larger than the 65536-byte"),
    ],
)
async def test_invalid_http_is_a_model_error_and_the_connection_is_never_reused(
    tmp_path: Path, action: str, detail: str
) -> None:
    async with serving(tmp_path, container("a", HOSTILE_IMAGE)) as router:
        warm, _ = await exchange(router.runtime_port, request(E, body=b"warm"))
        assert warm.status == 200
        (pooled,) = pool_connections(router, "a")  # the bad call reuses this one (LIFO)
        started = time.monotonic()
        bad, _ = await exchange(router.runtime_port, request(E, f"{ATTRIBUTES}: action={action}"))
        assert_model_error(bad, "a", detail)
        assert time.monotonic() - started < 2.0, "must not wait for the invocation timeout"
        assert pooled.closed or not pooled.reusable
        good, _ = await exchange(router.runtime_port, request(E, body=b"after"))
        assert (good.status, good.body) == (200, b"after")
        assert pooled not in pool_connections(router, "a")
        assert slot_of(router, E, "a").restarts == 0


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("double", b"first"),
        ("trailing-garbage", b"ok"),
        ("eof-body", b"payload"),
        ("interim", b"payload"),
    ],
)
async def test_odd_but_complete_answers(tmp_path: Path, action: str, body: bytes) -> None:
    """The first complete answer stands; a connection that carried anything extra (a second
    response, garbage, a close-delimited body) is dropped. Interim 1xx answers are skipped."""
    async with serving(tmp_path, container("a", HOSTILE_IMAGE)) as router:
        response, _ = await exchange(
            router.runtime_port, request(E, f"{ATTRIBUTES}: action={action}", body=b"payload")
        )
        assert (response.status, response.body) == (200, body)
        reusable = action == "interim"
        assert bool(pool_connections(router, "a")) == reusable


async def test_a_surplus_response_is_never_delivered_to_the_next_caller(tmp_path: Path) -> None:
    """Regression: with one connection per container and a caller queued for it, the second
    response the container sent for the first call used to become the queued caller's answer."""
    limits = Limits(max_connections_per_container=1)
    async with serving(tmp_path, container("a", HOSTILE_IMAGE), limits=limits) as router:
        port = router.runtime_port
        async with connection(port) as first, connection(port) as second:
            await first.send(request(E, f"{ATTRIBUTES}: action=sleep:0.3", body=b"one"))
            await asyncio.sleep(0.1)  # the first call holds the only connection
            await second.send(request(E, f"{ATTRIBUTES}: action=double", body=b"two"))
            await asyncio.sleep(0.05)
            async with connection(port) as third:
                await third.send(request(E, body=b"three: mine"))
                answers = [await c.response() for c in (first, second, third)]
        assert [(a.status, a.body) for a in answers] == [
            (200, b"one"),
            (200, b"first"),
            (200, b"three: mine"),
        ]


async def test_dripped_response_ends_at_the_invocation_deadline(tmp_path: Path) -> None:
    limits = Limits(invocation_timeout_seconds=1.0)
    async with serving(tmp_path, container("a", HOSTILE_IMAGE), limits=limits) as router:
        started = time.monotonic()
        response, _ = await exchange(
            router.runtime_port, request(E, f"{ATTRIBUTES}: action=drip:0.05", body=b"d" * 200)
        )
        assert_model_error(response, "a", "timed out while waiting for a response from container a")
        assert time.monotonic() - started < 2.5


async def test_keepalive_connections_closed_at_random_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    """The container closes 30% of its keep-alive connections 0-2 ms after answering, without
    saying so: a request sent on such a connection is retried once on a fresh one. Every
    request succeeds, and the container ran each exactly once."""
    hostile = container("a", HOSTILE_IMAGE, HOSTILE_CLOSE_PROBABILITY="0.3", HOSTILE_SEED="6")
    async with serving(tmp_path, hostile) as router:
        port = router.runtime_port

        async def worker(index: int) -> int:
            done = 0
            async with connection(port) as conn:
                for i in range(40):
                    body = f"w{index}-r{i}".encode()
                    await conn.send(request(E, body=body))
                    response = await conn.response()
                    assert (response.status, response.body) == (200, body), response
                    done += 1
            return done

        answered = sum(await asyncio.gather(*(worker(i) for i in range(5))))
        assert answered == 200
        assert await invocations(router, E, "a") == 200
        container_stats = await stats(router, E, "a")
        assert container_stats["connections"] > 20, "the container did not close connections"


# --- SIGKILL under load --------------------------------------------------------------------------


async def test_sigkill_under_load_every_request_is_answered(tmp_path: Path) -> None:
    async with serving(tmp_path, container("a"), container("b")) as router:
        port = router.runtime_port
        slot = slot_of(router, E, "a")
        victim = slot.container
        assert victim is not None
        stop = asyncio.Event()
        outcomes: Counter[tuple[str, int]] = Counter()
        sent = answered = 0
        before_kill: set[UpstreamConnection] = set()

        async def worker(host: str, index: int) -> None:
            nonlocal sent, answered
            i = 0
            while not stop.is_set():
                body = f"{host}-{index}-{i}".encode()
                i += 1
                sent += 1
                async with asyncio.timeout(10):
                    response, _ = await exchange(port, request(E, target=host, body=body))
                answered += 1
                outcomes[(host, response.status)] += 1
                if response.status == 200:
                    assert response.body == body, "a truncated or foreign 200"
                elif response.status == 424:
                    assert_model_error(response, host)
                else:
                    assert (response.status, response.error_code) == (503, "ServiceUnavailable")
                    assert f"Container {host} " in response.message

        workers = [asyncio.create_task(worker("a", i)) for i in range(6)]
        workers.append(asyncio.create_task(worker("b", 0)))
        try:
            await asyncio.sleep(0.5)
            upstream = slot.upstream
            assert upstream is not None
            before_kill.update(upstream.pool._idle)
            os.kill(victim.pids()[0], signal.SIGKILL)

            async def restarted_and_serving() -> bool:
                return (
                    slot.restarts == 1 and outcomes[("a", 200)] > 0 and slot.container is not victim
                )

            await wait_until(restarted_and_serving, 15.0, "a to be restarted")
            served_before = outcomes[("a", 200)]

            async def serving_again() -> bool:
                return outcomes[("a", 200)] >= served_before + 20

            await wait_until(serving_again, 10.0, "a to serve again after the restart")
        finally:
            stop.set()
            results = await asyncio.gather(*workers, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors
        assert sent == answered, (sent, answered)
        assert victim.exit_status() == -signal.SIGKILL
        assert outcomes[("a", 424)] + outcomes[("a", 503)] >= 1, outcomes
        assert set(outcomes) <= {("a", 200), ("a", 424), ("a", 503), ("b", 200)}, outcomes
        assert outcomes[("b", 200)] > 0
        upstream = slot.upstream
        assert upstream is not None
        for conn in before_kill:
            assert conn.closed, "a connection to the killed process survived"
            assert conn not in upstream.pool._idle


# --- saturation -----------------------------------------------------------------------------


async def test_saturated_container_gets_429_while_its_sibling_answers_fast(tmp_path: Path) -> None:
    """One model hangs with 4 calls in flight and 2 queued (its limits): the next call is a 429
    ModelNotReadyException at once, and the other container of the endpoint stays fast."""
    limits = Limits(
        max_connections_per_container=4, max_queued_per_container=2, invocation_timeout_seconds=3
    )
    async with serving(tmp_path, container("a"), container("b"), limits=limits) as router:
        port = router.runtime_port
        hung = [
            asyncio.create_task(exchange(port, request(E, f"{ATTRIBUTES}: action=hang")))
            for _ in range(6)
        ]

        async def saturated() -> bool:
            upstream = slot_of(router, E, "a").upstream
            assert upstream is not None
            active = (await stats(router, E, "a"))["active_connections"]
            return active == 4 and upstream.pool.waiting_count == 2

        await wait_until(saturated, 5.0, "4 calls in flight and 2 queued on a")
        started = time.monotonic()
        rejected, closed = await exchange(port, request(E, body=b"one too many"))
        assert time.monotonic() - started < 0.5
        assert (rejected.status, rejected.error_code) == (429, "ModelNotReadyException"), rejected
        assert "Container a has 4 requests in flight and 2 waiting" in rejected.message
        assert not closed
        async with connection(port) as other:
            for i in range(20):
                started = time.monotonic()
                await other.send(request(E, target="b", body=f"b{i}".encode()))
                answer = await other.response()
                assert (answer.status, answer.body) == (200, f"b{i}".encode())
                assert time.monotonic() - started < 0.5
        statuses = Counter()
        for task in hung:
            response, _ = await asyncio.wait_for(task, 10)
            statuses[response.status] += 1
            assert response.status in (424, 429), response
        assert statuses[424] >= 4, statuses
        ok, _ = await exchange(port, request(E, body=b"a again"))
        assert (ok.status, ok.body) == (200, b"a again")
