"""Limits: the 6 MiB payload boundary (checked before any container is contacted) and the number
of containers per model (15 by default, configurable)."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pytest
from conftest import (
    call_raising,
    container,
    container_stats,
    deploy,
    http_exchange,
    invoke,
    multi_model,
    running_router,
    runtime_client,
)

from mce_router import ValidationError
from mce_router.config import Limits

SIX_MIB = 6 * 1024 * 1024


async def test_exactly_6_mib_is_accepted_and_one_byte_more_rejected(config_factory: Any) -> None:
    assert SIX_MIB == 6291456
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, multi_model("six", [container("a")], "Direct"))
        payload = bytes(range(256)) * (SIX_MIB // 256)
        assert len(payload) == SIX_MIB
        with closing(runtime_client(router)) as client:
            response = await invoke(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                ContentType="application/octet-stream",
                Body=payload,
            )
            assert response["Body"] == payload
            before = await container_stats(router, endpoint, "a")
            assert before["invocations"] == 1

            error = await call_raising(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                ContentType="application/octet-stream",
                Body=payload + b"!",
            )
            assert isinstance(error, client.exceptions.ValidationError), repr(error)
            wire: dict[str, Any] = error.response  # type: ignore[attr-defined]
            assert wire["ResponseMetadata"]["HTTPStatusCode"] == 413
            assert "6291457" in wire["Error"]["Message"]
            assert "6291456" in wire["Error"]["Message"]

            after = await container_stats(router, endpoint, "a")
            assert after["invocations"] == before["invocations"], (before, after)
            # Requests other than health pings since `before`: only this /stats request.
            requests = after["requests"] - before["requests"]
            assert requests - (after["pings"] - before["pings"]) == 1, (before, after)

            # The router still serves after the rejection.
            small = await invoke(
                client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"small"
            )
            assert small["Body"] == b"small"


async def test_oversized_chunked_body_is_rejected_before_the_container(config_factory: Any) -> None:
    """Without Content-Length the limit is enforced while the body streams in."""
    limits = Limits(max_request_body_bytes=1000)
    async with running_router(config_factory(limits=limits)) as router:
        endpoint = await deploy(router, multi_model("chunk", [container("a")], "Direct"))
        port = router.runtime_port

        def chunked(size: int) -> bytes:
            return (
                (
                    f"POST /endpoints/{endpoint}/invocations HTTP/1.1\r\nHost: x\r\n"
                    "X-Amzn-SageMaker-Target-Container-Hostname: a\r\n"
                    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    f"{size:x}\r\n"
                ).encode()
                + b"y" * size
                + b"\r\n0\r\n\r\n"
            )

        status, headers, body = await http_exchange(port, chunked(1000))
        assert status == 200, body
        assert body == b"y" * 1000
        status, headers, body = await http_exchange(port, chunked(1001))
        assert status == 413, body
        assert headers["x-amzn-errortype"].startswith("ValidationError:")
        assert b"1000-byte limit" in body
        assert (await container_stats(router, endpoint, "a"))["invocations"] == 1


async def test_fifteen_container_direct_endpoint(config_factory: Any) -> None:
    hosts = [f"c{i:02d}" for i in range(1, 16)]
    model = multi_model("fifteen", [container(h, TEST_WHO=h) for h in hosts], "Direct")
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            for host in hosts:
                response = await invoke(
                    client,
                    EndpointName=endpoint,
                    TargetContainerHostname=host,
                    Body=host.encode(),
                    CustomAttributes="action=env",
                )
                assert b'"TEST_WHO": "%s"' % host.encode() in response["Body"], host
        ports = {slot.container.port for slot in router.endpoints[endpoint].deployment.slots}  # type: ignore[union-attr]
        assert len(ports) == 15


@pytest.mark.parametrize(("limit", "count"), [(None, 16), (3, 4)])
async def test_too_many_containers_refused(
    config_factory: Any, limit: int | None, count: int
) -> None:
    limits = Limits() if limit is None else Limits(max_containers_per_model=limit)
    expected = 15 if limit is None else limit
    async with running_router(config_factory(limits=limits)) as router:
        model = multi_model("toomany", [container(f"c{i}") for i in range(count)], "Direct")
        with pytest.raises(ValidationError) as caught:
            router.create_model(model)
        assert caught.value.field == "Containers"
        assert "Containers" in caught.value.message
        assert f"less than or equal to {expected}" in caught.value.message
        assert "toomany" not in router.models
        # One fewer is fine.
        router.create_model(
            multi_model("justright", [container(f"c{i}") for i in range(count - 1)], "Direct")
        )


async def test_request_rejections_answer_with_their_own_error(config_factory: Any) -> None:
    """Rules checked while the request is parsed answer with their own status and message (not
    a generic "malformed request"), and nothing reaches the container."""
    limits = Limits(max_header_count=20, max_header_bytes=2048)
    async with running_router(config_factory(limits=limits)) as router:
        endpoint = await deploy(router, multi_model("rules", [container("a")], "Direct"))
        port = router.runtime_port
        path = f"/endpoints/{endpoint}/invocations"

        def request(*headers: str, target: str = path) -> bytes:
            lines = [
                f"POST {target} HTTP/1.1",
                "Host: x",
                "X-Amzn-SageMaker-Target-Container-Hostname: a",
                *headers,
                "Content-Length: 1",
                "Connection: close",
            ]
            return ("\r\n".join(lines) + "\r\n\r\ny").encode()

        cases = [
            (request(*(f"X-Extra-{i}: v" for i in range(30))), 431, b"exceed the limit of 20"),
            (request(target=path + "?" + "q" * 3000), 431, b"URL is too long"),
            (request("Content-Type: a", "content-type: b"), 400, b"appears more than once"),
            (
                request("X-Amzn-SageMaker-Custom-Attributes: " + "c" * 1025),
                400,
                b"at most 1024 printable ASCII",
            ),
            (request("X-Amzn-SageMaker-Inference-Id: " + "i" * 65), 400, b"1 to 64 characters"),
        ]
        for raw, status, text in cases:
            got, headers, body = await http_exchange(port, raw)
            assert (got, text in body) == (status, True), (status, text, got, body)
            assert headers["x-amzn-errortype"].startswith("ValidationError:"), headers
            assert headers["connection"] == "close"
        assert (await container_stats(router, endpoint, "a"))["invocations"] == 0

        with closing(runtime_client(router)) as client:
            error = await call_raising(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"x",
                CustomAttributes="c" * 1025,
            )
            assert isinstance(error, client.exceptions.ValidationError), repr(error)
            wire: dict[str, Any] = error.response  # type: ignore[attr-defined]
            assert "CustomAttributes must be at most 1024" in wire["Error"]["Message"]
