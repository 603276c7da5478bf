"""Differential fuzzing of the container-response readers: the C reader (_llresponse.c) must
answer every byte stream exactly as the reference reader on httptools (response.py).

Generated responses follow the grammar loosely (status lines, header names in any case, framing
by Content-Length, chunks, close, 1xx first, trailers, surplus responses) and are then bent
(hostile bytes spliced in, cut short) and split at random read boundaries. Both readers get the
same reads; their outcome for every read, and at EOF, must be equal. Derandomized like the other
fuzz tests; ``MCE_FUZZ_RANDOM=1`` explores, ``MCE_FUZZ_EXAMPLES=N`` scales.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mce_router.dataplane import response

try:
    from mce_router.dataplane._llresponse import ResponseReader as NativeReader
except ImportError:  # installed without a C compiler: nothing to compare
    NativeReader = None  # type: ignore[assignment,misc]

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.skipif(NativeReader is None, reason="installed without a C compiler"),
]

SCALE = int(os.environ.get("MCE_FUZZ_EXAMPLES", "0") or 0)
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "mce-router-hypothesis"))
LIMIT = 300

STATUS_LINES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 \r\n",
        b"HTTP/1.1 204 No Content\r\n",
        b"HTTP/1.1 500 Model Exploded\r\n",
        b"HTTP/1.1 100 Continue\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"HTTP/1.1 99 Low\r\n",
        b"HTTP/2 200 OK\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"ICY 200 OK\r\n",
    ]
)
NAMES = st.sampled_from(
    [
        b"Content-Type",
        b"content-type",
        b"CONTENT-TYPE",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Upgrade",
        b"X-Amzn-SageMaker-Custom-Attributes",
        b"x-amzn-sagemaker-custom-attributes",
        b"Server",
        b"X-" + b"a" * 50,
        b"Content Type",
        b"",
    ]
)
VALUES = st.sampled_from(
    [
        b"application/json",
        b"",
        b"  padded  ",
        b"0",
        b"5",
        b"12",
        b"400",
        b"-1",
        b"1x",
        b"chunked",
        b"gzip, chunked",
        b"gzip",
        b"close",
        b"keep-alive",
        b"upgrade",
        b"h2c",
        b"a=1;b=2",
        b"\x7f\xff",
    ]
)
HOSTILE = st.sampled_from([b"\r", b"\n", b"\x00", b"\t", b" ", b"\x7f", b"\xff", b":", b"\r\n"])


@st.composite
def one_response(draw: st.DrawFn) -> bytes:
    head = draw(STATUS_LINES)
    for name, value in draw(st.lists(st.tuples(NAMES, VALUES), max_size=6)):
        head += name + b": " + value + b"\r\n"
    head += b"\r\n"
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):  # chunked framing, maybe with trailers
        chunks = draw(st.lists(st.binary(min_size=1, max_size=12), max_size=4))
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n"
        if draw(st.booleans()):
            body += b"Content-Type: trailer/value\r\n"
        body += b"\r\n"
    return head + body


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    data = b"".join(draw(st.lists(one_response(), min_size=1, max_size=3)))
    if draw(st.booleans()):  # bend it: splice hostile bytes in
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(HOSTILE) + data[at:]
    if draw(st.booleans()):  # cut it short
        data = data[: draw(st.integers(0, len(data)))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [piece for piece in pieces if piece], draw(st.booleans())


def _answers(reader: response.ResponseReading, pieces: list[bytes], close: bool) -> list[object]:
    """Every outcome until an answer or a failure (the router stops feeding then), then EOF."""
    answers: list[object] = []
    for piece in pieces:
        outcome = reader.feed(piece)
        answers.append(outcome)
        if outcome[0] != response.READ_MORE:
            return answers
    if close:
        answers.append(("eof", reader.finish()))
    return answers


@settings(
    max_examples=SCALE or 400,
    deadline=None,
    derandomize=os.environ.get("MCE_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(streams())
def test_the_c_reader_answers_as_the_reference(stream: tuple[list[bytes], bool]) -> None:
    pieces, close = stream
    assert NativeReader is not None
    reference = _answers(response.ResponseReader(LIMIT), pieces, close)
    native = _answers(NativeReader(LIMIT), pieces, close)
    assert native == reference
