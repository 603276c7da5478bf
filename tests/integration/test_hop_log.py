"""The hop log (``GET /hop-log`` on the admin port): the last N failing Serial requests, every
stage's status, latency, size and content type; the failing stage's input only when enabled,
size-capped, and with authentication on only when a second switch allows it."""

from __future__ import annotations

import base64
import json
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import (
    call_raising,
    container,
    deploy,
    http_exchange,
    http_get,
    invoke,
    multi_model,
    running_router,
    runtime_client,
    signed_client,
)

from mce_router.config import TracingSettings
from mce_router.security import AuthConfig

KEY = ("AKIDHOPS", "hops-secret-key-0123456789")


def _pipeline() -> dict[str, Any]:
    return multi_model(
        "hops",
        [
            container("first", FAULT_RESPONSE_CONTENT_TYPE="application/x-first"),
            container("second", FAULT_DEFAULT_ACTION="status:503"),
            container("third"),
        ],
        "Serial",
    )


async def _hop_log(port: int) -> dict[str, Any]:
    status, body = await http_get(port, "/hop-log")
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


async def test_failing_serial_requests_are_logged_stage_by_stage(config_factory: Any) -> None:
    tracing = TracingSettings(
        hop_log_enabled=True, hop_log_size=2, hop_log_capture_input=True, hop_log_input_max_bytes=5
    )
    async with running_router(config_factory(tracing=tracing)) as router:
        endpoint = await deploy(router, _pipeline())
        with closing(runtime_client(router)) as client:
            for body in (b"one-0123456789", b"two-0123456789", b"three-0123456789"):
                error = await call_raising(
                    client, EndpointName=endpoint, ContentType="text/csv", Body=body
                )
                assert isinstance(error, client.exceptions.ModelError)
        log = await _hop_log(router.admin_port)
    assert log["size"] == 2 and log["recorded"] == 3
    assert len(log["entries"]) == 2  # the last N only, oldest first
    entry = log["entries"][-1]
    assert entry["endpoint"] == endpoint and entry["variant"] == "AllTraffic"
    assert entry["status"] == 424 and entry["error_code"] == "ModelError"
    assert entry["failed_stage"] == 1 and entry["failed_container"] == "second"
    assert entry["pipeline"] == ["first", "second", "third"]
    assert len(entry["trace_id"]) == 32
    first, second = entry["stages"]  # the third was never called
    assert first["container"] == "first" and first["status"] == 200
    assert first["input_size"] == len(b"three-0123456789")
    assert first["input_content_type"] == "text/csv"
    assert first["output_content_type"] == "application/x-first"
    assert second["container"] == "second" and second["status"] == 503
    assert second["input_size"] == first["output_size"]
    assert second["input_content_type"] == "application/x-first"
    for stage in (first, second):
        assert 0 < stage["latency_seconds"] < 10
    # The failing stage's input is what the first stage answered (an echo), capped at 5 bytes.
    captured = entry["failed_stage_input"]
    assert captured["content_type"] == "application/x-first"
    assert captured["size"] == len(b"three-0123456789") and captured["truncated"] is True
    assert base64.b64decode(captured["base64"]) == b"three"


async def test_succeeding_and_direct_requests_are_not_logged_and_input_is_off_by_default(
    config_factory: Any,
) -> None:
    tracing = TracingSettings(hop_log_enabled=True)
    model = _pipeline()
    del model["Containers"][1]["Environment"]["FAULT_DEFAULT_ACTION"]
    async with running_router(config_factory(tracing=tracing)) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            await invoke(client, EndpointName=endpoint, Body=b"fine")
            error = await call_raising(
                client, EndpointName=endpoint, CustomAttributes="action=status:400", Body=b"x"
            )
            assert isinstance(error, client.exceptions.ModelError)
        log = await _hop_log(router.admin_port)
    (entry,) = log["entries"]
    assert entry["failed_stage"] == 0 and [s["status"] for s in entry["stages"]] == [400]
    assert "failed_stage_input" not in entry


async def test_hop_log_is_404_when_off(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        status, body = await http_get(router.admin_port, "/hop-log")
    assert status == 404 and b"hop_log_enabled" in body


def _auth() -> AuthConfig:
    return AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "credentials": [
                {
                    "access_key_id": KEY[0],
                    "secret_access_key": KEY[1],
                    "principal": "arn:aws:iam::000000000000:user/ops",
                    "policies": [
                        {
                            "Version": "2012-10-17",
                            "Statement": [
                                {"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}
                            ],
                        }
                    ],
                }
            ],
        },
        Path.cwd(),
    )


def _signed_get(url: str, key: tuple[str, str]) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(*key), "sagemaker", "us-east-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("with_auth_switch", [False, True])
async def test_with_auth_the_log_is_signed_and_input_needs_a_second_switch(
    config_factory: Any, with_auth_switch: bool
) -> None:
    tracing = TracingSettings(
        hop_log_enabled=True,
        hop_log_capture_input=True,
        hop_log_capture_input_with_auth=with_auth_switch,
    )
    async with running_router(config_factory(tracing=tracing, auth=_auth())) as router:
        endpoint = await deploy(router, _pipeline())
        with closing(signed_client("sagemaker-runtime", router.runtime_url, KEY)) as client:
            error = await call_raising(client, EndpointName=endpoint, Body=b"secret")
            assert isinstance(error, client.exceptions.ModelError)
        status, body = await http_get(router.admin_port, "/hop-log")
        assert status == 403, body  # unsigned
        url = f"{router.admin_url}/hop-log"
        headers = _signed_get(url, KEY)
        request = "GET /hop-log HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        status, _, answer = await http_exchange(
            router.admin_port,
            (request + f"Host: {url.split('/')[2]}\r\nConnection: close\r\n\r\n").encode(),
        )
    assert status == 200, answer
    (entry,) = json.loads(answer)["entries"]
    assert entry["failed_container"] == "second"
    assert ("failed_stage_input" in entry) is with_auth_switch
