"""InvokeEndpointWithResponseStream: the container's response relayed as it is produced.

Dispatched from the hot path once per stream request (``ClientConnection._start_stream``) and
kept out of it: this module is plain Python, not compiled with the proxy. A stream is an
:class:`~mce_router.dataplane.proxy.Invocation` (same pools, same Serial chain, same deadlines
swept by the server, same metrics), except for the last stage: its pooled connection is read by
a :class:`_StreamReader` (the transport's protocol is swapped for the call and given back
after), which relays every body read as one ``PayloadPart`` event, in an HTTP chunk, as it
arrives.

- Before the first part reaches the client, errors are InvokeEndpoint's (a container 4xx/5xx is
  ModelError with its status and body, read up to limits.max_response_body_bytes).
- After it, the stream ends with an exception event: ``ModelStreamError`` (``StreamBroken``
  when the container's connection breaks, ``ModelInvocationTimeExceeded`` past the silence or
  total limit) or ``InternalStreamFailure`` for a fault of the router.
- Backpressure: while the client's write buffer is above its high-water mark the container's
  connection is not read (the kernel's buffers then slow the container down); it is read again
  when the buffer drains (``client_drained``). At most one read per stream is held in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httptools

from ..errors import InternalFailure, ModelError
from . import eventstream
from .proxy import (
    Invocation,
    UpstreamConnection,
    UpstreamResponse,
    _broken_call_error,
    _model_error,
)

_log = logging.getLogger(__name__)
_clock = time.perf_counter

# Invocation's states (proxy.py keeps them as Final ints, inlined where compiled).
_WAITING = 0
_SENT = 1
_DONE = 2

_INF = float("inf")
_EVENT_STREAM_TYPE = b"Content-Type: application/vnd.amazon.eventstream\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class StreamInvocation(Invocation):
    """One InvokeEndpointWithResponseStream call (the earlier Serial stages run as usual)."""

    # Invocation's constructor is kept as it is (the proxy calls it through StreamType); the
    # stream's own state starts with the call.
    reader: _StreamReader | None
    #: The response head has gone to the client: errors are events from now on.
    streaming: bool
    #: The container's connection is not being read (the client's buffer is full).
    paused: bool

    def start(self, now: float) -> None:
        limits = self.client.server.limits
        self.silence_limit = limits.stream_silence_timeout_seconds
        self.duration_limit = limits.stream_max_duration_seconds
        self.ends_at = self.received_at + self.duration_limit
        self.reader = None
        self.streaming = False
        self.paused = False
        self.first_part_at = 0.0
        self.last_read_at = 0.0
        self.parts = 0
        super().start(now)

    # the last stage: take the pooled connection over
    def connection_ready(self, conn: UpstreamConnection, *, reused: bool) -> None:
        if self._stage + 1 == len(self.chain):
            if self._state == _DONE:
                conn.pool.release(conn, _clock())
                return
            if self._orphaned:
                # The client left while an earlier Serial stage ran: nothing to stream to.
                conn.pool.release(conn, _clock())
                self._drop(0)
                return
        super().connection_ready(conn, reused=reused)

    def send_request(self, conn: UpstreamConnection, head: bytes) -> None:
        if self._stage + 1 < len(self.chain):
            super().send_request(conn, head)
            return
        transport = conn.transport
        assert transport is not None
        self.deadline = min(self.deadline, self.ends_at)
        reader = self.reader = _StreamReader(self, conn, conn.pool.max_response_bytes)
        transport.set_protocol(reader)
        transport.writelines([head, *self.body])
        self.body = []  # the request is written: its memory is not held while streaming

    # events of the reader
    def stream_bytes(self, now: float) -> None:
        """Bytes came from the container (any: head, framing, body)."""
        self.last_read_at = now
        if self.streaming and not self.paused:
            self.deadline = min(now + self.silence_limit, self.ends_at)

    def stream_part(self, reader: _StreamReader, data: bytes) -> None:
        client = self.client
        if not self.streaming:
            self._open(reader)
        self.parts += 1
        transport = client.transport
        if transport is None or client.closing:
            return
        transport.write(_chunk(eventstream.payload_part(data)))
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            # The client reads slower than the container writes: stop reading the container
            # until the client's buffer drains (client_drained).
            self.paused = True
            reader.pause()
            self.deadline = self.ends_at

    def client_drained(self) -> None:
        reader = self.reader
        if self.paused and reader is not None and self._state == _SENT:
            self.paused = False
            reader.resume()
            self.deadline = min(_clock() + self.silence_limit, self.ends_at)

    def stream_complete(self, reader: _StreamReader, reusable: bool) -> None:
        """The container's response ended properly (2xx: the stream ends well)."""
        conn = reader.conn
        self.reader = None
        self._conn = None
        upstream = self.chain[self._stage]
        status = reader.status
        now = self._end_call(upstream, status, self._stage_started, final=True)
        transport = conn.transport
        if transport is not None and not conn.closed:
            transport.set_protocol(conn)
            if self.paused:
                # Paused on an earlier part of the read that also ended the response.
                self.paused = False
                transport.resume_reading()
            if not reusable:
                conn.reusable = False
            conn.pool.release(conn, now)
        if not 200 <= status < 300:
            self._fail_before_stream(
                _model_error(
                    upstream,
                    UpstreamResponse(
                        status,
                        reader.reason,
                        reader.content_type,
                        None,
                        reader.error_body,
                        reader.error_size,
                    ),
                )
            )
            return
        if not self.streaming:
            self._open(reader)  # an empty body: a stream without parts
        self._end_stream(b"", 200)

    def stream_failed(self, detail: str, *, connection_lost: bool) -> None:
        """The container's connection broke or sent what is not HTTP."""
        reader = self.reader
        self.reader = None
        conn = self._conn
        self._conn = None
        upstream = self.chain[self._stage]
        if conn is not None and not connection_lost:
            conn.abort()
        if (
            connection_lost
            and not self.streaming
            and reader is not None
            and not reader.got_bytes
            and self._attempt_reused
        ):
            # A kept-alive connection the container had closed already: as InvokeEndpoint,
            # one retry on a fresh connection (nothing was sent to the client yet).
            self._state = _WAITING
            self._attempt_reused = False
            self._connect_grace = False
            self.deadline = _clock() + self.client.server.queue_wait
            upstream.pool.acquire(self, fresh=True)
            return
        self._end_call(upstream, 0, self._stage_started, final=True)
        if not self.streaming:
            self._fail_before_stream(_broken_call_error(upstream, detail))
            return
        message = (
            f"Container {upstream.container_name} of endpoint {upstream.endpoint_name}: "
            f"{detail} after {self.parts} part(s)."
        )
        self._end_stream(eventstream.model_stream_error(eventstream.STREAM_BROKEN, message), 0)

    def internal_failure(self, exc: Exception) -> None:
        """A fault of the router itself while relaying (a bug): end the stream, say so."""
        upstream = self.chain[self._stage]
        self._abort_container()
        self._end_call(upstream, 0, self._stage_started, final=True)
        message = f"The router failed while relaying the stream ({type(exc).__name__}); retry."
        if not self.streaming:
            self._fail_before_stream(InternalFailure(message))
            return
        self._end_stream(eventstream.internal_stream_failure(message), 0)

    # deadlines (swept by the server) and the client leaving
    def timed_out(self) -> None:
        if self._state != _SENT or self._stage + 1 < len(self.chain) or not self.streaming:
            if self.reader is not None:
                self.reader.detach()
                self.reader = None
            super().timed_out()
            return
        now = _clock()
        upstream = self.chain[self._stage]
        if now >= self.ends_at:
            why = (
                f"the stream exceeded its {self.duration_limit:g} s limit "
                "(limits.stream_max_duration_seconds)"
            )
        else:
            why = (
                f"the container sent nothing for {self.silence_limit:g} s "
                "(limits.stream_silence_timeout_seconds)"
            )
        self._abort_container()
        self._end_call(upstream, 0, self._stage_started, final=True)
        message = (
            f"Container {upstream.container_name} of endpoint {upstream.endpoint_name}: {why}, "
            f"after {self.parts} part(s)."
        )
        self._end_stream(eventstream.model_stream_error(eventstream.TIME_EXCEEDED, message), 0)

    def client_gone(self) -> bool:
        if self._state == _SENT and self.reader is not None:
            # Mid-stream (or waiting for the last stage's first byte): nobody will read the
            # rest, so the container's connection is closed now rather than drained.
            self._abort_container()
            self._end_call(self.chain[self._stage], 0, self._stage_started, final=True)
            self._drop(499)
            return False
        return super().client_gone()

    def abandon(self) -> None:
        if self.reader is not None:
            self._abort_container()
            self._state = _DONE
            return
        super().abandon()

    # helpers
    def _abort_container(self) -> None:
        reader = self.reader
        self.reader = None
        conn = self._conn
        self._conn = None
        if reader is not None:
            reader.detach()
        if conn is not None:
            conn.abort()

    def _open(self, reader: _StreamReader) -> None:
        self.streaming = True
        self.first_part_at = _clock()
        self.deadline = min(self.first_part_at + self.silence_limit, self.ends_at)
        fields = [_EVENT_STREAM_TYPE, _CHUNKED]
        if reader.content_type is not None:
            fields.append(b"X-Amzn-SageMaker-Content-Type: " + reader.content_type + b"\r\n")
        if reader.custom_attributes is not None:
            fields.append(
                b"X-Amzn-SageMaker-Custom-Attributes: " + reader.custom_attributes + b"\r\n"
            )
        self.client.stream_head(self, b"".join(fields))

    def _end_stream(self, last_event: bytes, status: int) -> None:
        self._state = _DONE
        self.deadline = _INF
        client = self.client
        transport = client.transport
        if transport is not None and not client.closing:
            transport.write((_chunk(last_event) if last_event else b"") + _LAST_CHUNK)
        self._record_stream(status)
        client.stream_finished(self, 200)

    def _fail_before_stream(self, error: ModelError | InternalFailure) -> None:
        self._record_stream(0)
        self._state = _DONE
        self.deadline = _INF
        self._finish_error(error)

    def _drop(self, status: int) -> None:
        """The client is gone: account the stream, keep nothing."""
        if self._orphaned:
            self.client.server.orphans.discard(self)
        self._state = _DONE
        self.deadline = _INF
        self._record_stream(status)
        self.client.stream_finished(self, status)

    def _record_stream(self, status: int) -> None:
        observer = self.chain[self._stage].stream_observer
        if observer is None:
            return
        now = _clock()
        first = self.first_part_at - self._stage_started if self.streaming else 0.0
        observer.record(status if status else self.model_status, first, now - self.received_at, now)


class _StreamReader(asyncio.Protocol):
    """Reads the last stage's response on the pooled connection while a stream runs."""

    def __init__(self, stream: StreamInvocation, conn: UpstreamConnection, max_error: int) -> None:
        self.stream: StreamInvocation | None = stream
        self.conn = conn
        self.max_error = max_error
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.content_type: bytes | None = None
        self.custom_attributes: bytes | None = None
        self.headers_done = False
        self.framed = False
        self.done = False
        self.got_bytes = False
        self.error_body: list[bytes] = []
        self.error_size = 0
        self.failure: str | None = None
        #: Body bytes of the current read, not yet relayed.
        self.pending: list[bytes] = []
        #: An exception of the router's own code raised inside a parser callback.
        self.fault: Exception | None = None

    def detach(self) -> None:
        """Whatever happens on the connection from now on is not the stream's business."""
        self.stream = None

    def pause(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.pause_reading()

    def resume(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.resume_reading()

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is None or self.done:
            return
        self.got_bytes = True
        stream.stream_bytes(_clock())
        try:
            self.parser.feed_data(data)
            self._flush()
        except httptools.HttpParserUpgrade:
            self._fail("the container switched protocols (101) although nobody asked it to")
        except httptools.HttpParserError as exc:
            if self.fault is not None:
                self._internal(self.fault)
            else:
                self._fail(self.failure or f"invalid HTTP response ({exc})")
        except Exception as exc:  # a fault of the router's own: the stream still ends
            self._internal(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        stream = self.stream
        if stream is not None and not self.done:
            if self.headers_done and not self.framed:
                # A response delimited by the connection's close ends here.
                self.on_message_complete()
            else:
                self.stream = None
                state = "in the middle of its response" if self.got_bytes else "before answering"
                stream.stream_failed(
                    f"the container closed the connection {state}", connection_lost=True
                )
        # The pool still counts the connection: its own protocol accounts the close.
        self.conn.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers_done = False
        self.framed = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value
        elif lower == b"content-length":
            self.framed = True
        elif lower == b"transfer-encoding":
            self.framed = value.rstrip(b" \t").lower().endswith(b"chunked")
        elif lower == b"x-amzn-sagemaker-custom-attributes":
            self.custom_attributes = value

    def on_headers_complete(self) -> None:
        self.headers_done = True
        status = self.status = self.parser.get_status_code()
        if status in (204, 304) or 100 <= status < 200:
            self.framed = True

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is None:
            return
        if 200 <= self.status < 300:
            # Relayed once the read is parsed: one event per read, not per chunk of it (a
            # container writing many small chunks would otherwise cost an event each).
            self.pending.append(body)
            return
        self.error_size += len(body)
        if self.error_size > self.max_error:
            self.failure = f"the error response is larger than the {self.max_error}-byte limit"
            raise ValueError(self.failure)
        self.error_body.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            # An interim 1xx: the final answer follows.
            self.reason = b""
            self.content_type = None
            self.custom_attributes = None
            return
        try:
            self._flush()
        except Exception as exc:
            # httptools re-raises it as a parser error: keep what it was.
            self.fault = exc
            raise
        stream = self.stream
        self.done = True
        self.stream = None
        if stream is not None:
            reusable = self.framed and self.parser.should_keep_alive()
            stream.stream_complete(self, reusable)

    def _flush(self) -> None:
        pending = self.pending
        if pending and self.stream is not None:
            self.pending = []
            self.stream.stream_part(self, pending[0] if len(pending) == 1 else b"".join(pending))

    # failures
    def _fail(self, detail: str) -> None:
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.stream_failed(detail, connection_lost=False)

    def _internal(self, exc: Exception) -> None:
        _log.error("relaying a response stream failed", exc_info=exc)
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.internal_failure(exc)
