"""Fuzzing the request path with hypothesis: generated raw requests (valid, nearly valid and
hostile framing, headers and targets; pipelined; split at random read boundaries).

* In process (fast, hundreds of examples): a real ClientConnection on a fake transport; every
  answer must be well-framed HTTP with an allowed status, closing errors come last and close,
  nothing stays in flight, and how the bytes are split into reads changes nothing.
* End to end (a real router and container started once per module): every answer parses, a
  200 means the container got a request with allowlisted headers only and no control bytes,
  an error never reaches the container, and the router keeps serving.

Examples are derandomized (the same inputs every run, so CI is deterministic); set
``MCE_FUZZ_RANDOM=1`` to explore, ``MCE_FUZZ_EXAMPLES=N`` to scale both targets. Findings become
regression tests in tests/hardening (see the README's Hardening section).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from conftest import container, deploy, multi_model
from fuzz_support import (
    ALLOWED_UPSTREAM_HEADERS,
    ENDPOINT,
    RawConnection,
    Target,
    exchange,
    hardening_config,
    invocations,
    request,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mce_router import Router
from mce_router.config import Limits

pytestmark = pytest.mark.fuzz

SCALE = int(os.environ.get("MCE_FUZZ_EXAMPLES", "0") or 0)
# Hypothesis caches in ./.hypothesis by default; keep the work tree clean.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "mce-router-hypothesis"))


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=os.environ.get("MCE_FUZZ_RANDOM") != "1",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# --- request grammar, bent ----------------------------------------------------------------------

HOSTILE_BYTES = [b"\r", b"\n", b"\x00", b"\t", b" ", b"\x7f", b"\xff", b":", b",", b";", b"\r\n "]

METHODS = st.sampled_from(
    [b"POST", b"POST", b"POST", b"GET", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"P@ST", b"post"]
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            f"/endpoints/{ENDPOINT}/invocations".encode(),
            f"/endpoints/{ENDPOINT}/invocations".encode(),
            f"/endpoints/{ENDPOINT}/invocations?x=1".encode(),
            f"/endpoints/{ENDPOINT}/invocations-response-stream".encode(),
            b"/ping",
            b"/endpoints/other/invocations",
            f"http://evil/endpoints/{ENDPOINT}/invocations".encode(),
            f"/endpoints/x/../{ENDPOINT}/invocations".encode(),
            f"/endpoints/{ENDPOINT}%2Finvocations".encode(),
            b"*",
            b"",
        ]
    ),
    st.binary(max_size=24),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b""]
)
NAMES = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Content-Type",
            b"Accept",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Expect",
            b"Upgrade",
            b"Keep-Alive",
            b"TE",
            b"Trailer",
            b"X-Amzn-SageMaker-Target-Container-Hostname",
            b"x-amzn-sagemaker-target-container-hostname",
            b"X-Amzn-SageMaker-Custom-Attributes",
            b"X-Amzn-SageMaker-Inference-Id",
            b"X-Amzn-SageMaker-Target-Variant",
            b"X-Amzn-SageMaker-Session-Id",
            b"Authorization",
            b"X-Amz-Date",
            b"Cookie",
        ]
    ),
    st.binary(min_size=0, max_size=12),
)
VALUES = st.one_of(
    st.sampled_from(
        [
            b"a",
            b"x",
            b"chunked",
            b"CHUNKED",
            b"gzip, chunked",
            b"chunked, identity",
            b"identity",
            b"100-continue",
            b"close",
            b"keep-alive",
            b"Upgrade",
            b"h2c",
            b"Accept, X-Amzn-SageMaker-Custom-Attributes",
            b"0",
            b"1",
            b"5",
            b"-1",
            b"1, 1",
            b"+1",
            b"99999999999999999999",
            b"AllTraffic",
            b"action=echo",
            b"text/csv; charset=utf-8",
        ]
    ),
    st.lists(
        st.one_of(st.sampled_from(HOSTILE_BYTES), st.binary(min_size=1, max_size=6)), max_size=5
    ).map(b"".join),
)
SEPARATORS = st.sampled_from([b": ", b": ", b": ", b":", b" : ", b":\t", b" "])
EOLS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\n\t"])
FRAMINGS = st.sampled_from(
    ["length", "length", "length", "none", "short", "long", "chunked", "bad-chunk", "both"]
)


@st.composite
def raw_request(draw: st.DrawFn) -> bytes:
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS)
    headers = [b"Host: fuzz"] if draw(st.booleans()) or draw(st.booleans()) else []
    if draw(st.booleans()):
        headers.append(b"X-Amzn-SageMaker-Target-Container-Hostname: a")
    for _ in range(draw(st.integers(0, 5))):
        headers.append(draw(NAMES) + draw(SEPARATORS) + draw(VALUES))
    body = draw(st.binary(max_size=40))
    framing = draw(FRAMINGS)
    if framing in ("length", "both"):
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % max(0, len(body) - 1))
    elif framing == "long":
        headers.append(b"Content-Length: %d" % (len(body) + 1))
    if framing in ("chunked", "bad-chunk", "both"):
        headers.append(b"Transfer-Encoding: chunked")
        size = b"%x" % len(body) if framing != "bad-chunk" else draw(VALUES)
        body = (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    draw(st.randoms()).shuffle(headers)
    eol = draw(EOLS)
    return eol.join([line, *headers]) + b"\r\n\r\n" + body


@st.composite
def raw_stream(draw: st.DrawFn) -> bytes:
    """One to three (pipelined) requests, sometimes followed by garbage, or plain bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    requests = draw(st.lists(raw_request(), min_size=1, max_size=3))
    tail = draw(st.sampled_from([b"", b"", b"", b"\r\n", b"GARBAGE\r\n\r\n"]))
    return b"".join(requests) + tail


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=6)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


# --- in process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    fuzz_target = Target()
    yield fuzz_target
    fuzz_target.close()


@fuzz_settings(SCALE * 4 or 600)
@given(data=st.data())
def test_request_path_in_process(target: Target, data: st.DataObject) -> None:
    stream = data.draw(raw_stream(), label="stream")
    whole, _ = target.run([stream])
    pieces, _ = target.run(data.draw(split(stream), label="reads"))
    # How the bytes were split into reads must not change any answer.
    assert [r.status for r in pieces] == [r.status for r in whole]
    assert [r.body for r in pieces] == [r.body for r in whole]


# --- end to end ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Router]:
    # Short read deadlines: a generated request left incomplete ends in a 408 at once.
    limits = Limits(header_read_timeout_seconds=0.3, body_read_timeout_seconds=0.3)
    state = tmp_path_factory.mktemp("fuzz") / "state"
    async with Router(hardening_config(state, limits)) as running:
        model = multi_model(ENDPOINT, [container("a", FAULT_DEFAULT_ACTION="headers")], "Direct")
        await deploy(running, model)
        yield running


@pytest.mark.asyncio(loop_scope="module")
@fuzz_settings(SCALE or 200)
@given(stream=raw_stream())
async def test_request_path_end_to_end(router: Router, stream: bytes) -> None:
    before = await invocations(router, ENDPOINT, "a")
    conn = await RawConnection.open(router.runtime_port)
    answered_ok = 0
    try:
        await conn.send(stream)
        while True:
            try:
                response = await conn.response(3.0)
            except (EOFError, ConnectionError, TimeoutError):
                break  # closed (or nothing more to say: an incomplete request waits)
            except Exception as exc:  # IncompleteReadError is an EOFError
                raise AssertionError(f"unparseable answer to {stream!r}") from exc
            assert response.status in {100, 200, 400, 404, 408, 413, 424, 429, 431, 503}
            if response.status == 200 and response.body:  # /ping answers 200 with no body
                report = response.json()
                answered_ok += 1
                for name, value in report["headers"]:
                    assert name.lower() in ALLOWED_UPSTREAM_HEADERS, (name, stream)
                    assert not set(value) & set("\r\n\x00"), (name, value)
            if response.status in (408, 413, 431):
                assert response.header("Connection") == "close", response
            if response.header("Connection") == "close":
                assert await conn.closed_by_router(), "Connection: close, but it stayed open"
                break
    finally:
        await conn.close()
    assert await invocations(router, ENDPOINT, "a") - before == answered_ok, stream


@pytest.mark.asyncio(loop_scope="module")
async def test_router_still_serves_after_the_fuzzing(router: Router) -> None:
    response, _ = await exchange(router.runtime_port, request(ENDPOINT, body=b"after fuzz"))
    assert response.status == 200
    assert response.json()["body"] == "after fuzz"
