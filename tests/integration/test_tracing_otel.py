"""OpenTelemetry spans (the ``otel`` extra): a SERVER span per request and a CLIENT span per
container call, with endpoint, variant, container, status, sizes, content types and latency;
the container gets its call's span as traceparent parent. Checked with the SDK's in-memory
exporter and with a real OTLP/HTTP receiver on an ephemeral port."""

from __future__ import annotations

import json
from contextlib import closing
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    call_raising,
    container,
    deploy,
    direct_model,
    headers_report,
    invoke,
    multi_model,
    runtime_client,
    send_extra_headers,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mce_router import Router
from mce_router.config import TracingSettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _traceparent(report: dict[str, Any]) -> str:
    (value,) = [v for name, v in report["headers"] if name.lower() == "traceparent"]
    return str(value)


async def test_serial_request_and_every_hop_become_spans(config_factory: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    model = multi_model(
        "spans",
        [
            container("first", FAULT_RESPONSE_CONTENT_TYPE="application/x-first"),
            container("second"),
        ],
        "Serial",
    )
    async with Router(config_factory(), tracer_provider=provider) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            send_extra_headers(client, {"traceparent": TRACEPARENT, "tracestate": "v=1"})
            response = await invoke(
                client,
                EndpointName=endpoint,
                ContentType="text/csv",
                CustomAttributes="action=headers",
                Body=b"1,2",
            )
            second = json.loads(response["Body"])
            first = json.loads(second["body"])
            failed = await call_raising(
                client, EndpointName=endpoint, CustomAttributes="action=status:418", Body=b"x"
            )
            assert isinstance(failed, client.exceptions.ModelError)
    spans = exporter.get_finished_spans()
    ok = [s for s in spans if s.context.trace_id == int(TRACE_ID, 16)]
    # Two requests: 1 + 2 spans, then 1 + 1 (the failing first stage stops the chain).
    assert len(ok) == 5, [s.name for s in spans]
    requests = [s for s in ok if s.kind == SpanKind.SERVER]
    hops = [s for s in ok if s.kind == SpanKind.CLIENT]
    assert len(requests) == 2 and len(hops) == 3
    good, bad = sorted(requests, key=lambda s: s.start_time or 0)
    # The request span continues the client's trace, under the client's span.
    assert good.parent is not None and good.parent.span_id == 0x00F067AA0BA902B7
    assert good.attributes is not None
    assert good.attributes["sagemaker.endpoint"] == endpoint
    assert good.attributes["sagemaker.variant"] == "AllTraffic"
    assert good.attributes["http.response.status_code"] == 200
    assert good.attributes["http.request.body.size"] == 3
    assert good.attributes["sagemaker.request.content_type"] == "text/csv"
    assert good.status.status_code == StatusCode.UNSET

    good_hops = sorted(
        (h for h in hops if h.parent is not None and h.parent.span_id == good.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert [h.attributes["sagemaker.container"] for h in good_hops] == ["first", "second"]  # type: ignore[index]
    one, two = good_hops
    assert one.attributes is not None and two.attributes is not None
    assert one.attributes["sagemaker.request.content_type"] == "text/csv"
    assert one.attributes["sagemaker.response.content_type"] == "application/x-first"
    assert two.attributes["sagemaker.request.content_type"] == "application/x-first"
    assert one.attributes["http.response.body.size"] == two.attributes["http.request.body.size"]
    assert one.attributes["http.response.status_code"] == 200
    assert 0 < float(one.attributes["sagemaker.latency_seconds"]) < 10  # type: ignore[arg-type]
    # Each container was called with its own hop as parent, and the client's tracestate.
    assert _traceparent(first) == f"00-{TRACE_ID}-{one.context.span_id:016x}-01"
    assert _traceparent(second) == f"00-{TRACE_ID}-{two.context.span_id:016x}-01"

    assert bad.status.status_code == StatusCode.ERROR
    assert bad.attributes is not None
    assert bad.attributes["http.response.status_code"] == 424
    assert bad.attributes["sagemaker.error_code"] == "ModelError"
    (bad_hop,) = [h for h in hops if h.parent and h.parent.span_id == bad.context.span_id]
    assert bad_hop.attributes is not None
    assert bad_hop.attributes["http.response.status_code"] == 418  # the chain stopped there
    assert bad_hop.status.status_code == StatusCode.ERROR


class _OtlpReceiver:
    """A real OTLP/HTTP trace receiver: decodes every export with opentelemetry-proto."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.content_types: list[str] = []

    async def export(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.content_types.append(request.content_type)
        for resource_spans in message.resource_spans:
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest.fixture
async def otlp_receiver() -> Any:
    receiver = _OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield receiver, f"http://127.0.0.1:{port}/v1/traces"
    await runner.cleanup()


async def test_spans_reach_a_real_otlp_receiver(config_factory: Any, otlp_receiver: Any) -> None:
    receiver, url = otlp_receiver
    tracing = TracingSettings(otel_enabled=True, otel_endpoint=url, otel_service_name="t")
    async with Router(config_factory(tracing=tracing)) as router:
        endpoint = await deploy(router, direct_model("otlp", ["alpha"]))
        with closing(runtime_client(router)) as client:
            report = await headers_report(
                client, EndpointName=endpoint, TargetContainerHostname="alpha"
            )
        sent = _traceparent(report)
    # Stopping the router flushed the batch processor into the receiver.
    assert receiver.content_types and set(receiver.content_types) == {"application/x-protobuf"}
    by_kind = {span.kind: span for span in receiver.spans}
    assert len(receiver.spans) == 2, receiver.spans
    server = by_kind[2]  # SPAN_KIND_SERVER
    client_span = by_kind[3]  # SPAN_KIND_CLIENT
    # No traceparent from the client: the request span is the trace's root and the container
    # got the trace it started, its own hop as parent.
    assert server.parent_span_id == b""
    assert client_span.parent_span_id == server.span_id
    assert sent[:-3] == f"00-{client_span.trace_id.hex()}-{client_span.span_id.hex()}"
    # Sampled; the SDK may also set W3C level 2's "random trace id" flag (0x02).
    assert int(sent[-2:], 16) & 0x01
    attributes = {a.key: a.value for a in client_span.attributes}
    assert attributes["sagemaker.container"].string_value == "alpha"
    assert attributes["http.response.status_code"].int_value == 200
