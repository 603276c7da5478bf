"""InvokeEndpointWithResponseStream through unmodified boto3 (botocore's own event-stream
parser) against real routers and real streaming container processes: Direct and Serial,
incremental delivery, backpressure, errors before and after the first byte, disconnects,
metrics."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EventStreamError
from conftest import (
    container,
    container_port,
    deploy,
    http_get,
    images_for_tests,
    multi_model,
    running_router,
    runtime_client,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from mce_router import ModelError, StreamError, ValidationError
from mce_router.config import Limits, ProcessImage, ProcessSettings

STREAM_CONTAINER = Path(__file__).parent.parent / "containers" / "stream_container.py"
STREAM_IMAGE = "test/stream:latest"
#: Bind ports away from the default range's start, per test process: other routers on a shared
#: machine hand out the same low ports, and a container that loses the race to bind leaves the
#: router talking to someone else's container on that port.
_PROCESS = ProcessSettings(
    stop_grace_seconds=3.0,
    bind_port_range_start=15000 + (os.getpid() % 49) * 100,
    bind_port_range_size=100,
)


def _images() -> dict[str, Any]:
    return images_for_tests(
        **{STREAM_IMAGE: ProcessImage(command=(sys.executable, str(STREAM_CONTAINER)))}
    )


def _stream_container(hostname: str | None, **environment: str) -> dict[str, Any]:
    return container(hostname, STREAM_IMAGE, **environment)


async def _container_stats(router: Any, endpoint: str, host: str) -> dict[str, int]:
    status, body = await http_get(container_port(router, endpoint, host), "/stats")
    assert status == 200
    stats: dict[str, int] = json.loads(body)
    return stats


def _read_all(client: Any, **kwargs: Any) -> tuple[dict[str, Any], list[bytes]]:
    response = client.invoke_endpoint_with_response_stream(**kwargs)
    with closing(response["Body"]):
        parts = [event["PayloadPart"]["Bytes"] for event in response["Body"]]
    return response, parts


async def stream(client: Any, **kwargs: Any) -> tuple[dict[str, Any], list[bytes]]:
    """One call in a thread (boto3 blocks), every event read there."""
    return await asyncio.to_thread(_read_all, client, **kwargs)


async def stream_error(client: Any, **kwargs: Any) -> tuple[list[bytes], Exception]:
    """A stream expected to fail while iterating: the parts before, and the exception."""

    def run() -> tuple[list[bytes], Exception]:
        response = client.invoke_endpoint_with_response_stream(**kwargs)
        parts: list[bytes] = []
        try:
            for event in response["Body"]:
                parts.append(event["PayloadPart"]["Bytes"])
        except Exception as exc:  # the caller asserts the exact type
            return parts, exc
        finally:
            response["Body"].close()
        raise AssertionError(f"the stream ended without an error after {parts}")

    return await asyncio.to_thread(run)


@pytest.fixture
def stream_config(config_factory: Any) -> Any:
    def factory(**limits: Any) -> Any:
        return config_factory(images=_images(), limits=Limits(**limits), process=_PROCESS)

    return factory


DIRECT = multi_model("sdirect", [_stream_container("alpha"), _stream_container("bravo")], "Direct")


async def test_direct_stream_parts_in_order_with_headers(stream_config: Any) -> None:
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:
            response, parts = await stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="bravo",
                Body=b"",
                CustomAttributes="action=stream;parts=5",
            )
            assert b"".join(parts) == b"".join(b"part %d\n" % i for i in range(5))
            assert response["ContentType"] == "application/jsonlines"
            assert response["InvokedProductionVariant"] == "AllTraffic"
            headers = response["ResponseMetadata"]["HTTPHeaders"]
            assert headers["content-type"] == "application/vnd.amazon.eventstream"

            # Accept arrives as X-Amzn-SageMaker-Accept and reaches the container as Accept;
            # the body, its Content-Type and the custom attributes cross unchanged.
            response, parts = await stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b'{"x": 1}',
                ContentType="application/json; charset=utf-8",
                Accept="text/plain",
                CustomAttributes="action=echo;report=1",
                InferenceId="abc",
            )
            assert b"".join(parts) == b'{"x": 1}accept=text/plain'
            assert response["ContentType"] == "application/json; charset=utf-8"
            assert response["CustomAttributes"] == "action=echo;report=1"

            # text/event-stream and a Content-Length body read in pieces are relayed as-is.
            _, parts = await stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=sse;parts=3",
            )
            assert b"".join(parts) == b"data: token 0\n\ndata: token 1\n\ndata: token 2\n\n"
            response, parts = await stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=plain;parts=3;gap=0.05",
            )
            assert b"".join(parts) == b"part 0\npart 1\npart 2\n"
            # Written 50 ms apart: relayed as they came, not held for the whole body (one
            # event per read from the container, so a loaded machine may merge two).
            assert len(parts) >= 2, parts
            # Keep-alive: streams reuse the pooled connection (new sockets: this probe, and one
            # per health ping, which opens its own).
            before = await _container_stats(router, endpoint, "alpha")
            for _ in range(5):
                _, parts = await stream(
                    client, EndpointName=endpoint, TargetContainerHostname="alpha", Body=b""
                )
                assert b"".join(parts) == b"part 0\npart 1\npart 2\n"
            after = await _container_stats(router, endpoint, "alpha")
            assert after["invocations"] == before["invocations"] + 5
            pings = after["pings"] - before["pings"]
            assert after["connections"] - before["connections"] <= 1 + pings, (before, after)


async def test_first_part_arrives_while_container_still_generating(stream_config: Any) -> None:
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:

            def run() -> list[float]:
                started = time.perf_counter()
                response = client.invoke_endpoint_with_response_stream(
                    EndpointName=endpoint,
                    TargetContainerHostname="alpha",
                    Body=b"",
                    CustomAttributes="action=stream;parts=2;gap=1.5",
                )
                with closing(response["Body"]):
                    return [time.perf_counter() - started for _ in response["Body"]]

            arrivals = await asyncio.to_thread(run)
            assert len(arrivals) == 2
            # The container waits 1.5 s between its parts: the first is read well before.
            assert arrivals[0] < 1.0, arrivals
            assert arrivals[1] >= 1.4, arrivals


async def test_direct_validation_and_model_errors_before_first_byte(stream_config: Any) -> None:
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:
            for kwargs, needle in (
                ({}, "set TargetContainerHostname"),
                ({"TargetContainerHostname": "zulu"}, "zulu is not a container"),
            ):
                exc = await call_raising_stream(client, EndpointName=endpoint, Body=b"", **kwargs)
                assert isinstance(exc, client.exceptions.ValidationError), exc
                assert needle in str(exc)
            exc = await call_raising_stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=status:503;message=model overloaded",
            )
            assert isinstance(exc, client.exceptions.ModelError), exc
            error = exc.response  # type: ignore[attr-defined]
            assert error["OriginalStatusCode"] == 503
            assert error["OriginalMessage"] == "model overloaded"
            assert "alpha" in error["Error"]["Message"]
            exc = await call_raising_stream(client, EndpointName="nope", Body=b"")
            assert isinstance(exc, ClientError)
            assert "nope" in str(exc)


async def call_raising_stream(client: Any, **kwargs: Any) -> Exception:
    try:
        await stream(client, **kwargs)
    except Exception as exc:  # the caller asserts the exact type
        return exc
    raise AssertionError("the stream succeeded but an error was expected")


async def test_target_on_serial_endpoint_refused(stream_config: Any) -> None:
    model = multi_model("sser1", [_stream_container(None)], "Serial")
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            exc = await call_raising_stream(
                client, EndpointName=endpoint, TargetContainerHostname="a", Body=b""
            )
            assert isinstance(exc, client.exceptions.ValidationError), exc
            assert "not configured for Direct invocation" in str(exc)


async def test_serial_streams_last_stage(stream_config: Any) -> None:
    # Stage 1 (fault container) echoes with its own Content-Type; stage 2 streams it back.
    model = multi_model(
        "sserial",
        [
            container("first", FAULT_RESPONSE_CONTENT_TYPE="application/x-stage1"),
            _stream_container("last", STREAM_DEFAULT_ACTION="echo"),
        ],
        "Serial",
    )
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            response, parts = await stream(
                client, EndpointName=endpoint, Body=b"hello serial", Accept="text/x-final"
            )
            assert parts == [b"hello serial"]
            # The earlier stage's Content-Type went on to the last one, which echoed it.
            assert response["ContentType"] == "application/x-stage1"


async def _model_stream_error(
    client: Any, endpoint: str, host: str, attributes: str
) -> tuple[list[bytes], str]:
    """A Direct stream that must end in ModelStreamError: its parts and botocore's message
    (botocore keeps only the event's Message; it starts with the ErrorCode)."""
    parts, exc = await stream_error(
        client,
        EndpointName=endpoint,
        TargetContainerHostname=host,
        Body=b"",
        CustomAttributes=attributes,
    )
    assert isinstance(exc, EventStreamError), exc
    assert exc.response["Error"]["Code"] == "ModelStreamError"
    return parts, exc.response["Error"]["Message"]


async def test_errors_after_first_byte(stream_config: Any) -> None:
    async with running_router(
        stream_config(stream_silence_timeout_seconds=0.5, stream_max_duration_seconds=30.0)
    ) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:
            parts, message = await _model_stream_error(client, endpoint, "alpha", "action=silent")
            assert parts == [b"part 0\n"]
            assert message.startswith("ModelInvocationTimeExceeded: "), message
            assert "stream_silence_timeout_seconds" in message

            parts, message = await _model_stream_error(client, endpoint, "bravo", "action=die")
            assert b"".join(parts) == b"part 0\npart 1\n"
            assert message.startswith("StreamBroken: "), message


async def test_total_stream_time_limit(stream_config: Any) -> None:
    async with running_router(
        stream_config(stream_silence_timeout_seconds=5.0, stream_max_duration_seconds=0.6)
    ) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:
            parts, message = await _model_stream_error(
                client, endpoint, "alpha", "action=stream;parts=20;gap=0.1"
            )
            assert 2 <= len(parts) < 20, parts
            assert message.startswith("ModelInvocationTimeExceeded: "), message
            assert "stream_max_duration_seconds" in message


def _raw_stream_request(endpoint: str, target: str, attributes: str) -> bytes:
    return (
        f"POST /endpoints/{endpoint}/invocations-response-stream HTTP/1.1\r\n"
        "Host: router\r\nContent-Length: 0\r\n"
        f"X-Amzn-SageMaker-Target-Container-Hostname: {target}\r\n"
        f"X-Amzn-SageMaker-Custom-Attributes: {attributes}\r\n\r\n"
    ).encode()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_slow_client_backpressure_bounds_memory(stream_config: Any) -> None:
    """64 MiB offered by the container to a client that stops reading: the router stops
    reading the container (it cannot finish), holds a bounded amount, then relays it all."""
    parts, size = 4096, 16384
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, DIRECT)
        sock = socket.create_connection(("127.0.0.1", router.runtime_port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        with closing(sock):
            sock.sendall(
                _raw_stream_request(endpoint, "alpha", f"action=big;parts={parts};size={size}")
            )
            gc.collect()
            rss_before = _rss()
            await asyncio.sleep(1.5)  # the client reads nothing meanwhile
            stats = await _container_stats(router, endpoint, "alpha")
            assert stats["finished"] == 0, "the container wrote 64 MiB into a stalled stream"
            grown = _rss() - rss_before
            assert grown < 24 * 1024 * 1024, f"router memory grew {grown} bytes"

            def drain() -> int:
                total = 0
                sock.settimeout(30)
                tail = b""
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        return total
                    total += len(data)
                    tail = (tail + data)[-5:]
                    if tail == b"0\r\n\r\n":
                        return total

            received = await asyncio.to_thread(drain)
            # Every payload byte arrived, plus the framing.
            assert received > parts * size
        await wait_until(
            lambda: _finished(router, endpoint), 10, "the container to finish its stream"
        )


async def _finished(router: Any, endpoint: str) -> bool:
    return (await _container_stats(router, endpoint, "alpha"))["finished"] == 1


async def test_client_disconnect_mid_stream_leaks_nothing(stream_config: Any) -> None:
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, DIRECT)
        upstream = router.runtime_server.table.by_name[endpoint].variants[0].instances[0]
        pool = upstream.by_name["alpha"].pool
        tasks_before = len(asyncio.all_tasks())
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", router.runtime_port)
            writer.write(_raw_stream_request(endpoint, "alpha", "action=stream;parts=50;gap=0.2"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(reader.read(100), 10)  # part of the first event
            writer.close()
            await writer.wait_closed()

        async def settled() -> bool:
            stats = await _container_stats(router, endpoint, "alpha")
            return (
                router.runtime_server.in_flight == 0
                and not router.runtime_server.orphans
                and pool.open_count == 0
                and stats["aborted"] == 3
                and stats["active"] == 1  # only the /stats probe itself
            )

        await wait_until(settled, 10, "the container connections to close")
        assert len(asyncio.all_tasks()) <= tasks_before
        # The pool still works after it.
        with closing(runtime_client(router)) as client:
            _, parts = await stream(
                client, EndpointName=endpoint, TargetContainerHostname="alpha", Body=b""
            )
            assert b"".join(parts) == b"part 0\npart 1\npart 2\n"


async def test_stream_metrics(stream_config: Any) -> None:
    async with running_router(stream_config()) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:
            await stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=stream;parts=2;gap=0.3",
            )
            await call_raising_stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=status:404",
            )
            await _model_stream_error(client, endpoint, "bravo", "action=die")
        _, text = await http_get(router.admin_port, "/metrics")
        samples = {
            (sample.name, sample.labels.get("container_name")): sample.value
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples
            if sample.labels.get("endpoint_name") == endpoint
            and not sample.name.endswith("_bucket")
        }
        assert samples[("sagemaker_container_invocations_total", "alpha")] == 2
        assert samples[("sagemaker_container_invocation_4xx_errors_total", "alpha")] == 1
        assert samples[("sagemaker_container_invocation_5xx_errors_total", "bravo")] == 1
        # ContainerLatency of a stream runs to its last byte: the 0.3 s gap is in it.
        assert samples[("sagemaker_container_latency_seconds_sum", "alpha")] >= 0.3
        assert samples[("mce_router_stream_invocations_total", "alpha")] == 2
        assert samples[("mce_router_stream_invocations_total", "bravo")] == 1
        first_byte = samples[("mce_router_stream_time_to_first_byte_seconds_sum", "alpha")]
        duration = samples[("mce_router_stream_duration_seconds_sum", "alpha")]
        assert 0 < first_byte < 0.3 <= duration, (first_byte, duration)


async def test_sigv4_and_iam_apply_as_to_invoke_endpoint(config_factory: Any) -> None:
    from test_auth import ALICE, BOB, auth_config, client

    endpoint = "guardedstream"
    config = config_factory(images=_images(), auth=auth_config(endpoint), process=_PROCESS)
    model = multi_model(
        endpoint, [_stream_container("common"), _stream_container("special1")], "Direct"
    )
    async with running_router(config) as router:
        await deploy(router, model)
        alice = client("sagemaker-runtime", router.runtime_url, ALICE)
        stranger = client("sagemaker-runtime", router.runtime_url, ("AKIDNOBODY", "x" * 30))
        with closing(alice), closing(stranger):
            _, parts = await stream(
                alice, EndpointName=endpoint, TargetContainerHostname="common", Body=b""
            )
            assert b"".join(parts) == b"part 0\npart 1\npart 2\n"
            # sagemaker:TargetContainerHostname: Alice may stream from common* only.
            exc = await call_raising_stream(
                alice, EndpointName=endpoint, TargetContainerHostname="special1", Body=b""
            )
            assert isinstance(exc, ClientError), exc
            assert exc.response["Error"]["Code"] == "AccessDeniedException"
            assert "sagemaker:InvokeEndpoint" in exc.response["Error"]["Message"]
            exc = await call_raising_stream(
                stranger, EndpointName=endpoint, TargetContainerHostname="common", Body=b""
            )
            assert isinstance(exc, ClientError), exc
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        bob = client("sagemaker-runtime", router.runtime_url, BOB)
        with closing(bob):
            exc = await call_raising_stream(
                bob, EndpointName=endpoint, TargetContainerHostname="special1", Body=b""
            )
            assert exc.response["Error"]["Code"] == "AccessDeniedException"  # type: ignore[attr-defined]


async def test_embedded_async_iterator(stream_config: Any) -> None:
    async with running_router(stream_config(stream_silence_timeout_seconds=0.5)) as router:
        endpoint = await deploy(router, DIRECT)
        parts = [
            part
            async for part in router.invoke_endpoint_with_response_stream(
                endpoint,
                b"",
                target_container_hostname="alpha",
                custom_attributes="action=stream;parts=4",
            )
        ]
        assert b"".join(parts) == b"".join(b"part %d\n" % i for i in range(4))
        with pytest.raises(ValidationError, match="did you mean 'target_variant'"):
            await _collect(
                router.invoke_endpoint_with_response_stream(endpoint, b"", target_varient="x"),
                [],
            )
        with pytest.raises(ValidationError, match="set TargetContainerHostname"):
            async for _ in router.invoke_endpoint_with_response_stream(endpoint, b""):
                pass
        with pytest.raises(ModelError) as model_error:
            async for _ in router.invoke_endpoint_with_response_stream(
                endpoint,
                b"",
                target_container_hostname="alpha",
                custom_attributes="action=status:500;message=boom",
            ):
                pass
        assert model_error.value.original_status == 500
        assert model_error.value.original_message == "boom"
        got: list[bytes] = []
        parts_of = router.invoke_endpoint_with_response_stream(
            endpoint, b"", target_container_hostname="bravo", custom_attributes="action=die"
        )
        with pytest.raises(StreamError) as broken:
            await _collect(parts_of, got)
        assert b"".join(got) == b"part 0\npart 1\n"
        assert (broken.value.code, broken.value.error_code) == ("ModelStreamError", "StreamBroken")


async def _collect(parts: Any, into: list[bytes]) -> None:
    async for part in parts:
        into.append(part)


async def test_a_stream_is_traced_like_an_invocation(stream_config: Any) -> None:
    """The container gets a traceparent; with OpenTelemetry on, the stream's request span and
    its hop end when the stream does (not left open)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from mce_router import Router
    from mce_router.config import TracingSettings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = stream_config().replace(tracing=TracingSettings(otel_enabled=True))
    async with Router(config, tracer_provider=provider) as router:
        endpoint = await deploy(router, DIRECT)
        with closing(runtime_client(router)) as client:
            _, parts = await stream(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=stream;parts=3",
            )
            assert b"".join(parts) == b"".join(b"part %d\n" % i for i in range(3))
    spans = exporter.get_finished_spans()
    kinds = sorted(str(span.kind) for span in spans)
    assert kinds == sorted([str(SpanKind.SERVER), str(SpanKind.CLIENT)]), spans
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (hop,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert hop.parent is not None and hop.parent.span_id == request.context.span_id
