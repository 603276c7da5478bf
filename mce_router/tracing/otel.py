"""OpenTelemetry spans (the ``otel`` extra): one SERVER span per request, one CLIENT span per
container call, the call's span id sent to the container as the traceparent's parent id so a
container's own spans hang under the hop that called it. Exported over OTLP/HTTP by a batch
processor (off the event loop's thread)."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.span import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from ..config import TracingSettings
from ..dataplane.proxy import Invocation, Upstream, UpstreamResponse
from ..errors import RouterError, wire_error

#: Span attribute names (OpenTelemetry's HTTP conventions where one fits, ``sagemaker.*`` else).
ENDPOINT = "sagemaker.endpoint"
VARIANT = "sagemaker.variant"
CONTAINER = "sagemaker.container"
STAGE = "sagemaker.pipeline.stage"
STATUS = "http.response.status_code"
REQUEST_SIZE = "http.request.body.size"
RESPONSE_SIZE = "http.response.body.size"
REQUEST_TYPE = "sagemaker.request.content_type"
RESPONSE_TYPE = "sagemaker.response.content_type"
LATENCY = "sagemaker.latency_seconds"
ERROR_CODE = "sagemaker.error_code"


class OtelSpans:
    """Starts and ends the spans; owns the provider only when it built it (``close``)."""

    def __init__(self, provider: Any, *, owned: bool) -> None:
        self.provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer("mce_router")

    @classmethod
    def from_settings(cls, settings: TracingSettings, provider: Any = None) -> OtelSpans:
        if provider is not None:
            return cls(provider, owned=False)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        sampler = ParentBased(ALWAYS_ON if settings.sample_new_traces else ALWAYS_OFF)
        provider = TracerProvider(
            sampler=sampler,
            resource=Resource.create({"service.name": settings.otel_service_name}),
        )
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint))
        )
        return cls(provider, owned=True)

    def close(self) -> None:
        """Export what is still queued and stop the exporter (when this built it)."""
        if self._owned:
            self.provider.shutdown()

    def start_request(self, invocation: Invocation) -> Any:
        chain = invocation.chain
        context = None
        parent = _parent(invocation.trace_block)
        if parent is not None:
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        return self._tracer.start_span(
            f"InvokeEndpoint {chain[0].endpoint_name}",
            context=context,
            kind=SpanKind.SERVER,
            attributes=_present(
                {
                    ENDPOINT: chain[0].endpoint_name,
                    VARIANT: invocation.variant.name,
                    REQUEST_SIZE: invocation.body_size,
                    REQUEST_TYPE: _text(invocation.content_type),
                    "sagemaker.pipeline.containers": [u.container_name for u in chain],
                }
            ),
        )

    def start_hop(self, invocation: Invocation, state: Any, upstream: Upstream) -> bytes:
        if state.hop is not None:  # a retry on a fresh connection: the first attempt is over
            state.hop.set_attribute("sagemaker.retried", True)
            state.hop.end()
        hop = state.hop = self._tracer.start_span(
            f"container {upstream.container_name}",
            context=trace.set_span_in_context(state.request),
            kind=SpanKind.CLIENT,
            attributes=_present(
                {
                    ENDPOINT: upstream.endpoint_name,
                    VARIANT: upstream.variant_name,
                    CONTAINER: upstream.container_name,
                    STAGE: invocation.stage,
                    REQUEST_SIZE: invocation.body_size,
                    REQUEST_TYPE: _text(invocation.content_type),
                }
            ),
        )
        context = hop.get_span_context()
        block = _block_of(context)
        if context.trace_state:
            block += b"tracestate: " + context.trace_state.to_header().encode() + b"\r\n"
        if not invocation.trace_block:
            # The router started this trace: the request span is its root.
            invocation.trace_block = _block_of(state.request.get_span_context())
        return block

    def end_hop(
        self, state: Any, status: int, latency: float, response: UpstreamResponse | None
    ) -> None:
        hop, state.hop = state.hop, None
        if hop is None:
            return
        hop.set_attribute(STATUS, status)
        hop.set_attribute(LATENCY, latency)
        if response is not None:
            hop.set_attribute(RESPONSE_SIZE, response.body_size)
            if response.content_type is not None:
                hop.set_attribute(RESPONSE_TYPE, _text(response.content_type))
        if not 200 <= status < 300:
            hop.set_status(
                Status(StatusCode.ERROR, f"the container answered {status or 'nothing'}")
            )
        hop.end()

    def end_request(
        self, state: Any, invocation: Invocation, status: int, error: RouterError | None
    ) -> None:
        span = state.request
        if state.hop is not None:  # ended without the call's end (the client went away)
            state.hop.end()
            state.hop = None
        span.set_attribute(STATUS, status)
        span.set_attribute(LATENCY, invocation.model_seconds)
        if error is not None:
            span.set_attribute(ERROR_CODE, wire_error(error, "runtime").code)
            span.set_status(Status(StatusCode.ERROR, error.message[:1024]))
        elif status == 0:
            span.set_status(Status(StatusCode.ERROR, "the client went away"))
        span.end()


def _parent(block: bytes) -> SpanContext | None:
    """The client's trace context from ``Invocation.trace_block`` (already validated)."""
    if not block:
        return None
    first, _, rest = block.partition(b"\r\n")
    value = first[len(b"traceparent: ") :]
    state = None
    if rest.startswith(b"tracestate: "):
        state = TraceState.from_header([rest[len(b"tracestate: ") :].split(b"\r\n")[0].decode()])
    return SpanContext(
        trace_id=int(value[3:35], 16),
        span_id=int(value[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(value[53:55], 16)),
        trace_state=state,
    )


def _block_of(context: SpanContext) -> bytes:
    return b"traceparent: 00-%032x-%016x-%02x\r\n" % (
        context.trace_id,
        context.span_id,
        context.trace_flags,
    )


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _present(attributes: dict[str, Any]) -> dict[str, Any]:
    """Without the unset ones: OpenTelemetry logs a warning for every None attribute."""
    return {name: value for name, value in attributes.items() if value is not None}
