"""Reading a container's responses: the reference reader, on httptools, and the choice of reader.

An upstream connection feeds every read to one reader and gets back one tuple, the outcome:

- ``(READ_MORE, got_body)``: no complete response yet; ``got_body`` says whether this read
  carried body bytes, so the caller can bound the reads that carry none;
- ``(COMPLETE, status, reason, content_type, custom_attributes, body chunks, body size,
  reusable)``. A complete answer stands even when bytes that are not HTTP, or a second response,
  follow it in the same read: ``reusable`` is then False, as after ``Connection: close``;
- ``(FAILED, detail)``: no answer (invalid HTTP, a body over ``max_body``, a 101 switch nobody
  asked for). The connection cannot be used again.

Interim 1xx responses are skipped, trailer fields are never taken for headers, and a response
delimited by the connection's close ends at :meth:`~ResponseReader.finish`, which returns an
outcome too (``READ_MORE`` when the close cut a response short).

Two implementations keep this contract on the same parser, llhttp 9: ``_llresponse.c`` (the
callbacks in C, built at install when a compiler works) and :class:`ResponseReader` here, which
is the fallback and the reference the tests hold the C one to. :func:`new_reader` picks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import httptools

READ_MORE: Final = 0
COMPLETE: Final = 1
FAILED: Final = 2

#: One of the three outcomes above (a tuple for speed: one C call returns everything); the
#: complete one also as its exact type, for the compiled reader of an outcome to unpack it by
#: position (unpacking a tuple of unknown length iterates it).
Outcome = tuple[Any, ...]
CompleteOutcome = tuple[int, int, bytes, bytes | None, bytes | None, list[bytes], int, bool]

_READ_MORE_NO_BODY: Final[Outcome] = (READ_MORE, False)
_READ_MORE_WITH_BODY: Final[Outcome] = (READ_MORE, True)


class ResponseReading(Protocol):
    """What an upstream connection needs from a reader (both implementations)."""

    def feed(self, data: bytes) -> Outcome: ...

    def finish(self) -> Outcome: ...


class _BodyTooLarge(Exception):
    pass


_UNASKED_UPGRADE: Final = "the container switched protocols (101) although nobody asked it to"


class ResponseReader:
    """The reference reader: httptools calls back into Python for every part of a response."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._done: tuple[int, bytes, bytes | None, bytes | None, list[bytes], int] | None = None
        self._reusable = True
        self._got_body = False
        self._reset()

    def _reset(self) -> None:
        self._body: list[bytes] = []
        self._body_size = 0
        self._content_type: bytes | None = None
        self._custom_attributes: bytes | None = None
        self._reason = b""
        # Content-Length or chunked: the end of the body is known without EOF.
        self._framed = False
        self._headers_done = False
        self._status = 0

    # the contract
    def feed(self, data: bytes) -> Outcome:
        self._done = None
        self._got_body = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at a 101 with Upgrade; the router never asks for one.
            return self._failed(_UNASKED_UPGRADE)
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(
                exc.__context__, _BodyTooLarge
            ):
                return self._failed(str(exc.__context__))
            return self._failed(f"invalid HTTP response ({exc})")
        return self._outcome()

    def finish(self) -> Outcome:
        self._done = None
        self._got_body = False
        if self._headers_done and not self._framed:
            self.on_message_complete()  # a response delimited by the connection's close
        return self._outcome()

    def _outcome(self) -> Outcome:
        # A method of its own: right after "self._done = None" above, mypy (and so mypyc)
        # would take self._done for None although the parser's callbacks have set it since.
        done = self._done
        if done is None:
            return _READ_MORE_WITH_BODY if self._got_body else _READ_MORE_NO_BODY
        self._done = None
        return (COMPLETE, *done, self._reusable)

    def _failed(self, detail: str) -> Outcome:
        self._reusable = False
        if self._done is not None:
            # A complete answer followed by bytes that are not HTTP: the answer stands.
            return self._outcome()
        return (FAILED, detail)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._done is not None:
            # A second response in the same read as the first: the container answered more
            # than it was asked. The first answer stands; the connection is never reused.
            self._reusable = False
        self._reset()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer field: never taken for a header (RFC 9110 §6.5.1)
        # The length alone skips Server, Date, Connection, ... without lower-casing them.
        size = len(name)
        if size == 12:
            if name.lower() == b"content-type":
                self._content_type = value
        elif size == 14:
            if name.lower() == b"content-length":
                self._framed = True
        elif size == 17:
            # As llhttp: only a final "chunked" coding frames the body.
            if name.lower() == b"transfer-encoding":
                self._framed = value.rstrip(b" \t").lower().endswith(b"chunked")
        elif size == 34 and name.lower() == b"x-amzn-sagemaker-custom-attributes":
            self._custom_attributes = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._status = self._parser.get_status_code()
        if status == 204 or status == 304 or 100 <= status < 200:
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self._got_body = True
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise _BodyTooLarge(f"the response is larger than the {self._max_body}-byte limit")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._done is not None:
            return  # a surplus response: dropped with the connection
        status = self._status
        if status < 200:
            # An interim 1xx (100 Continue, 103 Early Hints): skipped, the final answer
            # follows (RFC 9110 §15.2). A 101 with Upgrade ends in HttpParserUpgrade instead.
            self._reset()
            return
        if not self._parser.should_keep_alive() or not self._framed:
            self._reusable = False
        self._done = (
            status,
            self._reason,
            self._content_type,
            self._custom_attributes,
            self._body,
            self._body_size,
        )
        self._reset()


def _native_reader() -> Callable[[int], ResponseReading] | None:
    """The C reader, when it was built and may be used (as for the mypyc-compiled modules)."""
    from . import native_reader_allowed

    if not native_reader_allowed():
        return None
    try:
        from ._llresponse import ResponseReader as NativeReader
    except ImportError:
        return None
    return NativeReader


_NATIVE: Final = _native_reader()


def new_reader(max_body: int) -> ResponseReading:
    """A reader for one upstream connection: the C one when available, else the reference."""
    if _NATIVE is not None:
        return _NATIVE(max_body)
    return ResponseReader(max_body)


def reader_implementation() -> str:
    return "C (llhttp)" if _NATIVE is not None else "Python (httptools)"
