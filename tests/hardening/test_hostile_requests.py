"""Malformed and hostile HTTP from clients: each case on its own socket against one real router
with real containers, asserting the exact status, whether the connection was closed, and that the
container received nothing it should not (its own counters and header reports).

Container ``a`` reports every request it gets (``FAULT_DEFAULT_ACTION=headers``); ``b`` echoes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from conftest import container, deploy, multi_model
from hardening_support import (
    ALLOWED_UPSTREAM_HEADERS,
    ATTRIBUTES,
    RawConnection,
    connection,
    exchange,
    hardening_config,
    header_report,
    invocations,
    request,
)

from mce_router import Router

pytestmark = [pytest.mark.hardening, pytest.mark.asyncio(loop_scope="module")]

E = "hostile"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Router]:
    config = hardening_config(tmp_path_factory.mktemp("hostile") / "state")
    async with Router(config) as running:
        model = multi_model(
            E, [container("a", FAULT_DEFAULT_ACTION="headers"), container("b")], "Direct"
        )
        await deploy(running, model)
        yield running


def chunked(
    *headers: str, chunks: bytes = b"1\r\nx\r\n0\r\n\r\n", version: str = "HTTP/1.1"
) -> bytes:
    return request(
        E,
        *headers,
        "Transfer-Encoding: chunked",
        body=chunks,
        content_length=False,
        version=version,
    )


def with_raw_header(line: bytes, body: bytes = b"x") -> bytes:
    """A request with one header line inserted byte for byte (it may break the grammar)."""
    head = request(E, body=body)
    return head.replace(b"Host: router\r\n", b"Host: router\r\n" + line, 1)


# (raw request, message fragment): every one answered 400 ValidationError, then closed, and
# the container receives nothing. Messages starting "Malformed HTTP request" come from llhttp.
REJECTED_400: list[Any] = [
    pytest.param(
        request(E, "Transfer-Encoding: chunked", body=b"1\r\nx\r\n0\r\n\r\n"),
        "Content-Length can't be present with Transfer-Encoding",
        id="cl-with-te",
    ),
    pytest.param(request(E, "Content-Length: 2"), "Duplicate Content-Length", id="conflicting-cl"),
    pytest.param(request(E, "Content-Length: 1"), "Duplicate Content-Length", id="repeated-cl"),
    pytest.param(
        request(E, "Content-Length: 1, 1", content_length=False),
        "Invalid character in Content-Length",
        id="cl-list",
    ),
    pytest.param(
        request(E, "Content-Length: +1", content_length=False),
        "Invalid character in Content-Length",
        id="cl-plus-sign",
    ),
    pytest.param(
        request(E, "Content-Length: 99999999999999999999999", content_length=False),
        "Content-Length overflow",
        id="cl-overflow",
    ),
    pytest.param(
        request(
            E, "Transfer-Encoding : chunked", body=b"1\r\nx\r\n0\r\n\r\n", content_length=False
        ),
        "Invalid header field char",
        id="te-space-before-colon",
    ),
    pytest.param(
        request(
            E, "Transfer-Encoding: xchunked", body=b"1\r\nx\r\n0\r\n\r\n", content_length=False
        ),
        "Unsupported Transfer-Encoding 'xchunked'",
        id="te-xchunked",
    ),
    pytest.param(
        request(
            E, "Transfer-Encoding: gzip, chunked", body=b"1\r\nx\r\n0\r\n\r\n", content_length=False
        ),
        "Unsupported Transfer-Encoding 'gzip, chunked'",
        id="te-gzip-chunked",
    ),
    pytest.param(
        request(E, "Transfer-Encoding: identity", content_length=False),
        "Unsupported Transfer-Encoding 'identity'",
        id="te-identity",
    ),
    pytest.param(
        request(
            E,
            "Transfer-Encoding: chunked, identity",
            body=b"1\r\nx\r\n0\r\n\r\n",
            content_length=False,
        ),
        "Invalid `Transfer-Encoding` header value",
        id="te-chunked-not-last",
    ),
    pytest.param(
        chunked("Transfer-Encoding: chunked"),
        "Invalid `Transfer-Encoding` header value",
        id="te-twice",
    ),
    pytest.param(
        request(
            E, "Transfer-Encoding:\r\n chunked", body=b"1\r\nx\r\n0\r\n\r\n", content_length=False
        ),
        "Invalid header value char",
        id="te-obs-fold",
    ),
    pytest.param(
        chunked(version="HTTP/1.0"),
        "An HTTP/1.0 request must not use Transfer-Encoding",
        id="te-on-http-1.0",
    ),
    pytest.param(
        chunked(chunks=b"zz\r\nx\r\n0\r\n\r\n"),
        "Invalid character in chunk size",
        id="chunk-not-hex",
    ),
    pytest.param(
        chunked(chunks=b"-1\r\nx\r\n0\r\n\r\n"),
        "Invalid character in chunk size",
        id="chunk-negative",
    ),
    pytest.param(
        chunked(chunks=b"0x1\r\nx\r\n0\r\n\r\n"),
        "Invalid character in chunk size",
        id="chunk-0x-prefix",
    ),
    pytest.param(
        chunked(chunks=b"1 \r\nx\r\n0\r\n\r\n"),
        "Invalid character in chunk size",
        id="chunk-size-space",
    ),
    pytest.param(
        chunked(chunks=b"fffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        "Chunk size overflow",
        id="chunk-overflow",
    ),
    pytest.param(
        chunked(chunks=b"1\nx\n0\n\n"), "Missing expected CR after chunk size", id="chunk-bare-lf"
    ),
    pytest.param(
        chunked(chunks=b"1\r\nxy0\r\n\r\n"), "Expected LF after chunk data", id="chunk-too-long"
    ),
    pytest.param(
        request(E).replace(b"\r\n", b"\n"), "Expected CRLF after version", id="bare-lf-lines"
    ),
    pytest.param(
        with_raw_header(b"X-Note: a\rb\r\n"), "Missing expected LF after header value", id="bare-cr"
    ),
    pytest.param(
        with_raw_header(b"X-Note: a\nb: c\r\n"),
        "Missing expected CR after header value",
        id="bare-lf",
    ),
    pytest.param(
        with_raw_header(b"X-Note: a\x00b\r\n"), "Invalid header value char", id="nul-in-value"
    ),
    pytest.param(
        with_raw_header(b"X-Note: a\r\n folded\r\n"),
        "Unexpected whitespace after header value",
        id="obs-fold",
    ),
    pytest.param(
        with_raw_header(ATTRIBUTES.encode() + b": action=echo\r\n\tfolded\r\n"),
        "Unexpected whitespace after header value",
        id="obs-fold-forwarded-header",
    ),
    pytest.param(
        with_raw_header(b"Content-Type : text/plain\r\n"),
        "Invalid header token",
        id="space-before-colon",
    ),
    pytest.param(
        with_raw_header(b"X-Note : a\r\n"), "Invalid header token", id="space-before-colon-other"
    ),
    pytest.param(with_raw_header(b"X\x01Note: a\r\n"), "Invalid header token", id="ctl-in-name"),
    pytest.param(with_raw_header(b": a\r\n"), "Invalid header token", id="empty-name"),
    pytest.param(
        request(E, "Host: other"), "The header Host appears more than once", id="duplicate-host"
    ),
    pytest.param(
        request(E, host=False), "An HTTP/1.1 request must carry a Host header", id="missing-host"
    ),
    pytest.param(
        request(E, "X-Amzn-SageMaker-Target-Container-Hostname: b"),
        "The header X-Amzn-SageMaker-Target-Container-Hostname appears more than once",
        id="two-targets",
    ),
    pytest.param(
        request(E, "x-amzn-sagemaker-target-container-hostname: a"),
        "appears more than once",
        id="two-targets-same-value-other-case",
    ),
    pytest.param(
        request(E, "Content-Type: a/b", "content-type: c/d"),
        "appears more than once",
        id="two-content-types",
    ),
    pytest.param(
        request(E, f"{ATTRIBUTES}: action=echo", f"{ATTRIBUTES}: action=crash"),
        "appears more than once",
        id="two-custom-attributes",
    ),
    pytest.param(
        request(E, "Connection: Upgrade", "Upgrade: websocket"),
        "A request with a body cannot ask for a protocol upgrade",
        id="upgrade-with-body",
    ),
    pytest.param(
        request(E, "Expect: 200-ok"), "Unsupported Expect header value", id="expect-other"
    ),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "Pause on PRI/Upgrade", id="http2-preface"),
    pytest.param(request(E, method="P@ST"), "Invalid method encountered", id="invalid-method"),
    pytest.param(
        request(E, version="HTTP/1.1 "), "Expected CRLF after version", id="space-after-version"
    ),
]


@pytest.mark.parametrize(("raw", "fragment"), REJECTED_400)
async def test_malformed_request_is_400_closed_and_never_forwarded(
    router: Router, raw: bytes, fragment: str
) -> None:
    before = await invocations(router, E, "a"), await invocations(router, E, "b")
    response, closed = await exchange(router.runtime_port, raw)
    assert (response.status, response.error_code) == (400, "ValidationError"), response
    assert fragment in response.message, response.message
    assert response.header("Connection") == "close"
    assert closed, "the connection must be closed: the next request's boundary is unknown"
    after = await invocations(router, E, "a"), await invocations(router, E, "b")
    assert after == before, "the container received a request it should not have"


# (raw request, status, error code, message fragment): answered without reaching a container,
# and the connection stays usable (the request boundary is clear).
NOT_ROUTED: list[Any] = [
    pytest.param(
        request(E, path=f"http://evil.example/endpoints/{E}/invocations"),
        404,
        "UnknownOperationException",
        "Unknown operation",
        id="absolute-form",
    ),
    pytest.param(
        request(E, path=f"/endpoints/other/../{E}/invocations"),
        404,
        "UnknownOperationException",
        "Unknown operation",
        id="dot-dot",
    ),
    pytest.param(
        request(E, path=f"/endpoints/{E}%2Finvocations"),
        404,
        "UnknownOperationException",
        "Unknown operation",
        id="percent-2f",
    ),
    pytest.param(
        request(E, path=f"/endpoints/{E}/invocations/"),
        404,
        "UnknownOperationException",
        "Unknown operation",
        id="trailing-slash",
    ),
    pytest.param(
        request(E, path="/endpoints/%68ostile/invocations"),
        400,
        "ValidationError",
        "Endpoint %68ostile of account 000000000000 not found",
        id="percent-encoded-name-not-decoded",
    ),
    pytest.param(
        request(E, method="GET"),
        404,
        "UnknownOperationException",
        "Invocations must use POST",
        id="get-invocations",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code", "fragment"), NOT_ROUTED)
async def test_odd_targets_are_answered_without_forwarding(
    router: Router, raw: bytes, status: int, code: str, fragment: str
) -> None:
    before = await invocations(router, E, "a")
    async with connection(router.runtime_port) as conn:
        await conn.send(raw)
        response = await conn.response()
        assert (response.status, response.error_code) == (status, code), response
        assert fragment in response.message, response.message
        # Same socket, next request: it was kept open and is still in sync.
        await conn.send(request(E, target="b", body=b"still in sync"))
        follow_up = await conn.response()
        assert (follow_up.status, follow_up.body) == (200, b"still in sync")
    assert await invocations(router, E, "a") == before


async def test_hop_by_hop_and_connection_listed_headers_never_reach_a_container(
    router: Router,
) -> None:
    raw = request(
        E,
        "Connection: keep-alive, X-Amzn-SageMaker-Session-Id, Accept",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: h2c",
        "Proxy-Authorization: Basic c2VjcmV0",
        "Authorization: AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sagemaker/aws4_request",
        "X-Amz-Date: 20240101T000000Z",
        "X-Amz-Security-Token: token",
        "Cookie: session=1",
        "X-Forwarded-For: 10.0.0.1",
        "Forwarded: for=10.0.0.1",
        "Via: 1.1 evil",
        "X-Amzn-SageMaker-Session-Id: listed-in-connection",
        "Accept: application/listed-in-connection",
        "Content-Type: text/csv; charset=utf-8",
        "X-Amzn-SageMaker-Inference-Id: inference-1",
        f"{ATTRIBUTES}: tenant=7",
        body=b"1,2,3",
    )
    response, closed = await exchange(router.runtime_port, raw)
    assert not closed
    received = header_report(response)
    names = [name.lower() for name, _ in received]
    assert set(names) <= ALLOWED_UPSTREAM_HEADERS, received
    assert len(names) == len(set(names)), f"a header reached the container twice: {received}"
    assert dict(received) == {
        "Host": dict(received)["Host"],  # the container's own address, written by the router
        "X-Amzn-SageMaker-Custom-Attributes": "tenant=7",
        "X-Amzn-SageMaker-Inference-Id": "inference-1",
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Length": "5",
    }
    assert dict(received)["Host"].startswith("127.0.0.1:")
    assert response.json()["body"] == "1,2,3"


async def test_expect_100_continue(router: Router) -> None:
    async with connection(router.runtime_port) as conn:
        raw = request(E, "Expect: 100-continue", target="b", body=b"after continue")
        head, _, body = raw.partition(b"\r\n\r\n")
        await conn.send(head + b"\r\n\r\n")
        interim = await conn.response()
        assert interim.status == 100
        await conn.send(body)
        final = await conn.response()
        assert (final.status, final.body) == (200, b"after continue")

    # Over the body limit: 413 at once, no 100 Continue, the body is never read.
    before = await invocations(router, E, "b")
    too_big = (
        request(E, "Expect: 100-continue", target="b", content_length=False, body=b"")[:-2]
        + b"Content-Length: 6291457\r\n\r\n"
    )
    response, closed = await exchange(router.runtime_port, too_big)
    assert (response.status, response.error_code) == (413, "ValidationError")
    assert closed
    assert await invocations(router, E, "b") == before


async def test_pipelined_requests_are_answered_in_order(router: Router) -> None:
    before = await invocations(router, E, "b")
    async with connection(router.runtime_port) as conn:
        await conn.send(
            b"".join(request(E, target="b", body=f"request {i}".encode()) for i in range(5))
        )
        bodies = [(await conn.response()).body for _ in range(5)]
        assert bodies == [f"request {i}".encode() for i in range(5)]
        assert not await conn.closed_by_router(0.3)
    assert await invocations(router, E, "b") == before + 5


async def test_pipelined_garbage_after_a_good_request(router: Router) -> None:
    """The complete request is answered, then the garbage gets its 400, then the socket closes;
    before, the router dropped the connection and the client never learned its answer."""
    before = await invocations(router, E, "b")
    async with connection(router.runtime_port) as conn:
        await conn.send(
            request(E, f"{ATTRIBUTES}: action=sleep:0.2", target="b", body=b"good")
            + b"NOT HTTP AT ALL\r\n\r\n"
            + request(E, target="b", body=b"never")
        )
        good = await conn.response()
        assert (good.status, good.body) == (200, b"good")
        bad = await conn.response()
        assert (bad.status, bad.error_code) == (400, "ValidationError")
        assert "Malformed HTTP request" in bad.message
        assert await conn.closed_by_router()
    assert await invocations(router, E, "b") == before + 1


# Bodies of 64 KiB or more still to come are taken from the reads without the parser (a fresh
# parser reads what follows them). These send one in pieces, with pauses so that the router
# sees separate reads: a body byte lost, doubled or misframed shows in the echoes that follow.
LARGE = random.Random(7).randbytes(300_000)


async def send_in_pieces(conn: RawConnection, data: bytes, cuts: list[int]) -> None:
    for start, end in itertools.pairwise([0, *cuts, len(data)]):
        await conn.send(data[start:end])
        await asyncio.sleep(0.05)


async def test_a_large_body_in_pieces_then_pipelined_requests(router: Router) -> None:
    before = await invocations(router, E, "b")
    large = request(E, target="b", body=LARGE)
    head = len(large) - len(LARGE)
    stream = large + request(E, target="b", body=b"next") + request(E, target="b", body=LARGE)
    # The head and 100 body bytes; 70,000 more; the rest of the body with the start of the next
    # request; the second large request's head and a few bytes of its body; the rest.
    second = len(large) + len(request(E, target="b", body=b"next"))
    cuts = [head + 100, head + 70_100, len(large) + 10, second + head + 5]
    async with connection(router.runtime_port) as conn:
        await send_in_pieces(conn, stream, cuts)
        bodies = [(await conn.response()).body for _ in range(3)]
        assert [len(body) for body in bodies] == [len(LARGE), 4, len(LARGE)]
        assert bodies == [LARGE, b"next", LARGE]
        # And the connection goes on as usual.
        await conn.send(request(E, target="b", body=b"after"))
        assert (await conn.response()).body == b"after"
        assert not await conn.closed_by_router(0.2)
    assert await invocations(router, E, "b") == before + 4


async def test_a_large_body_with_connection_close_then_garbage(router: Router) -> None:
    before = await invocations(router, E, "b")
    large = request(E, "Connection: close", target="b", body=LARGE)
    async with connection(router.runtime_port) as conn:
        await send_in_pieces(conn, large + b"NOT HTTP\r\n\r\n", [len(large) - len(LARGE) + 1])
        response = await conn.response()
        assert (response.status, response.header("Connection")) == (200, "close")
        assert response.body == LARGE
        assert await conn.closed_by_router()
    assert await invocations(router, E, "b") == before + 1


async def test_garbage_after_a_large_body_is_a_400_after_its_answer(router: Router) -> None:
    before = await invocations(router, E, "b")
    large = request(E, target="b", body=LARGE)
    async with connection(router.runtime_port) as conn:
        await send_in_pieces(conn, large + b"NOT HTTP\r\n\r\n", [len(large) - len(LARGE) + 1])
        assert (await conn.response()).body == LARGE
        bad = await conn.response()
        assert (bad.status, bad.error_code) == (400, "ValidationError")
        assert "Malformed HTTP request" in bad.message
        assert await conn.closed_by_router()
    assert await invocations(router, E, "b") == before + 1


async def test_a_large_body_that_reports_what_the_container_got(router: Router) -> None:
    """Container ``a`` reports the request it received: the body arrives whole and the headers
    are still the allowlisted ones."""
    large = request(E, "Content-Type: application/x-npy", body=LARGE)
    async with connection(router.runtime_port) as conn:
        await send_in_pieces(conn, large, [len(large) - len(LARGE) + 3, len(large) - 1])
        response = await conn.response()
    assert response.status == 200
    report = response.json()
    assert report["body_length"] == len(LARGE)
    assert report["body"].encode("latin-1") == LARGE
    assert ("Content-Type", "application/x-npy") in [tuple(pair) for pair in report["headers"]]


async def test_bytes_after_connection_close_are_ignored(router: Router) -> None:
    before = await invocations(router, E, "b")
    async with connection(router.runtime_port) as conn:
        await conn.send(
            request(E, "Connection: close", target="b", body=b"last")
            + request(E, target="b", body=b"never")
        )
        last = await conn.response()
        assert (last.status, last.body, last.header("Connection")) == (200, b"last", "close")
        assert await conn.closed_by_router()
    assert await invocations(router, E, "b") == before + 1


async def test_upgrade_without_body_is_served_as_http_then_closed(router: Router) -> None:
    before = await invocations(router, E, "b")
    async with connection(router.runtime_port) as conn:
        await conn.send(
            request(E, "Connection: Upgrade", "Upgrade: h2c", target="b", body=b"")
            + request(E, target="b", body=b"must not be parsed")
        )
        served = await conn.response()
        assert (served.status, served.header("Connection")) == (200, "close")
        assert await conn.closed_by_router()
    assert await invocations(router, E, "b") == before + 1


async def test_ping_answer_is_well_framed(router: Router) -> None:
    """Fuzz finding: GET /ping answered with Content-Length twice, which strict clients (llhttp
    among them) reject as a framing error. RawConnection.response asserts framing headers are
    unique on every answer of this suite."""
    async with connection(router.runtime_port) as conn:
        await conn.send(b"GET /ping HTTP/1.1\r\nHost: router\r\n\r\n" * 2)
        for _ in range(2):
            response = await conn.response()
            assert (response.status, response.header("Content-Length"), response.body) == (
                200,
                "0",
                b"",
            )


async def test_connect_gets_one_answer_then_close(router: Router) -> None:
    async with connection(router.runtime_port) as conn:
        await conn.send(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        answer = await conn.response()
        assert (answer.status, answer.error_code) == (404, "UnknownOperationException")
        assert await conn.closed_by_router()  # and no second response after it


async def test_a_burst_of_pipelined_pings_behind_an_invocation(router: Router) -> None:
    """Regression: answers written at once used to recurse once per queued request, and 2,000
    queued pings hit RecursionError after ~200 answers, leaving the rest unanswered."""
    async with connection(router.runtime_port) as conn:
        await conn.send(
            request(E, f"{ATTRIBUTES}: action=sleep:0.2", target="b", body=b"slow")
            + b"GET /ping HTTP/1.1\r\nHost: router\r\n\r\n" * 2000
        )
        first = await conn.response()
        assert first.body == b"slow"
        statuses = {(await conn.response()).status for _ in range(2000)}
        assert statuses == {200}
        assert not await conn.closed_by_router(0.3)


async def test_chunked_body_is_forwarded_with_content_length_and_trailers_dropped(
    router: Router,
) -> None:
    """Trailer fields must not act as headers: not the target, not the Content-Type, and they
    never reach the container."""
    raw = chunked(
        "Content-Type: text/plain",
        chunks=(
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n"
            b"X-Amzn-SageMaker-Target-Container-Hostname: b\r\n"
            b"Content-Type: application/evil\r\n"
            b"X-Amzn-SageMaker-Session-Id: from-trailer\r\n\r\n"
        ),
    )
    response, closed = await exchange(router.runtime_port, raw)
    assert not closed
    received = dict(header_report(response))
    assert received["Content-Length"] == "11"
    assert received["Content-Type"] == "text/plain"
    assert set(map(str.lower, received)) == {"host", "content-type", "content-length"}
    assert response.json()["body"] == "hello world"

    # A target named only in a trailer is no target at all.
    no_target = request(
        E,
        "Transfer-Encoding: chunked",
        target=None,
        content_length=False,
        body=b"1\r\nx\r\n0\r\nX-Amzn-SageMaker-Target-Container-Hostname: b\r\n\r\n",
    )
    refused, _ = await exchange(router.runtime_port, no_target)
    assert (refused.status, refused.error_code) == (400, "ValidationError")
    assert "uses Direct invocation" in refused.message
