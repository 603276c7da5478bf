"""The container-response readers (response.py): the C one must answer exactly as the reference.

Every case is fed whole, byte by byte, and in three-byte pieces, to both readers; what they
return (outcomes, responses, reuse, errors) must be the expected answer and the same for both.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from mce_router.dataplane import response
from mce_router.dataplane.response import COMPLETE, FAILED, READ_MORE, Outcome, ResponseReading

try:
    from mce_router.dataplane._llresponse import ResponseReader as NativeReader
except ImportError:  # installed without a C compiler
    NativeReader = None  # type: ignore[assignment,misc]

READERS: list[Callable[[int], ResponseReading]] = [response.ResponseReader]
if NativeReader is not None:
    READERS.append(NativeReader)

Event = tuple[object, ...]

LIMIT = 1000
OK_HEAD = b"HTTP/1.1 200 OK\r\nServer: nginx\r\n"

# name: (bytes, close the connection after them?, expected answers and final reuse)
CASES: dict[str, tuple[bytes, bool, list[Event]]] = {
    "content-length": (
        OK_HEAD + b"Content-Type: application/json\r\nContent-Length: 2\r\n"
        b"X-Amzn-SageMaker-Custom-Attributes: a=1\r\n\r\n{}",
        False,
        [(200, b"OK", b"application/json", b"a=1", b"{}", 2), ("reusable", True)],
    ),
    "names in any letter case, the last one wins": (
        OK_HEAD + b"content-TYPE: text/csv\r\nCONTENT-TYPE: text/plain\r\ncontent-length: 1\r\n"
        b"x-amzn-sagemaker-custom-attributes: z\r\n\r\nx",
        False,
        [(200, b"OK", b"text/plain", b"z", b"x", 1), ("reusable", True)],
    ),
    "an empty value": (
        OK_HEAD + b"Content-Type:\r\nContent-Length: 0\r\n\r\n",
        False,
        [(200, b"OK", b"", None, b"", 0), ("reusable", True)],
    ),
    "long names are skipped": (
        OK_HEAD + b"X-" + b"a" * 60 + b": 1\r\nX-Amzn-SageMaker-Custom-Attributes-Extra: 2\r\n"
        b"Content-Length: 0\r\n\r\n",
        False,
        [(200, b"OK", None, None, b"", 0), ("reusable", True)],
    ),
    "chunked, a trailer is not a header": (
        OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Type: a/b\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nContent-Type: evil/trailer\r\n\r\n",
        False,
        [(200, b"OK", b"a/b", None, b"abcde", 5), ("reusable", True)],
    ),
    "interim 100 and 103 skipped": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        + OK_HEAD
        + b"Content-Length: 1\r\n\r\nz",
        False,
        [(200, b"OK", None, None, b"z", 1), ("reusable", True)],
    ),
    "204 without length": (
        b"HTTP/1.1 204 No Content\r\n\r\n",
        False,
        [(204, b"No Content", None, None, b"", 0), ("reusable", True)],
    ),
    "error status with reason and no body": (
        b"HTTP/1.1 500 Model Exploded\r\nContent-Length: 0\r\n\r\n",
        False,
        [(500, b"Model Exploded", None, None, b"", 0), ("reusable", True)],
    ),
    "no reason phrase": (
        b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
        False,
        [(200, b"", None, None, b"", 0), ("reusable", True)],
    ),
    "connection close": (
        OK_HEAD + b"Connection: close\r\nContent-Length: 1\r\n\r\nq",
        False,
        [(200, b"OK", None, None, b"q", 1), ("reusable", False)],
    ),
    "HTTP/1.0 without keep-alive": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nq",
        False,
        [(200, b"OK", None, None, b"q", 1), ("reusable", False)],
    ),
    "delimited by the close": (
        OK_HEAD + b"Content-Type: t/t\r\n\r\nuntil the end",
        True,
        [("finish",), (200, b"OK", b"t/t", None, b"until the end", 13), ("reusable", False)],
    ),
    "a coding other than chunked is delimited by the close": (
        OK_HEAD + b"Transfer-Encoding: gzip\r\n\r\nzz",
        True,
        [("finish",), (200, b"OK", None, None, b"zz", 2), ("reusable", False)],
    ),
    "closed in the middle of a framed body": (
        OK_HEAD + b"Content-Length: 10\r\n\r\nshort",
        True,
        [("finish",), ("reusable", True)],
    ),
    "closed in the middle of the head": (
        OK_HEAD + b"Content-Le",
        True,
        [("finish",), ("reusable", True)],
    ),
    "a second response in the same read": (
        OK_HEAD + b"Content-Length: 1\r\n\r\n1" + OK_HEAD + b"Content-Length: 1\r\n\r\n2",
        False,
        [(200, b"OK", None, None, b"1", 1), ("reusable", False)],
    ),
    "body over the limit": (
        OK_HEAD + b"Content-Length: 1001\r\n\r\n" + b"x" * 1001,
        False,
        [("failed", f"the response is larger than the {LIMIT}-byte limit"), ("reusable", False)],
    ),
    "a switch nobody asked for": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        False,
        [
            ("failed", "the container switched protocols (101) although nobody asked it to"),
            ("reusable", False),
        ],
    ),
    "a bare 101 (no Upgrade named) is not a switch but invalid": (
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        False,
        [
            ("failed", "invalid HTTP response (Pause on CONNECT/Upgrade)"),
            ("reusable", False),
        ],
    ),
    "not HTTP": (
        b"SSH-2.0-OpenSSH\r\n\r\n",
        False,
        [("failed", "invalid HTTP response (Expected HTTP/, RTSP/ or ICE/)"), ("reusable", False)],
    ),
    "a bad header value": (
        OK_HEAD + b"Content-Length: 1x\r\n\r\n",
        False,
        [
            ("failed", "invalid HTTP response (Invalid character in Content-Length)"),
            ("reusable", False),
        ],
    ),
}
#: Cases whose answer depends on what arrives in one read: only fed whole.
WHOLE_ONLY = {"a second response in the same read"}


def _run(
    reader_type: Callable[[int], ResponseReading], pieces: list[bytes], close: bool
) -> list[Event]:
    reader = reader_type(LIMIT)
    events: list[Event] = []

    def record(outcome: Outcome) -> bool:
        """Note an answer; True once there is one (the caller stops feeding)."""
        if outcome[0] == COMPLETE:
            _, status, reason, content_type, attributes, body, size, reusable = outcome
            events.append((status, reason, content_type, attributes, b"".join(body), size))
            events.append(("reusable", reusable))
            return True
        if outcome[0] == FAILED:
            events.append(("failed", outcome[1]))
            events.append(("reusable", False))
            return True
        assert outcome[0] == READ_MORE and isinstance(outcome[1], bool)
        return False

    for piece in pieces:
        if record(reader.feed(piece)):
            return events
    if close:
        events.append(("finish",))
        if record(reader.finish()):
            return events
    events.append(("reusable", True))  # no answer: nothing said the connection is done
    return events


def _splits(data: bytes) -> dict[str, list[bytes]]:
    return {
        "whole": [data],
        "bytewise": [data[i : i + 1] for i in range(len(data))],
        "threes": [data[i : i + 3] for i in range(0, len(data), 3)],
    }


@pytest.mark.parametrize("reader_type", READERS, ids=lambda t: t.__module__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("case", CASES)
def test_reader_answers(reader_type: Callable[[int], ResponseReading], case: str) -> None:
    data, close, expected = CASES[case]
    for split, pieces in _splits(data).items():
        if case in WHOLE_ONLY and split != "whole":
            continue
        assert _run(reader_type, pieces, close) == expected, split


def test_read_more_says_whether_the_read_carried_body() -> None:
    for reader_type in READERS:
        reader = reader_type(LIMIT)
        assert reader.feed(OK_HEAD + b"Content-Length: 6\r\n") == (READ_MORE, False)
        assert reader.feed(b"\r\nabc") == (READ_MORE, True)
        assert reader.feed(b"def") == (COMPLETE, 200, b"OK", None, None, [b"abc", b"def"], 6, True)
        assert reader.feed(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\n") == (
            READ_MORE,
            False,
        )


@pytest.mark.skipif(NativeReader is None, reason="installed without a C compiler")
def test_the_c_reader_is_used_unless_python_is_asked_for() -> None:
    if os.environ.get("MCE_ROUTER_PURE_PYTHON"):
        assert response.reader_implementation() == "Python (httptools)"
        assert isinstance(response.new_reader(10), response.ResponseReader)
    else:
        assert response.reader_implementation() == "C (llhttp)"
        assert isinstance(response.new_reader(10), NativeReader)  # type: ignore[arg-type]
