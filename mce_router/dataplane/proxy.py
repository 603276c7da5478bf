"""The hot path: runtime API listener, routing, upstream keep-alive pools, Serial chaining.

Everything a request touches lives in this module, built from callbacks rather than a task per
request (one ``asyncio.Protocol`` per client connection, one per upstream connection, parsed by
httptools/llhttp). Everything that can be computed per configuration load is computed when the
routing table is built: path keys, header blocks, error bodies.

Request flow: ``ClientConnection`` parses a request -> ``Invocation`` picks the upstream from the
current ``RoutingTable`` -> ``ConnectionPool.acquire`` hands it an ``UpstreamConnection`` ->
the container's response comes back through ``Invocation.upstream_response`` -> the next Serial
stage, or the response to the client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

import httptools
from mypy_extensions import mypyc_attr

from ..config import Limits
from ..errors import (
    AuthError,
    EndpointNotFound,
    HeadersTooLarge,
    InvocationError,
    MalformedRequest,
    ModelError,
    ModelNotReady,
    PayloadTooLarge,
    RequestTimeout,
    RouterError,
    ServiceUnavailable,
    UnknownOperation,
    ValidationError,
    wire_error,
)
from ..security import Guard, PendingSignature
from . import headers as hdr
from .response import COMPLETE, FAILED, CompleteOutcome, Outcome, new_reader
from .stats import CallStats, RouterAnswers

# Latencies use perf_counter: uvloop's loop.time() only advances in whole milliseconds. Final: the
# compiled module holds it in a C static instead of looking it up in its globals on every read.
# One read serves every deadline and measurement of the same instant (a read costs ~70 ns).
_clock: Final = time.perf_counter
_random_bits: Final = random.getrandbits

# ----------------------------------------------------------------------------------------------
# Routing table: immutable, built per configuration load, swapped atomically by the router.
# ----------------------------------------------------------------------------------------------


class TableMirror(Protocol):
    """Copies the routing state into other processes (``mce_router.workers``: data-plane
    worker processes serving the same port). Told of every change; ``synced`` returns once
    every copy applied all changes so far, so that a container taken out of the table may be
    stopped without any process still routing to it."""

    def table_changed(self, table: RoutingTable) -> None: ...

    def availability_changed(self, upstream: Upstream) -> None: ...

    async def synced(self) -> None: ...


class Upstream:
    """One running container as the proxy sees it: address, availability, pool, labels."""

    __slots__ = (
        "available",
        "container_name",
        "endpoint_name",
        "host",
        "host_header",
        "instance_id",
        "log_path",
        "log_stream_arn",
        "mirror",
        "observer",
        "pool",
        "port",
        "remote_busy",
        "request_head",
        "slot",
        "stream_observer",
        "unavailable_reason",
        "variant_name",
    )

    def __init__(
        self,
        *,
        endpoint_name: str,
        variant_name: str,
        instance_id: str,
        container_name: str,
        host: str,
        port: int,
        log_stream_arn: str,
        log_path: str,
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.endpoint_name = endpoint_name
        self.variant_name = variant_name
        self.instance_id = instance_id
        self.container_name = container_name
        self.host = host
        self.port = port
        self.log_stream_arn = log_stream_arn
        self.log_path = log_path
        self.host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        # Containers start unavailable; the health monitor opens them after the first good ping.
        self.available = False
        self.unavailable_reason = "the container has not passed its ping health check yet"
        self.pool = ConnectionPool(self, limits, loop)
        #: ContainerLatency and friends of this container (set by the metrics when the routing
        #: table is built). A concrete compiled class, not a protocol: the call is then a
        #: direct C call with unboxed floats, a third of what a method call on a protocol cost.
        self.observer: CallStats | None = None
        #: Response streams of this container: latency is the time to first byte, overhead
        #: the stream's whole duration (metrics.py exports them under those names).
        self.stream_observer: CallStats | None = None
        self.request_head = b"POST /invocations HTTP/1.1\r\n" + self.host_header
        #: Set by a TableMirror: this container's number in the worker processes' copies, and
        #: the calls to it they have open or queued (what a drain waits on, with the pool's).
        self.mirror: TableMirror | None = None
        self.slot = 0
        self.remote_busy = 0

    def mark_available(self) -> None:
        self.available = True
        if self.mirror is not None:
            self.mirror.availability_changed(self)

    def mark_unavailable(self, reason: str) -> None:
        """Stop routing to this container and drop its connections (they point at a dead peer)."""
        self.available = False
        self.unavailable_reason = reason
        self.pool.close_idle()
        if self.mirror is not None:
            self.mirror.availability_changed(self)

    def idle(self) -> bool:
        """No call to this container is open or waiting, here or in a worker process."""
        pool = self.pool
        return pool.open_count == 0 and pool.waiting_count == 0 and self.remote_busy == 0

    def __repr__(self) -> str:
        return f"<Upstream {self.endpoint_name}/{self.container_name} {self.host}:{self.port}>"


@dataclass(frozen=True, slots=True)
class InstanceRoute:
    """One instance of a variant: all its containers, by hostname and in pipeline order."""

    instance_id: str
    chain: tuple[Upstream, ...]
    by_name: dict[str, Upstream]


@dataclass(slots=True)
class VariantRoute:
    name: str
    weight: float
    instances: tuple[InstanceRoute, ...]
    #: The variant's model runs Direct (route by target hostname) rather than Serial.
    direct: bool
    #: Pre-built response header naming the variant that served the request.
    response_header: bytes = b""
    #: Status line and variant header of every successful response, built once.
    ok_head: bytes = b""
    #: ModelLatency and OverheadLatency of this variant (see Upstream.observer).
    observer: CallStats | None = None
    #: Requests of this variant being served now; deployments drain on it. With worker
    #: processes, the sum of theirs (reported by mce_router.workers).
    in_flight: int = 0
    #: This variant's number in worker processes' copies of the table (0: none yet).
    slot: int = 0
    _round_robin: itertools.cycle[InstanceRoute] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.response_header = b"x-Amzn-Invoked-Production-Variant: " + self.name.encode() + b"\r\n"
        self.ok_head = b"HTTP/1.1 200 OK\r\n" + self.response_header
        self._round_robin = itertools.cycle(self.instances)

    def next_instance(self) -> InstanceRoute:
        return next(self._round_robin)


@dataclass(slots=True)
class EndpointRoute:
    name: str
    variants: tuple[VariantRoute, ...]
    variants_by_name: dict[str, VariantRoute] = field(init=False)
    _cumulative_weights: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.variants_by_name = {v.name: v for v in self.variants}
        self._cumulative_weights = list(itertools.accumulate(v.weight for v in self.variants))

    def pick_variant(self) -> VariantRoute:
        if len(self.variants) == 1:
            return self.variants[0]
        total = self._cumulative_weights[-1]
        if total <= 0:
            return random.choice(self.variants)
        return random.choices(self.variants, cum_weights=self._cumulative_weights)[0]


def invocation_path(endpoint_name: str) -> bytes:
    """The path of InvokeEndpoint on ``endpoint_name``, as boto3 sends it."""
    return f"/endpoints/{endpoint_name}/invocations".encode()


#: The runtime API's invocation paths (``/endpoints/{name}/<action>``), all POST.
_INVOCATION_ACTIONS: Final = (b"invocations", b"invocations-response-stream", b"async-invocations")
#: InvokeEndpointWithResponseStream: served by streaming.py, off the hot path.
_STREAM_ACTION: Final = b"invocations-response-stream"
#: Those of them this router refuses, with the message a ValidationError carries (boto3 raises
#: ``client.exceptions.ValidationError``); answered before any endpoint lookup.
_UNSUPPORTED_INVOCATIONS: Final = {
    b"async-invocations": (
        "Asynchronous inference (InvokeEndpointAsync) is not supported by this router: it has "
        "no S3-compatible store to read the InputLocation from and write the output to. Call "
        "InvokeEndpoint (synchronous, bodies up to 6 MiB) with the request body instead."
    ),
}


def endpoint_path(path: bytes) -> tuple[str, bytes] | None:
    """``/endpoints/{name}/{action}`` (no query string) -> (name, action); None for any other
    path. The one place the runtime API's paths are taken apart."""
    parts = path.split(b"/")
    if len(parts) == 4 and parts[0] == b"" and parts[1] == b"endpoints":
        return parts[2].decode("latin-1"), parts[3]
    return None


class RoutingTable:
    """Immutable map from the raw request path to an endpoint; replaced whole, never mutated."""

    __slots__ = ("by_name", "by_path")

    def __init__(self, endpoints: Iterable[EndpointRoute] = ()) -> None:
        #: Lower-cased names: endpoint names are unique ignoring case, as in SageMaker.
        self.by_name: dict[str, EndpointRoute] = {e.name.lower(): e for e in endpoints}
        # Keyed by the exact bytes boto3 sends, so the common case is one dict lookup.
        self.by_path: dict[bytes, EndpointRoute] = {
            invocation_path(e.name): e for e in self.by_name.values()
        }

    def with_endpoint(self, endpoint: EndpointRoute) -> RoutingTable:
        others = [e for e in self.by_name.values() if e.name.lower() != endpoint.name.lower()]
        return RoutingTable([*others, endpoint])

    def without_endpoint(self, name: str) -> RoutingTable:
        return RoutingTable(e for e in self.by_name.values() if e.name.lower() != name.lower())


# ----------------------------------------------------------------------------------------------
# Upstream side: one protocol per connection, one pool per container.
# ----------------------------------------------------------------------------------------------


class UpstreamFailure(Exception):
    """Why a container call produced no complete response (never sent to a client as such)."""

    def __init__(self, detail: str, *, before_response: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.before_response = before_response


#: Bytes a container may send without a single body byte (its response head, chunk framing, a
#: trailer section) before the call fails: llhttp itself puts no bound on a response head.
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_got_bytes",
        "_reader",
        "_stall_bytes",
        "_waiter",
        "_write",
        "closed",
        "idle_since",
        "pool",
        "reusable",
        "transport",
    )

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        #: Parses the container's responses (response.py: in C when built, else httptools).
        self._reader = new_reader(pool.max_response_bytes)
        # Bound once: a method call on a foreign object looks the method up every time.
        self._write: Callable[[bytes], None] = _write_nowhere
        self._waiter: Invocation | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._got_bytes = False
        #: Bytes read since the last one that carried body: head, chunk framing, trailers.
        self._stall_bytes = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._write = self.transport.write

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._waiter is None:
            # Bytes while idle: the container broke the protocol; never reuse this connection.
            self.abort()
            return
        outcome = self._reader.feed(data)
        kind: int = outcome[0]
        if kind == COMPLETE:
            # Parsed whole, so bytes after the answer (a second response) were seen before
            # anyone can reuse this connection.
            self._deliver(outcome)
        elif kind == FAILED:
            self._fail(outcome[1])
        elif not outcome[1]:
            # Not one body byte in this read: head, chunk framing or trailers, all of which
            # llhttp would take without limit. Bound them (a read with body resets this).
            self._stall_bytes += len(data)
            if self._stall_bytes > MAX_RESPONSE_HEAD_BYTES:
                self._fail(
                    f"the response head (or trailer section) is larger than the "
                    f"{MAX_RESPONSE_HEAD_BYTES}-byte limit"
                )
        else:
            self._stall_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is not None:
            outcome = self._reader.finish()
            if outcome[0] == COMPLETE:
                # A response delimited by connection close (HTTP/1.0 style) ends here.
                self._deliver(outcome)
            else:
                self._waiter = None
                state = "in the middle of its response" if self._got_bytes else "before answering"
                waiter.upstream_failed(
                    self,
                    UpstreamFailure(
                        f"the container closed the connection {state}",
                        before_response=not self._got_bytes,
                    ),
                )
        self.pool.connection_closed(self)
        self.transport = None
        self._write = _write_nowhere

    def _deliver(self, outcome: Outcome) -> None:
        complete = cast(CompleteOutcome, outcome)
        _, status, reason, content_type, custom_attributes, body, body_size, reusable = complete
        if not reusable:
            self.reusable = False
        waiter = self._waiter
        self._waiter = None
        self._got_bytes = False
        self._stall_bytes = 0
        if waiter is not None:
            waiter.upstream_response(
                self,
                UpstreamResponse(status, reason, content_type, custom_attributes, body, body_size),
            )

    # used by Invocation / ConnectionPool
    def send(self, waiter: Invocation, head: bytes, body: list[bytes]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        if len(body) == 1 and len(body[0]) < 65536:
            self._write(head + body[0])
        else:
            self.transport.writelines([head, *body])

    def abort(self) -> None:
        """Close at once; used for timeouts and protocol violations."""
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _fail(self, detail: str) -> None:
        waiter = self._waiter
        self._waiter = None
        self.abort()
        if waiter is not None:
            waiter.upstream_failed(self, UpstreamFailure(detail, before_response=False))


def _write_nowhere(data: bytes) -> None:
    """The write method of a protocol without a transport (not connected yet, or lost)."""
    raise ConnectionError("not connected")


def _raised_in_callback(exc: httptools.HttpParserError) -> BaseException | None:
    """What one of our parser callbacks raised: httptools never lets it through as such but
    raises ``HttpParserCallbackError`` with the original exception as its ``__context__``."""
    if isinstance(exc, httptools.HttpParserCallbackError):
        return exc.__context__
    return None


class UpstreamResponse:
    __slots__ = ("body", "body_size", "content_type", "custom_attributes", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        content_type: bytes | None,
        custom_attributes: bytes | None,
        body: list[bytes],
        body_size: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.custom_attributes = custom_attributes
        self.body = body
        self.body_size = body_size


class ConnectionPool:
    """Keep-alive connections to one container: idle LIFO stack, a cap, a waiting queue.

    The pool is the only owner of connection lifecycle: connections are opened here, come back
    through :meth:`release` (reused or closed) or :meth:`connection_closed`, and are swept by one
    idle timer per pool.
    """

    __slots__ = (
        "_idle",
        "_idle_timer",
        "_loop",
        "_waiting",
        "connect_timeout",
        "idle_timeout",
        "max_connections",
        "max_idle",
        "max_queued",
        "max_response_bytes",
        "open_count",
        "upstream",
    )

    def __init__(self, upstream: Upstream, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self._loop = loop
        self._idle: list[UpstreamConnection] = []
        self._waiting: collections.deque[Invocation] = collections.deque()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.open_count = 0
        self.max_connections = limits.max_connections_per_container
        self.max_idle = limits.max_idle_connections_per_container
        self.max_queued = limits.max_queued_per_container
        self.max_response_bytes = limits.max_response_body_bytes
        self.idle_timeout = limits.idle_connection_timeout_seconds
        self.connect_timeout = limits.connect_timeout_seconds

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def is_queued(self, waiter: Invocation) -> bool:
        """Whether ``waiter`` waits for a busy connection (not for one being opened for it)."""
        return waiter in self._waiting

    @property
    def busy_count(self) -> int:
        """Calls open on a connection or waiting for one."""
        return self.open_count - len(self._idle) + len(self._waiting)

    def acquire(self, waiter: Invocation, *, fresh: bool = False) -> None:
        """Give ``waiter`` a connection now, or as soon as one is free; ``fresh`` skips idle."""
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if conn.reusable and not conn.closed:
                waiter.connection_ready(conn, reused=True)
                return
        if self.open_count < self.max_connections:
            self._open(waiter)
        elif len(self._waiting) < self.max_queued:
            self._waiting.append(waiter)
        else:
            waiter.pool_rejected(
                ModelNotReady(
                    f"Container {self.upstream.container_name} has {self.max_connections} "
                    f"requests in flight and {self.max_queued} waiting; retry later or raise "
                    "limits.max_connections_per_container."
                )
            )

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Take back ``conn`` after a call; ``now`` is the current perf_counter instant."""
        if not conn.reusable or conn.closed:
            conn.close()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter.wants_connection():
                waiter.connection_ready(conn, reused=True)
                return
        if len(self._idle) >= self.max_idle or not self.upstream.available:
            conn.close()
            return
        conn.idle_since = now
        self._idle.append(conn)
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_later(self.idle_timeout, self._sweep_idle)

    def connection_closed(self, conn: UpstreamConnection) -> None:
        self.open_count -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        self._serve_waiting()

    def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def fail_waiting(self, error: InvocationError) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        for waiter in waiting:
            waiter.pool_rejected(error)

    def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.close_idle()

    def _serve_waiting(self) -> None:
        while self._waiting and self.open_count < self.max_connections:
            waiter = self._waiting.popleft()
            if waiter.wants_connection():
                self._open(waiter)

    def _open(self, waiter: Invocation) -> None:
        self.open_count += 1
        task = self._loop.create_task(self._connect())
        task.add_done_callback(lambda t: self._connected(t, waiter))

    async def _connect(self) -> UpstreamConnection:
        upstream = self.upstream
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await self._loop.create_connection(
                lambda: UpstreamConnection(self), upstream.host, upstream.port
            )
        return protocol

    def _connected(self, task: asyncio.Task[UpstreamConnection], waiter: Invocation) -> None:
        if task.cancelled():
            self.open_count -= 1
            return
        exc = task.exception()
        if exc is not None:
            self.open_count -= 1
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            waiter.upstream_failed(
                None, UpstreamFailure(f"connecting failed: {reason}", before_response=True)
            )
            self._serve_waiting()
            return
        conn = task.result()
        if waiter.wants_connection():
            waiter.connection_ready(conn, reused=False)
        else:
            self.release(conn, _clock())

    def _sweep_idle(self) -> None:
        self._idle_timer = None
        cutoff = _clock() - self.idle_timeout
        keep: list[UpstreamConnection] = []
        for conn in self._idle:
            if conn.idle_since <= cutoff or conn.closed:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._idle_timer = self._loop.call_later(self.idle_timeout / 2, self._sweep_idle)


# ----------------------------------------------------------------------------------------------
# One invocation: Direct (one stage) or Serial (a chain of stages), driven by callbacks.
# ----------------------------------------------------------------------------------------------

_STATE_WAITING: Final = 0  # waiting for a connection
_STATE_SENT: Final = 1  # request written, waiting for the response
_STATE_DONE: Final = 2


class InvocationHooks(Protocol):
    """Observers of every invocation (OpenTelemetry spans, the hop log: ``mce_router.tracing``).
    The server holds None when none is configured: the hot path then pays one attribute test
    per call site and nothing else."""

    def started(self, invocation: Invocation) -> None:
        """Before the first stage; ``invocation.hook_state`` is the hooks' to set."""

    def stage_started(self, invocation: Invocation, upstream: Upstream) -> bytes:
        """The request to ``upstream`` is about to be sent (again, after a retry on a fresh
        connection); returns the trace-context header lines to send with it."""
        ...

    def stage_ended(
        self,
        invocation: Invocation,
        upstream: Upstream,
        status: int,
        latency: float,
        response: UpstreamResponse | None,
    ) -> None:
        """The call ended: ``status`` 0 and no ``response`` when the container gave none."""

    def finished(self, invocation: Invocation, status: int, error: RouterError | None) -> None:
        """The answer is decided: ``status`` 200 with no error, the error's otherwise, 0 when
        the client went away while the request waited for a connection."""


# Response streams (streaming.py, not compiled) subclass it; calls on it stay vtable calls.
@mypyc_attr(allow_interpreted_subclasses=True)
class Invocation:
    __slots__ = (
        "_attempt_reused",
        "_conn",
        "_connect_grace",
        "_final_latency",
        "_final_observer",
        "_final_overhead",
        "_orphaned",
        "_stage",
        "_stage_started",
        "_state",
        "accept_block",
        "body",
        "body_size",
        "chain",
        "client",
        "content_type",
        "deadline",
        "forward_block",
        "hook_state",
        "hooks",
        "keep_alive",
        "last_mark",
        "model_seconds",
        "model_status",
        "received_at",
        "trace_block",
        "variant",
    )

    def __init__(
        self,
        client: ClientConnection,
        variant: VariantRoute,
        chain: tuple[Upstream, ...],
        content_type: bytes | None,
        forward_block: bytes,
        accept_block: bytes,
        body: list[bytes],
        body_size: int,
        keep_alive: bool,
        received_at: float,
        trace_block: bytes,
    ) -> None:
        self.client = client
        self.variant = variant
        self.chain = chain
        self.content_type = content_type
        self.forward_block = forward_block
        self.accept_block = accept_block
        self.body = body
        self.body_size = body_size
        self.keep_alive = keep_alive
        self.received_at = received_at
        #: ``traceparent`` (and ``tracestate``) lines sent to every container: the client's,
        #: or (given b"") the trace the router starts for this request in start().
        self.trace_block = trace_block
        self.hooks: InvocationHooks | None = client.server.hooks
        self.hook_state: object = None
        self.model_seconds = 0.0
        self.model_status = -1  # no container called yet
        # Metrics bookkeeping: the last instant accounted for, and the final call's numbers,
        # which get the time spent answering the client added when the response is written.
        self.last_mark = received_at
        self._final_observer: CallStats | None = None
        self._final_latency = 0.0
        self._final_overhead = 0.0
        self._stage = 0
        self._state = _STATE_WAITING
        self._conn: UpstreamConnection | None = None
        self._stage_started = 0.0
        self._attempt_reused = False
        #: The queue wait passed while a connection was being opened for this call, and the
        #: deadline moved to the connect timeout instead (once per wait).
        self._connect_grace = False
        self._orphaned = False
        # perf_counter instant after which the server's sweep times this invocation out; it
        # also bounds the wait for a free connection.
        self.deadline = _NO_DEADLINE  # set when a stage waits for or calls a container

    def start(self, now: float) -> None:
        if self.hooks is not None:
            self.hooks.started(self)  # (spans: may start the trace, with the span's own id)
        if not self.trace_block:
            self.trace_block = self.client.server.new_trace_block()
        self._call_stage(now)

    @property
    def stage(self) -> int:
        """The index in ``chain`` of the container being called (the last one called)."""
        return self._stage

    def _call_stage(self, now: float) -> None:
        upstream = self.chain[self._stage]
        if not upstream.available:
            self._finish_error(
                ServiceUnavailable(
                    f"Container {upstream.container_name} of endpoint {upstream.endpoint_name} "
                    f"is not available: {upstream.unavailable_reason}. Retry later."
                )
            )
            return
        self._state = _STATE_WAITING
        self._connect_grace = False
        self.deadline = now + self.client.server.queue_wait
        upstream.pool.acquire(self)

    # ConnectionPool callbacks
    def wants_connection(self) -> bool:
        return self._state == _STATE_WAITING

    def connection_ready(self, conn: UpstreamConnection, *, reused: bool) -> None:
        upstream = self.chain[self._stage]
        server = self.client.server
        hooks = self.hooks
        trace = self.trace_block if hooks is None else hooks.stage_started(self, upstream)
        head = b"".join(
            (
                upstream.request_head,
                self.forward_block,
                trace,
                server.content_type_line(self.content_type),
                self.accept_block if self._stage + 1 == len(self.chain) else b"",
                server.content_length_line(self.body_size),
                b"\r\n",
            )
        )
        self._conn = conn
        self._attempt_reused = reused
        self._state = _STATE_SENT
        # ContainerLatency starts here, after the router's own work for this stage (that is
        # OverheadLatency): a clock read of its own, not the instant the request arrived.
        started = self._stage_started = _clock()
        self.deadline = started + server.invocation_timeout
        self.send_request(conn, head)

    def send_request(self, conn: UpstreamConnection, head: bytes) -> None:
        """Write this stage's request (a response stream reads its last stage itself)."""
        conn.send(self, head, self.body)

    def pool_rejected(self, error: InvocationError) -> None:
        if self._state == _STATE_WAITING:
            self._finish_error(error)

    # UpstreamConnection callbacks
    def upstream_response(self, conn: UpstreamConnection, response: UpstreamResponse) -> None:
        if self._state != _STATE_SENT or conn is not self._conn:
            conn.pool.release(conn, _clock())
            return
        self._conn = None
        upstream = self.chain[self._stage]
        status = response.status
        ok = 200 <= status < 300
        final = not ok or self._is_last()
        now = self._end_call(upstream, status, self._stage_started, final=final, response=response)
        conn.pool.release(conn, now)
        if not ok:
            self._finish_error(_model_error(upstream, response))
            return
        if not self._is_last():
            # Serial: this stage's response is the next stage's request.
            self._stage += 1
            self.body = response.body
            self.body_size = response.body_size
            self.content_type = response.content_type
            self._call_stage(now)
            return
        self._finish_ok(response)

    def upstream_failed(self, conn: UpstreamConnection | None, failure: UpstreamFailure) -> None:
        if self._state == _STATE_DONE or (conn is not None and conn is not self._conn):
            return
        upstream = self.chain[self._stage]
        self._conn = None
        if conn is not None and self._attempt_reused and failure.before_response:
            # A kept-alive connection the container had already closed: the request never
            # reached a live socket, so one retry on a fresh connection is safe. It is a new
            # wait for a connection: the failed attempt's deadline may be close.
            self._state = _STATE_WAITING
            self._attempt_reused = False
            self._connect_grace = False
            self.deadline = _clock() + self.client.server.queue_wait
            upstream.pool.acquire(self, fresh=True)
            return
        # A failed connect never started a call: it counts as an instant failed call.
        started = self._stage_started if conn is not None else _clock()
        self._end_call(upstream, 0, started, final=True)
        self._finish_error(_broken_call_error(upstream, failure.detail))

    def timed_out(self) -> None:
        """Called by the server's sweep once ``deadline`` has passed."""
        upstream = self.chain[self._stage]
        if self._state == _STATE_WAITING:
            pool = upstream.pool
            if not pool.is_queued(self):
                # Not queued behind busy connections: one is being opened for this call (or the
                # loop stalled before its callback ran). The queue wait does not bound that;
                # the connect timeout does, and ends the call with what went wrong.
                if not self._connect_grace:
                    self._connect_grace = True
                    self.deadline = _clock() + pool.connect_timeout
                    return
                self.upstream_failed(
                    None, UpstreamFailure("connecting failed: timed out", before_response=True)
                )
                return
            wait = self.client.server.queue_wait
            self._finish_error(
                ModelNotReady(
                    f"Container {upstream.container_name} had no free connection within "
                    f"{wait:g} s: all {upstream.pool.max_connections} are busy. Retry later."
                )
            )
            return
        if self._state != _STATE_SENT:
            return
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abort()
        self._end_call(upstream, 0, self._stage_started, final=True)
        self._finish_error(
            _broken_call_error(
                upstream,
                f"Your invocation timed out while waiting for a response from container "
                f"{upstream.container_name} (limit {self.client.server.invocation_timeout:g} s)",
                message_is_full=True,
            )
        )

    def _is_last(self) -> bool:
        return self._stage + 1 == len(self.chain)

    def _end_call(
        self,
        upstream: Upstream,
        status: int,
        started: float,
        *,
        final: bool,
        response: UpstreamResponse | None = None,
    ) -> float:
        """Account a finished container call; returns the instant it ended."""
        now = _clock()
        latency = now - started
        if self.hooks is not None:
            self.hooks.stage_ended(self, upstream, status, latency, response)
        overhead = started - self.last_mark
        self.last_mark = now
        self.model_seconds += latency
        self.model_status = status
        observer = upstream.observer
        if observer is not None:
            if final:
                self._final_observer = observer
                self._final_latency = latency
                self._final_overhead = overhead
            else:
                # status: the container's HTTP status, 0 when it gave none (refused, broken,
                # timed out); overhead: the router time attributed to this stage.
                observer.record(status, latency, overhead, now)
        return now

    def record(self, client_status: int) -> float:
        """Report metrics once the response has been handed to the client socket; returns the
        instant that happened."""
        now = _clock()
        final = self._final_observer
        if final is not None:
            overhead = self._final_overhead + now - self.last_mark
            final.record(self.model_status, self._final_latency, overhead, now)
        observer = self.variant.observer
        if observer is not None:
            model_status = self.model_status if self.model_status >= 0 else client_status
            held = now - self.received_at
            # The status of the last container call (0: no valid answer), or the router's own
            # when no container was called (503, 429); latency: ModelLatency.
            observer.record(model_status, self.model_seconds, held - self.model_seconds, now)
        return now

    def client_gone(self) -> bool:
        """The client disconnected. A request still waiting for a connection is dropped; one
        already sent runs to its end (the connection stays clean for reuse and the container
        never sees half a request). Returns True when the caller must keep watching it."""
        if self._state == _STATE_WAITING:
            self._state = _STATE_DONE
            self.client.server.in_flight -= 1
            self.variant.in_flight -= 1
            if self.hooks is not None:
                self.hooks.finished(self, 0, None)
            return False
        if self._state == _STATE_SENT:
            self._orphaned = True
            return True
        return False

    def client_drained(self) -> None:
        """The client's write buffer went below its low-water mark (a stream resumes reading)."""

    def abandon(self) -> None:
        """Shutdown: give up on a container call whose client has gone."""
        if self._state == _STATE_SENT and self._conn is not None:
            conn, self._conn = self._conn, None
            self._state = _STATE_DONE
            conn.abort()

    def _finish_ok(self, response: UpstreamResponse) -> None:
        self._state = _STATE_DONE
        if self.hooks is not None:
            self.hooks.finished(self, 200, None)
        if self._orphaned:
            self.client.server.orphans.discard(self)
        self.client.send_invocation_response(self, response)

    def _finish_error(self, error: RouterError) -> None:
        self._state = _STATE_DONE
        if self.hooks is not None:
            self.hooks.finished(self, wire_error(error, "runtime").status, error)
        if self._orphaned:
            self.client.server.orphans.discard(self)
        self.client.send_invocation_error(self, error)


def _log_hint(upstream: Upstream) -> str:
    return f" See the container log at {upstream.log_path}." if upstream.log_path else ""


def _model_error(upstream: Upstream, response: UpstreamResponse) -> ModelError:
    status = response.status
    original = b"".join(response.body).decode("utf-8", "replace") or response.reason.decode(
        "latin-1"
    )
    kind = "client" if 400 <= status < 500 else "server"
    return ModelError(
        f"Received {kind} error ({status}) from {upstream.container_name} with message "
        f'"{original[:1024]}".{_log_hint(upstream)}',
        container=upstream.container_name,
        original_status=status,
        original_message=original,
        log_stream_arn=upstream.log_stream_arn,
    )


def _broken_call_error(
    upstream: Upstream, detail: str, *, message_is_full: bool = False
) -> ModelError:
    text = detail if message_is_full else f"Container {upstream.container_name}: {detail}"
    return ModelError(
        f'Received server error (0) from {upstream.container_name} with message "{text}".'
        f"{_log_hint(upstream)}",
        container=upstream.container_name,
        original_status=0,
        original_message=text,
        log_stream_arn=upstream.log_stream_arn,
    )


# ----------------------------------------------------------------------------------------------
# Client side: the runtime API listener.
# ----------------------------------------------------------------------------------------------

_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    424: b"Failed Dependency",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class DateHeader:
    """``Date:`` header bytes, refreshed at most once a second (not per request)."""

    __slots__ = ("_expires", "_value")

    def __init__(self) -> None:
        self._value = b""
        self._expires = 0.0

    def get(self, now: float) -> bytes:
        if now >= self._expires:
            self._value = b"Date: " + email.utils.formatdate(usegmt=True).encode() + b"\r\n"
            self._expires = now + 1.0
        return self._value


#: The last two hex digits of a request id and the line end, by value.
_HEX_PAIR_LINES: Final = tuple(b"%02x\r\n" % low for low in range(256))
#: Distinct Content-Length and Content-Type values (up to 128 bytes long) whose header lines a
#: server keeps built: at most a few hundred KiB.
_CACHED_LINES: Final = 1024


#: How a response stream is made: Invocation's constructor arguments, an Invocation subclass.
StreamType = Callable[
    [
        "ClientConnection",
        VariantRoute,
        tuple[Upstream, ...],
        bytes | None,
        bytes,
        bytes,
        list[bytes],
        int,
        bool,
        float,
        bytes,
    ],
    Invocation,
]


class RuntimeServer:
    """Shared state of all client connections of one runtime listener.

    Deadlines (request read, idle keep-alive, invocation timeout) are plain floats on the
    connections and invocations, checked by one sweep timer per server instead of a timer per
    request: arming and cancelling three or four timers per request cost more than routing it.
    """

    #: Sweep period: the resolution of every deadline the data plane enforces.
    SWEEP_SECONDS: Final = 0.1

    def __init__(
        self,
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
        *,
        account_id: str = "000000000000",
        guard: Guard | None = None,
        answers: RouterAnswers | None = None,
        hooks: InvocationHooks | None = None,
        sample_new_traces: bool = True,
        stream_type: StreamType | None = None,
    ) -> None:
        self.loop = loop
        #: Tracing spans and the hop log; None (the default) keeps them off the hot path.
        self.hooks = hooks
        #: The trace-flags of a trace the router starts (a request without a valid
        #: traceparent): sampled (01) or not (00), as configured.
        self._new_trace_flags = b"01" if sample_new_traces else b"00"
        #: Serves InvokeEndpointWithResponseStream (streaming.StreamInvocation, which builds on
        #: this module, hence passed in); None answers those requests with a ValidationError.
        self.stream_type = stream_type
        self.account_id = account_id
        #: Counts the errors the router itself answers; None when metrics are off.
        self.answers = answers
        #: SigV4 + IAM checks; None (auth.mode none) keeps them off the hot path entirely.
        self.guard = guard
        self.table = RoutingTable()
        #: Worker processes' copy of ``table`` and of each container's availability; None
        #: when this process serves the port itself.
        self.mirror: TableMirror | None = None
        self.limits = limits
        self.invocation_timeout = limits.invocation_timeout_seconds
        self.queue_wait = min(limits.max_queue_wait_seconds, limits.invocation_timeout_seconds)
        self.max_connections = limits.max_client_connections
        self.header_timeout = limits.header_read_timeout_seconds
        self.body_timeout = limits.body_read_timeout_seconds
        self.keepalive_timeout = limits.client_keepalive_timeout_seconds
        self.max_body = limits.max_request_body_bytes
        self.max_header_count = limits.max_header_count
        self.max_header_bytes = limits.max_header_bytes
        self.date = DateHeader()
        self.connections: set[ClientConnection] = set()
        #: Invocations whose client went away while a container call was still running; the
        #: sweep still enforces their deadline so a hung container cannot pin a connection.
        self.orphans: set[Invocation] = set()
        self.in_flight = 0
        self.accepting = True
        prefix = os.urandom(6).hex()
        self._request_id_head = f"x-amzn-RequestId: {prefix[:8]}-{prefix[8:12]}-4000-8000-".encode()
        self._request_count = 0
        # Request ids end in the 12-hex-digit request count: its first 10 digits change every
        # 256 requests and are formatted then, the last 2 come from a table.
        self._request_id_block = self._request_id_head + b"%010x" % 0
        #: Header lines built per distinct value, not per request (at most _CACHED_LINES).
        self._content_length_lines: dict[int, bytes] = {}
        self._content_type_lines: dict[bytes, bytes] = {}
        # Status line and headers only: _write_raw adds Content-Length (twice was a framing
        # error that strict clients, llhttp among them, reject).
        self.ping_response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        self._sweeper: asyncio.TimerHandle | None = loop.call_later(self.SWEEP_SECONDS, self._sweep)

    def request_id_line(self) -> bytes:
        count = self._request_count = self._request_count + 1
        low = count & 0xFF
        if low == 0:
            self._request_id_block = self._request_id_head + b"%010x" % (count >> 8)
        return self._request_id_block + _HEX_PAIR_LINES[low]

    def new_trace_block(self) -> bytes:
        """A ``traceparent`` line starting a new trace: random trace and parent ids (from the
        Mersenne Twister: unpredictability is not asked of them, and it costs no system
        call), never all zeros, which W3C Trace Context reserves for invalid."""
        return b"traceparent: 00-%032x-%016x-%s\r\n" % (
            _random_bits(128) or 1,
            _random_bits(64) or 1,
            self._new_trace_flags,
        )

    def content_length_line(self, size: int) -> bytes:
        line = self._content_length_lines.get(size)
        if line is None:
            line = b"Content-Length: %d\r\n" % size
            if len(self._content_length_lines) < _CACHED_LINES:
                self._content_length_lines[size] = line
        return line

    def content_type_line(self, content_type: bytes | None) -> bytes:
        if content_type is None:
            return b""
        line = self._content_type_lines.get(content_type)
        if line is None:
            line = b"Content-Type: " + content_type + b"\r\n"
            if len(self._content_type_lines) < _CACHED_LINES and len(content_type) <= 128:
                self._content_type_lines[content_type] = line
        return line

    def set_table(self, table: RoutingTable) -> None:
        """Route by ``table`` from now on (and tell the worker processes, if any)."""
        self.table = table
        if self.mirror is not None:
            self.mirror.table_changed(table)

    async def synced(self) -> None:
        """Return once every worker process routes by the latest table (at once without)."""
        if self.mirror is not None:
            await self.mirror.synced()

    async def wait_idle(self) -> None:
        while self.in_flight:
            await asyncio.sleep(0.01)

    def protocol_factory(self) -> ClientConnection:
        return ClientConnection(self)

    def close_idle_connections(self) -> None:
        for conn in list(self.connections):
            conn.close_if_idle()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        for invocation in list(self.orphans):
            invocation.abandon()
        self.orphans.clear()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        clock_now = _clock()
        for conn in list(self.connections):
            if conn.deadline <= clock_now:
                conn.deadline_passed()
            current = conn.current
            if current is not None and current.deadline <= clock_now:
                current.timed_out()
        for invocation in list(self.orphans):
            if invocation.deadline <= clock_now:
                invocation.timed_out()
        self._sweeper = self.loop.call_later(self.SWEEP_SECONDS, self._sweep)


class _RequestRejected(Exception):
    """Raised inside parser callbacks to stop parsing; answered, then the connection closes."""

    def __init__(self, error: RouterError) -> None:
        super().__init__(error.message)
        self.error = error


_PENDING_LIMIT: Final = 8  # pipelined requests parsed ahead before reading pauses
#: A Content-Length body with at least this much still to come is taken from the reads as they
#: are (no parser): httptools would copy every body byte into a new bytes object.
_RAW_BODY_MIN: Final = 65536
_NO_DEADLINE: Final = float("inf")


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_chunk_mark",
        "_feed",
        "_field_bytes",
        "_get_method",
        "_head_bytes",
        "_header_count",
        "_headers",
        "_in_head",
        "_keep_alive",
        "_paused",
        "_pending",
        "_problem",
        "_raw_body_left",
        "_raw_headers",
        "_read_at",
        "_serving_pending",
        "_signature",
        "_stopped",
        "_url",
        "_write",
        "_write_blocked",
        "closing",
        "current",
        "deadline",
        "loop",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: RuntimeServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._new_parser()
        self._write: Callable[[bytes], None] = _write_nowhere
        self._pending: collections.deque[_ParsedRequest] = collections.deque()
        self.current: Invocation | None = None
        self._paused = False
        #: Nothing more is parsed from this client (a framing error or an Upgrade).
        self._stopped = False
        #: The transport's write buffer is over its high-water mark: the client reads slower
        #: than it is answered, so no further (pipelined) request is served until it drains.
        self._write_blocked = False
        self._serving_pending = False
        #: With authentication on: every header as received (SigV4 signs them as sent), and
        #: the signature being checked while the body arrives.
        self._raw_headers: list[tuple[bytes, bytes]] | None = None
        self._signature: PendingSignature | None = None
        self.closing = False
        self.deadline = _NO_DEADLINE
        self._read_at = 0.0
        self._in_head = False
        self._head_bytes = 0
        self._field_bytes = 0
        self._chunk_mark = -1
        self._problem: RouterError | None = None
        self._url = b""
        self._headers = hdr.RequestHeaders()
        self._header_count = 0
        self._body: list[bytes] = []
        self._body_size = 0
        #: Body bytes data_received takes as they come, without the parser (_RAW_BODY_MIN).
        self._raw_body_left = 0

    def _new_parser(self) -> None:
        parser = self.parser = httptools.HttpRequestParser(self)
        # Bound once: a method call on a foreign object looks the method up every time.
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._get_method: Callable[[], bytes] = parser.get_method
        self._keep_alive: Callable[[], bool] = parser.should_keep_alive

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= self.server.max_connections:
            # Past the cap (e.g. a slowloris flood): answer 503 and close at once; the connection
            # is never registered, so it costs nothing beyond this callback.
            _, head, body = self._error_response(
                ServiceUnavailable(
                    f"The router holds {self.server.max_connections} client connections already "
                    "(limits.max_client_connections); retry later."
                ),
                None,
            )
            self.closing = True
            self.transport.write(
                head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            )
            self.transport.close()
            return
        self.server.connections.add(self)
        self._write = self.transport.write
        # A new connection owes its first request head within the header deadline (as nginx's
        # client_header_timeout); the longer keep-alive wait applies between requests only.
        self.deadline = _clock() + self.server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        current = self.current
        if current is not None and current.client_gone():
            self.server.orphans.add(current)
        self._pending.clear()
        # This object, its parser (whose callbacks are our bound methods) and the transport
        # form reference cycles that only a full garbage-collection pass frees, which can be
        # minutes away: drop the request data they hold (up to 6 MiB of body) now.
        self._body = []
        self._raw_headers = None
        self._signature = None
        self.transport = None
        self._write = _write_nowhere

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # answered and closing: what the client still sends is discarded
        self._read_at = _clock()  # the base of the deadlines the parser callbacks set
        if self._raw_body_left:
            data = self._take_raw_body(data)
            if not data:
                return
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade:
            # A request with Upgrade (or CONNECT) was parsed and dispatched as plain HTTP: the
            # Upgrade is ignored (RFC 9110 §7.8) and never forwarded. llhttp would hand the
            # rest to "the other protocol"; this router speaks none, so it answers and closes.
            self._close_after_owed_responses()
            return
        except httptools.HttpParserError as exc:
            raised = _raised_in_callback(exc)
            if isinstance(raised, _RequestRejected):
                self._reject(raised.error)
            else:
                self._reject(MalformedRequest(f"Malformed HTTP request: {exc}."))
            return
        if self._in_head:
            # llhttp puts no bound on a request head, and httptools buffers a header line
            # until it ends: bound the reads that are all head. The read in which the head
            # began may also hold the end of an earlier request, so it is not counted here
            # (it is at most one read); on_headers_complete checks the fields exactly.
            if self._head_bytes < 0:
                self._head_bytes = 0
            else:
                self._head_bytes += len(data)
                if self._head_bytes > self.server.max_header_bytes:
                    self._reject(_headers_too_large(self.server))
        elif self._headers.chunked:
            # The same for a chunked body's framing and trailer section: reads that carry no
            # body byte count, a read with body bytes starts over.
            if self._body_size != self._chunk_mark:
                self._chunk_mark = self._body_size
                self._head_bytes = 0
            else:
                self._head_bytes += len(data)
                if self._head_bytes > self.server.max_header_bytes:
                    self._reject(
                        HeadersTooLarge(
                            "The chunk framing or trailer section exceeds the limit of "
                            f"{self.server.max_header_bytes} bytes."
                        )
                    )
        elif self._header_count:
            # A request is still in progress (on_message_complete zeroes the count): past its
            # head and not chunked, so its body has a Content-Length and is still arriving.
            length = self._headers.content_length
            if length is not None and length - self._body_size >= _RAW_BODY_MIN:
                self._raw_body_left = length - self._body_size

    def _take_raw_body(self, data: bytes) -> bytes:
        """Take the body's next bytes from ``data`` as the parser would; return what follows."""
        left = self._raw_body_left
        if len(data) <= left:
            body, rest = data, b""
        else:
            body, rest = data[:left], data[left:]
        self._raw_body_left = left - len(body)
        try:
            self.on_body(body)
            if not self._raw_body_left:
                self.on_message_complete()
                # The old parser still counts on the body it handed over to data_received.
                self._new_parser()
        except _RequestRejected as exc:
            self._reject(exc.error)
            return b""
        return b"" if self.closing else rest

    # flow control: called by the transport around its write-buffer high-water mark
    def pause_writing(self) -> None:
        self._write_blocked = True
        # The client must read what it was sent by the keep-alive deadline.
        self.deadline = _clock() + self.server.keepalive_timeout

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.closing:
            return
        if self.current is not None:
            self.current.client_drained()
        if self._pending and self.current is None:
            self._serve_pending()
        elif not self._in_head and self.current is None:
            self.deadline = _clock() + self.server.keepalive_timeout

    # httptools callbacks: only cheap bookkeeping here, the work happens once per request
    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = -1  # data_received: the head began in this read
        self._field_bytes = 0
        self._url = b""
        self._headers = hdr.RequestHeaders()
        self._header_count = 0
        self._problem = None
        self._body = []
        self._body_size = 0
        if self.server.guard is not None:
            self._raw_headers = []
            self._signature = None
        self.deadline = self._read_at + self.server.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_header_bytes:
            raise _RequestRejected(HeadersTooLarge("The request URL is too long."))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._field_bytes += len(name) + len(value)
        raw = self._raw_headers
        if raw is not None and self._in_head:
            raw.append((name, value))
        code = hdr.classify(name)
        # Not _in_head: a trailer field after a chunked body, discarded (RFC 9110 §6.5.1), so
        # no trailer can pick the target or the Content-Type.
        if code != hdr.IGNORED and self._problem is None and self._in_head:
            problem = self._headers.add_code(code, name, value)
            if problem is not None:
                self._problem = MalformedRequest(problem)

    def on_headers_complete(self) -> None:
        self._in_head = False
        server = self.server
        if (
            self._header_count > server.max_header_count
            or self._field_bytes > server.max_header_bytes
        ):
            raise _RequestRejected(_headers_too_large(server))
        if self._problem is not None:
            raise _RequestRejected(self._problem)
        headers = self._headers
        problem = headers.finish()
        if problem is None and headers.version_sensitive:
            problem = headers.check_version(self.parser.get_http_version())
        if problem is not None:
            raise _RequestRejected(MalformedRequest(problem))
        if headers.chunked:
            self._chunk_mark = -1
            self._head_bytes = 0
        length = headers.content_length
        if length is not None and length > server.max_body:
            too_large = PayloadTooLarge(_too_large_message(length, server.max_body))
            raise _RequestRejected(too_large)
        if server.guard is not None:
            self._begin_signature(server.guard)
        self.deadline = self._read_at + server.body_timeout
        if headers.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body:
            raise _RequestRejected(
                PayloadTooLarge(_too_large_message(self._body_size, self.server.max_body))
            )
        self._body.append(body)
        if self._signature is not None:
            self._signature.update(body)

    def on_message_complete(self) -> None:
        # The instant the read that completed the request arrived (microseconds ago at most).
        received_at = self._read_at
        self.deadline = _NO_DEADLINE
        self._header_count = 0  # no request in progress: an idle timeout closes silently
        if self._signature is not None:
            denied = self._finish_auth()
            if denied is not None:
                keep_alive = self._keep_alive()
                if self.current is None and not self._pending and not self._write_blocked:
                    self._write_error(denied, keep_alive, None)
                else:
                    self._pending.append(_ParsedRequest.rejection(denied, self._url))
                return
        if self.current is None and not self._pending and not self._write_blocked:
            self._dispatch(
                self._get_method(),
                self._url,
                self._headers,
                self._body,
                self._body_size,
                self._keep_alive(),
                received_at,
                received_at,
            )
            return
        self._pending.append(
            _ParsedRequest(
                self._get_method(),
                self._url,
                self._headers,
                self._body,
                self._body_size,
                self._keep_alive(),
                received_at,
            )
        )
        if len(self._pending) >= _PENDING_LIMIT and not self._paused:
            self._pause()

    # authentication and authorization (auth.mode sigv4 only)
    def _begin_signature(self, guard: Guard) -> None:
        path, _, query = self._url.partition(b"?")
        method = self.parser.get_method()
        if path == b"/ping" and method in (b"GET", b"HEAD"):
            return  # the router's own health check stays open, as load balancers expect
        assert self._raw_headers is not None
        try:
            self._signature = guard.begin(method, path, query, self._raw_headers)
        except AuthError as exc:
            # Refused on its head: the body is not read, so the connection closes after this.
            raise _RequestRejected(exc) from None

    def _finish_auth(self) -> AuthError | None:
        """Check the signature over the whole body, then authorize ``sagemaker:InvokeEndpoint``
        on the endpoint and target the request names, before anything is looked up: a denied
        caller gets the same answer whether or not they exist."""
        signature, self._signature = self._signature, None
        guard = self.server.guard
        assert signature is not None and guard is not None
        try:
            credential = signature.finish()
            named = endpoint_path(self._url.partition(b"?")[0])
            if named is not None:
                guard.authorize_invoke(credential, named[0], self._headers.target_container)
        except AuthError as exc:
            return exc
        return None

    # request handling
    def _dispatch(
        self,
        method: bytes,
        url: bytes,
        headers: hdr.RequestHeaders,
        body: list[bytes],
        body_size: int,
        keep_alive: bool,
        received_at: float,
        now: float,
    ) -> None:
        """Route one request; ``now`` is the current instant (``received_at`` for a request
        served as soon as it is read, later for one that waited behind pipelined ones)."""
        route = self.server.table.by_path.get(url)
        if route is None or method != b"POST":
            self._handle_other(
                _ParsedRequest(method, url, headers, body, body_size, keep_alive, received_at)
            )
            return
        try:
            variant, chain = _select(route, headers)
        except RouterError as exc:
            self._write_error(exc, keep_alive, None, route.name)
            return
        invocation = Invocation(
            self,
            variant,
            chain,
            headers.content_type,
            headers.forward_block,
            headers.accept_block,
            body,
            body_size,
            keep_alive,
            received_at,
            headers.trace_block,
        )
        self.current = invocation
        variant.in_flight += 1
        self.server.in_flight += 1
        invocation.start(now)

    def _handle(self, request: _ParsedRequest) -> None:
        if request.error is not None:  # a rejection queued behind pipelined requests
            self._write_error(request.error, False, None, url=request.url)
            return
        self._dispatch(
            request.method,
            request.url,
            request.headers,
            request.body,
            request.body_size,
            request.keep_alive,
            request.received_at,
            _clock(),
        )

    def _handle_other(self, request: _ParsedRequest) -> None:
        path = request.url.split(b"?", 1)[0]
        if path == b"/ping" and request.method in (b"GET", b"HEAD"):
            self._write_raw(self.server.ping_response, b"", request.keep_alive)
            return
        named = endpoint_path(path)
        if named is not None:
            name, action = named
            if action in _INVOCATION_ACTIONS:
                if request.method != b"POST":
                    self._write_error(
                        UnknownOperation("Invocations must use POST."),
                        request.keep_alive,
                        None,
                        url=request.url,
                    )
                    return
                unsupported = _UNSUPPORTED_INVOCATIONS.get(action)
                if unsupported is not None:
                    self._write_error(
                        ValidationError(unsupported), request.keep_alive, None, url=request.url
                    )
                    return
                route = self.server.table.by_name.get(name.lower())
                if route is not None and action == _STREAM_ACTION:
                    self._start_stream(route, request)
                    return
                if route is not None:  # another letter case, or a query string was appended
                    self._handle(request._replace_url(invocation_path(route.name)))
                    return
                self._write_error(
                    EndpointNotFound(
                        f"Endpoint {name} of account {self.server.account_id} not found."
                    ),
                    request.keep_alive,
                    None,
                    url=request.url,
                )
                return
        self._write_error(
            UnknownOperation(
                "Unknown operation: the runtime API serves POST "
                "/endpoints/{EndpointName}/invocations and GET /ping."
            ),
            request.keep_alive,
            None,
            url=request.url,
        )

    def _start_stream(self, route: EndpointRoute, request: _ParsedRequest) -> None:
        stream_type = self.server.stream_type
        if stream_type is None:
            self._write_error(
                ValidationError(
                    "Response streaming (InvokeEndpointWithResponseStream) is not enabled on "
                    "this listener; use InvokeEndpoint."
                ),
                request.keep_alive,
                None,
                url=request.url,
            )
            return
        headers = request.headers
        try:
            variant, chain = _select(route, headers)
        except RouterError as exc:
            self._write_error(exc, request.keep_alive, None, route.name)
            return
        accept = headers.stream_accept
        invocation = stream_type(
            self,
            variant,
            chain,
            headers.content_type,
            headers.forward_block,
            headers.accept_block if accept is None else b"Accept: " + accept + b"\r\n",
            request.body,
            request.body_size,
            request.keep_alive,
            request.received_at,
            headers.trace_block,
        )
        self.current = invocation
        variant.in_flight += 1
        self.server.in_flight += 1
        invocation.start(_clock())

    def stream_head(self, invocation: Invocation, fields: bytes) -> None:
        """Write the head of a response stream: status line, the usual headers, ``fields``."""
        server = self.server
        if self.transport is None or self.closing:
            return
        self._write(
            b"".join(
                (
                    invocation.variant.ok_head,
                    server.request_id_line(),
                    server.date.get(_clock()),
                    fields,
                    b"\r\n" if invocation.keep_alive else b"Connection: close\r\n\r\n",
                )
            )
        )

    def stream_finished(self, invocation: Invocation, status: int) -> None:
        """A response stream has been written to its end (or the client is gone)."""
        if self.current is invocation:
            self.current = None
        invocation.variant.in_flight -= 1
        self.server.in_flight -= 1
        now = invocation.record(status)
        hooks = invocation.hooks
        if hooks is not None:  # ends the request's span and an unended hop's (tracing)
            hooks.finished(invocation, status, None)
        if self.transport is not None and not self.closing:
            self._after_response(invocation.keep_alive, now)

    def send_invocation_response(self, invocation: Invocation, response: UpstreamResponse) -> None:
        self.current = None
        invocation.variant.in_flight -= 1
        self.server.in_flight -= 1
        if self.transport is None or self.closing:
            invocation.record(200)
            return
        keep_alive = invocation.keep_alive
        server = self.server
        custom_attributes = response.custom_attributes
        head = (
            invocation.variant.ok_head,
            server.request_id_line(),
            server.date.get(invocation.last_mark),
            server.content_type_line(response.content_type),
            b""
            if custom_attributes is None
            else b"X-Amzn-SageMaker-Custom-Attributes: " + custom_attributes + b"\r\n",
            server.content_length_line(response.body_size),
            b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
        )
        body = response.body
        if len(body) == 1 and len(body[0]) < 65536:
            self._write(b"".join((*head, body[0])))
        else:
            self.transport.writelines([b"".join(head), *body])
        self._after_response(keep_alive, invocation.record(200))

    def send_invocation_error(self, invocation: Invocation, error: RouterError) -> None:
        self.current = None
        invocation.variant.in_flight -= 1
        self.server.in_flight -= 1
        status = self._write_error(
            error, invocation.keep_alive, invocation.variant, invocation.chain[0].endpoint_name
        )
        invocation.record(status)

    def _write_error(
        self,
        error: RouterError,
        keep_alive: bool,
        variant: VariantRoute | None,
        endpoint: str | None = None,
        url: bytes | None = None,
    ) -> int:
        """Answer ``error``. For the metric of the router's own answers, ``endpoint`` names the
        endpoint the request was for where the caller knows it; otherwise it is read off
        ``url`` (default: the request being parsed)."""
        status, head, body = self._error_response(error, variant, endpoint, url)
        self._write_raw(head, body, keep_alive)
        return status

    def _error_response(
        self,
        error: RouterError,
        variant: VariantRoute | None,
        endpoint: str | None = None,
        url: bytes | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Status, head (without Content-Length) and body of the wire form of ``error``."""
        wire = wire_error(error, "runtime")
        answers = self.server.answers
        if answers is not None:
            self._count_answer(answers, wire.status, wire.code, variant, endpoint, url)
        head = [b"HTTP/1.1 %d %s\r\n" % (wire.status, _REASONS.get(wire.status, b"Error"))]
        head.extend(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in wire.header_pairs())
        if variant is not None:
            head.append(variant.response_header)
        head.append(self.server.request_id_line())
        head.append(self.server.date.get(_clock()))
        return wire.status, b"".join(head), wire.body()

    def _count_answer(
        self,
        answers: RouterAnswers,
        status: int,
        code: str,
        variant: VariantRoute | None,
        endpoint: str | None,
        url: bytes | None,
    ) -> None:
        if endpoint is None:
            # Refused before routing (too large, denied, not found): the path says which
            # endpoint was asked for, if any (an error path: parsing it here costs nothing).
            named = endpoint_path((self._url if url is None else url).partition(b"?")[0])
            endpoint = named[0] if named is not None else ""
        route = self.server.table.by_name.get(endpoint.lower()) if endpoint else None
        if route is not None:
            endpoint = route.name
        variant_name = variant.name if variant is not None else ""
        answers.record(endpoint, route is not None, variant_name, status, code)

    def _write_raw(self, head: bytes, body: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.closing:
            return
        tail = b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"
        self.transport.write(head + b"Content-Length: %d\r\n" % len(body) + tail + body)
        self._after_response(keep_alive, _clock())

    def _after_response(self, keep_alive: bool, now: float) -> None:
        """``now``: the instant the response was written."""
        if not keep_alive or not self.server.accepting:
            self._finish()
            return
        if self._pending:
            if not self._serving_pending and not self._write_blocked:
                self._serve_pending()
        elif not self._in_head:
            self.deadline = now + self.server.keepalive_timeout

    def _serve_pending(self) -> None:
        """Serve queued pipelined requests in order, in a loop: answers written at once (/ping,
        errors) come back through _after_response, which must not recurse once per request."""
        self._serving_pending = True
        try:
            while (
                self._pending
                and self.current is None
                and not self._write_blocked
                and not self.closing
            ):
                request = self._pending.popleft()
                if self._paused and len(self._pending) < _PENDING_LIMIT // 2:
                    self._resume()
                self._handle(request)
        finally:
            self._serving_pending = False
        if not self._pending and self.current is None and not self.closing and not self._in_head:
            self.deadline = _clock() + self.server.keepalive_timeout

    def _finish(self) -> None:
        """The last response is written: half-close after it and let the client read it whole.
        Closing outright while its unread bytes are queued here makes the kernel send a reset,
        which can destroy the response in flight (the 413/431 a client never sees). Whatever
        it still sends is discarded; by the keep-alive deadline the socket is aborted."""
        self.closing = True
        self.deadline = _clock() + self.server.keepalive_timeout
        transport = self.transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()  # keep draining (and discarding) its input
        else:
            transport.close()

    def _reject(self, error: RouterError) -> None:
        """Answer a request that cannot be parsed or allowed, then close: after a framing error
        the next request's boundary is unknown, so nothing more is parsed from this socket."""
        self._stop_reading()
        if self.current is not None or self._pending:
            # Responses are still owed for earlier pipelined requests: they go out first, in
            # order, then this error, then the connection closes.
            if not self._pending or self._pending[-1].error is None:
                self._pending.append(_ParsedRequest.rejection(error, self._url))
            return
        self._write_error(error, False, None)

    def _close_after_owed_responses(self) -> None:
        """Parse nothing more; close once every request parsed so far has its answer."""
        self._stop_reading()
        if self._pending:
            self._pending[-1].keep_alive = False
        elif self.current is not None:
            self.current.keep_alive = False
        elif not self.closing:
            self._finish()

    def _stop_reading(self) -> None:
        self._stopped = True
        if self.transport is not None:
            self.transport.pause_reading()

    def deadline_passed(self) -> None:
        """Called by the server's sweep when ``deadline`` is over."""
        self.deadline = _NO_DEADLINE
        if self.closing or self._write_blocked:
            # A response the client has not read (nor closed the connection) by the deadline.
            self.abort()
            return
        if self.current is not None or self._pending:
            return
        if self._in_head or self._header_count:  # a request head or body is incomplete
            self._reject(RequestTimeout("The request was not received completely in time."))
        else:
            # Idle keep-alive connection: close silently (a FIN, nothing is queued). An
            # unsolicited 408 would be read as the answer by a client sending its next
            # request at this very moment.
            self.close_if_idle()

    def _pause(self) -> None:
        if self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.transport is not None:
            self._paused = False
            if not self._stopped:
                self.transport.resume_reading()

    def close_if_idle(self) -> None:
        if self.current is None and not self._pending and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            # Reset, as nginx's reset_timedout_connection: a plain close leaves the kernel
            # sending what is still queued (megabytes, to a client that reads slowly).
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.transport.abort()


_LINGER_RESET: Final = struct.pack("ii", 1, 0)


class _ParsedRequest:
    __slots__ = (
        "body",
        "body_size",
        "error",
        "headers",
        "keep_alive",
        "method",
        "received_at",
        "url",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: hdr.RequestHeaders,
        body: list[bytes],
        body_size: int,
        keep_alive: bool,
        received_at: float,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.body_size = body_size
        self.keep_alive = keep_alive
        self.received_at = received_at
        #: Set on a rejection queued behind pipelined requests (answered, then close).
        self.error: RouterError | None = None

    @classmethod
    def rejection(cls, error: RouterError, url: bytes) -> _ParsedRequest:
        """An answer owed for a request refused while it was read (``url``: its path)."""
        request = cls(b"", url, hdr.RequestHeaders(), [], 0, False, 0.0)
        request.error = error
        return request

    def _replace_url(self, url: bytes) -> _ParsedRequest:
        return _ParsedRequest(
            self.method,
            url,
            self.headers,
            self.body,
            self.body_size,
            self.keep_alive,
            self.received_at,
        )


def _headers_too_large(server: RuntimeServer) -> HeadersTooLarge:
    return HeadersTooLarge(
        f"Request headers exceed the limit of {server.max_header_count} headers or "
        f"{server.max_header_bytes} bytes."
    )


def _too_large_message(size: int, limit: int) -> str:
    return (
        f"The request body ({size} bytes or more) exceeds the {limit}-byte limit for real-time "
        "invocation (SageMaker's is 6 MiB; the router's is limits.max_request_body_bytes in its "
        "config); send a smaller payload or use asynchronous inference."
    )


def _select(
    route: EndpointRoute, headers: hdr.RequestHeaders
) -> tuple[VariantRoute, tuple[Upstream, ...]]:
    """Pick variant, instance and the containers to call, applying SageMaker's Direct rules."""
    if headers.target_variant is not None:
        variant = route.variants_by_name.get(headers.target_variant)
        if variant is None:
            raise ValidationError(
                f"Variant {headers.target_variant} is not part of endpoint {route.name}; "
                f"its variants are: {', '.join(route.variants_by_name)}.",
                field="TargetVariant",
                rule="must name a variant of the endpoint",
            )
    else:
        variant = route.pick_variant()
    instance = variant.next_instance()
    target = headers.target_container
    if variant.direct:
        if target is None:
            raise ValidationError(
                f"Endpoint {route.name} uses Direct invocation: set TargetContainerHostname "
                f"(header X-Amzn-SageMaker-Target-Container-Hostname) to one of: "
                f"{', '.join(instance.by_name)}.",
                field="TargetContainerHostname",
                rule="required for Direct invocation",
            )
        upstream = instance.by_name.get(target)
        if upstream is None:
            raise ValidationError(
                f"TargetContainerHostname {target} is not a container of endpoint {route.name}; "
                f"its containers are: {', '.join(instance.by_name)}.",
                field="TargetContainerHostname",
                rule="must name a container of the endpoint",
            )
        return variant, (upstream,)
    if target is not None:
        raise ValidationError(
            f"Endpoint {route.name} is not configured for Direct invocation, so "
            f"TargetContainerHostname ({target}) must not be set.",
            field="TargetContainerHostname",
            rule="only allowed for Direct invocation",
        )
    return variant, instance.chain
