"""Direct invocation through real boto3 clients: routing by target hostname, the Direct
validation errors, what crosses the router in each direction, keep-alive and container env."""

from __future__ import annotations

import json
import re
import socket
from contextlib import closing
from typing import Any

import pytest
from conftest import (
    ECHO_IMAGE,
    call_raising,
    container,
    container_port,
    container_stats,
    deploy,
    http_exchange,
    http_get,
    invoke,
    multi_model,
    running_router,
    runtime_client,
    slot_of,
)

from mce_router import EndpointStartupError, ValidationError
from mce_router.config import HealthSettings, ProcessSettings
from mce_router.runtime.ports import port_is_free

HOSTS = ["alpha", "bravo", "charlie"]


def _error(exc: Exception) -> dict[str, Any]:
    response: dict[str, Any] = exc.response  # type: ignore[attr-defined]
    return response


async def test_direct_reaches_each_named_container(config_factory: Any) -> None:
    model = multi_model("direct3", [container(h, TEST_WHO=f"i am {h}") for h in HOSTS], "Direct")
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            for host in HOSTS:
                who = await invoke(
                    client,
                    EndpointName=endpoint,
                    TargetContainerHostname=host,
                    Body=b"",
                    CustomAttributes="action=env",
                )
                env = json.loads(who["Body"])
                assert env["TEST_WHO"] == f"i am {host}", (host, env)
                assert env["SAGEMAKER_BIND_TO_PORT"] == str(container_port(router, endpoint, host))

                echoed = await invoke(
                    client,
                    EndpointName=endpoint,
                    TargetContainerHostname=host,
                    ContentType="text/csv; charset=utf-8",
                    Body=f"{host},1,2\n".encode(),
                )
                assert echoed["Body"] == f"{host},1,2\n".encode()
                assert echoed["ContentType"] == "text/csv; charset=utf-8"
                assert echoed["InvokedProductionVariant"] == "AllTraffic"
                assert echoed["ResponseMetadata"]["HTTPStatusCode"] == 200
            # Each container saw exactly its own two calls.
            for host in HOSTS:
                assert (await container_stats(router, endpoint, host))["invocations"] == 2


async def test_direct_validation_errors(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        direct = await deploy(router, multi_model("dv", [container("a"), container("b")], "Direct"))
        serial = await deploy(
            router, multi_model("sv", [container("first"), container("second")], "Serial")
        )
        with closing(runtime_client(router)) as client:
            unknown = await call_raising(
                client, EndpointName=direct, TargetContainerHostname="zulu", Body=b"x"
            )
            assert isinstance(unknown, client.exceptions.ValidationError), repr(unknown)
            assert _error(unknown)["ResponseMetadata"]["HTTPStatusCode"] == 400
            message = _error(unknown)["Error"]["Message"]
            assert "zulu" in message and direct in message, message

            missing = await call_raising(client, EndpointName=direct, Body=b"x")
            assert isinstance(missing, client.exceptions.ValidationError), repr(missing)
            assert _error(missing)["ResponseMetadata"]["HTTPStatusCode"] == 400
            message = _error(missing)["Error"]["Message"]
            assert "TargetContainerHostname" in message and direct in message, message

            on_serial = await call_raising(
                client, EndpointName=serial, TargetContainerHostname="first", Body=b"x"
            )
            assert isinstance(on_serial, client.exceptions.ValidationError), repr(on_serial)
            assert _error(on_serial)["ResponseMetadata"]["HTTPStatusCode"] == 400
            message = _error(on_serial)["Error"]["Message"]
            assert "TargetContainerHostname" in message and serial in message, message
            assert "Direct" in message, message

            nowhere = await call_raising(client, EndpointName="no-such-endpoint", Body=b"x")
            assert isinstance(nowhere, client.exceptions.ValidationError), repr(nowhere)
            assert _error(nowhere)["ResponseMetadata"]["HTTPStatusCode"] == 400
            assert "no-such-endpoint" in _error(nowhere)["Error"]["Message"]

            # None of these rejected calls reached a container.
            for endpoint, hosts in ((direct, ["a", "b"]), (serial, ["first", "second"])):
                for host in hosts:
                    assert (await container_stats(router, endpoint, host))["invocations"] == 0


async def test_custom_attributes_round_trip(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, multi_model("ca", [container("a")], "Direct"))
        with closing(runtime_client(router)) as client:
            attributes = 'trace=Root-1-abc;user=someone@example.com;c1="quoted value"'
            response = await invoke(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"payload",
                CustomAttributes=attributes,
            )
            assert response["CustomAttributes"] == attributes
            assert response["Body"] == b"payload"

            # The container sets none when it received none: none comes back.
            plain = await invoke(
                client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"payload"
            )
            assert "CustomAttributes" not in plain


async def test_header_allowlist_from_boto3(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(
            router, multi_model("allow", [container("a"), container("b")], "Direct")
        )
        with closing(runtime_client(router)) as client:
            response = await invoke(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="b",
                ContentType="text/csv; charset=utf-8",
                Accept="application/x-labels",
                CustomAttributes="action=headers",
                InferenceId="inference-42",
                EnableExplanations="`true`",
                Body=b"1,2",
            )
        report = json.loads(response["Body"])
        received = {name.lower(): value for name, value in report["headers"]}
        # The router started a trace for this request (tests/integration/test_trace_context.py).
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", received.pop("traceparent"))
        assert received == {
            "host": f"127.0.0.1:{container_port(router, endpoint, 'b')}",
            "x-amzn-sagemaker-custom-attributes": "action=headers",
            "x-amzn-sagemaker-inference-id": "inference-42",
            "x-amzn-sagemaker-enable-explanations": "`true`",
            "content-type": "text/csv; charset=utf-8",
            "accept": "application/x-labels",
            "content-length": "3",
        }, report["headers"]
        assert report["method"] == "POST" and report["path"] == "/invocations"
        assert report["body"] == "1,2"


async def test_header_allowlist_drops_credentials_and_hop_by_hop(config_factory: Any) -> None:
    """Authorization, X-Amz-*, cookies, the target header, hop-by-hop headers and headers named
    in Connection never reach the container, even allowlisted ones."""
    model = multi_model("hop", [container("a", FAULT_DEFAULT_ACTION="headers")], "Direct")
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        port = router.runtime_port
        body = b'{"x": 1}'
        request = (
            f"POST /endpoints/{endpoint}/invocations HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/"
            "sagemaker/aws4_request, SignedHeaders=host, Signature=abc\r\n"
            "X-Amz-Date: 20240101T000000Z\r\n"
            "X-Amz-Security-Token: secret-token\r\n"
            "X-Amz-Content-SHA256: UNSIGNED-PAYLOAD\r\n"
            "Cookie: session=secret\r\n"
            "Proxy-Authorization: Basic c2VjcmV0\r\n"
            "Keep-Alive: timeout=5\r\n"
            "TE: trailers\r\n"
            "X-Forwarded-For: 10.0.0.1\r\n"
            "X-Amzn-SageMaker-Target-Container-Hostname: a\r\n"
            "X-Amzn-SageMaker-Session-Id: session-in-connection\r\n"
            "X-Amzn-SageMaker-Inference-Id: kept-id\r\n"
            "Connection: close, X-Amzn-SageMaker-Session-Id, X-Forwarded-For\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        ).encode() + body
        status, headers, answer = await http_exchange(port, request)
        assert status == 200, answer
        assert headers["x-amzn-invoked-production-variant"] == "AllTraffic"
        report = json.loads(answer)
        names = sorted(name.lower() for name, _ in report["headers"])
        assert names == [
            "content-length",
            "content-type",
            "host",
            "traceparent",  # the router's own: the client sent none
            "x-amzn-sagemaker-inference-id",
        ], report["headers"]
        assert report["body"] == body.decode()


async def test_ping_on_runtime_and_admin_ports(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        assert await http_get(router.runtime_port, "/ping") == (200, b"")
        status, _ = await http_get(router.admin_port, "/ping")
        assert status == 200


async def test_keep_alive_connections_are_reused(config_factory: Any) -> None:
    # No periodic pings during the test: each is a connection of its own, and one accepted but
    # not yet read when /stats answers would be counted as a connection but not as a ping.
    health = HealthSettings(startup_ping_interval_seconds=0.05, ping_interval_seconds=60.0)
    async with running_router(config_factory(health=health)) as router:
        endpoint = await deploy(router, multi_model("ka", [container("a")], "Direct"))
        before = await container_stats(router, endpoint, "a")
        with closing(runtime_client(router)) as client:
            for i in range(50):
                response = await invoke(
                    client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"%d" % i
                )
                assert response["Body"] == b"%d" % i
        after = await container_stats(router, endpoint, "a")
        assert after["invocations"] - before["invocations"] == 50
        assert after["pings"] == before["pings"], (before, after)
        # Accepted sockets since `before` = the second /stats request + the router's data-plane
        # connections: 50 sequential calls need exactly one of those.
        assert after["connections"] - before["connections"] - 1 == 1, (before, after)


async def test_containers_get_bind_port_and_disjoint_safe_port_ranges(config_factory: Any) -> None:
    model = multi_model("ports", [container(h) for h in HOSTS], "Direct")
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        size = router.config.process.safe_port_range_size
        ranges: list[range] = []
        with closing(runtime_client(router)) as client:
            for host in HOSTS:
                response = await invoke(
                    client,
                    EndpointName=endpoint,
                    TargetContainerHostname=host,
                    Body=b"",
                    CustomAttributes="action=env",
                )
                env = json.loads(response["Body"])
                bind_port = int(env["SAGEMAKER_BIND_TO_PORT"])
                assert bind_port == container_port(router, endpoint, host)
                # Never from the kernel's ephemeral range: some model servers refuse > 32767.
                settings = router.config.process
                assert settings.bind_port_range_start <= bind_port < 32768
                assert bind_port < settings.bind_port_range_start + settings.bind_port_range_size
                first, _, last = env["SAGEMAKER_SAFE_PORT_RANGE"].partition("-")
                block = range(int(first), int(last) + 1)
                assert len(block) == size, env
                assert bind_port not in block
                running = slot_of(router, endpoint, host).container
                assert getattr(running, "safe_range", None) == (block[0], block[-1])
                ranges.append(block)
        ports = [container_port(router, endpoint, h) for h in HOSTS]
        assert len(set(ports)) == 3
        for i, one in enumerate(ranges):
            for other in ranges[i + 1 :]:
                assert not set(one) & set(other), (one, other)


def _free_run(length: int, low: int = 31000, high: int = 32700) -> int:
    """The first port of ``length`` consecutive ports nobody listens on, below 32768."""
    for start in range(low, high - length):
        if all(port_is_free("127.0.0.1", port) for port in range(start, start + length)):
            return start
    raise AssertionError("no run of free ports below 32768")


async def test_bind_ports_come_from_the_configured_range_skipping_ports_in_use(
    config_factory: Any,
) -> None:
    start = _free_run(4)
    settings = ProcessSettings(
        stop_grace_seconds=3.0, bind_port_range_start=start, bind_port_range_size=4
    )
    with socket.create_server(("127.0.0.1", start + 1)):  # someone else's server in the range
        async with running_router(config_factory(process=settings)) as router:
            endpoint = await deploy(
                router, multi_model("ranged", [container(h) for h in HOSTS], "Direct")
            )
            ports = sorted(container_port(router, endpoint, host) for host in HOSTS)
            assert ports == [start, start + 2, start + 3]
            # The range is used up: the next container cannot start, and says why.
            with pytest.raises(EndpointStartupError) as caught:
                await deploy(router, multi_model("one-more", [container("extra")], "Direct"))
            assert "no free SAGEMAKER_BIND_TO_PORT left" in caught.value.message


async def test_unmapped_image_is_refused_at_create_model(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        model = multi_model(
            "unmapped",
            [container("a", ECHO_IMAGE), container("b", "123.dkr.ecr/unknown:1")],
            "Direct",
        )
        with pytest.raises(ValidationError) as caught:
            router.create_model(model)
        assert caught.value.field == "Containers[1].Image"
        assert "Containers[1].Image" in caught.value.message
        assert "123.dkr.ecr/unknown:1" in caught.value.message
        assert "unmapped" not in router.models
