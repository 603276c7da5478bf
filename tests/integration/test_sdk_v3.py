"""The SageMaker Python SDK v3 resources (``sagemaker.core.resources``: Model, EndpointConfig,
Endpoint) against the router with only endpoint variables set: create, get, invoke, invoke with
response stream, delete, as a user would against AWS.

Marker ``sdk3``; needs ``sagemaker-core>=2`` (the ``sdk3`` extra), which owns the ``sagemaker``
package just as the v2 SDK of the ``test`` extra does, so it runs in a virtual environment of
its own (README "Two commands"); anywhere else these tests are skipped. Nothing may leave the
machine: every other AWS endpoint points at a loopback port that refuses, and proxy-honouring
HTTP clients go to a recording listener on loopback; the tests fail if anything went there.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import os
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from conftest import nothing_leaves_the_machine, running_router

pytestmark = pytest.mark.sdk3

ROLE = "arn:aws:iam::000000000000:role/x"


def _resources() -> Any:
    try:
        version = importlib.metadata.version("sagemaker-core")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    if int(version.split(".")[0]) < 2:
        pytest.skip(
            "needs the SageMaker SDK v3 resources (sagemaker-core>=2), which cannot share a "
            "virtual environment with the v2 SDK: pip install -e '.[sdk3]' in a venv of its own"
        )
    return importlib.import_module("sagemaker.core.resources")


@pytest.fixture
def only_endpoint_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """A user's environment: credentials, a region, and nothing else from AWS. Yields what
    reached the recording proxy (must stay empty)."""
    for name in list(os.environ):
        if name.startswith("SAGEMAKER_"):
            monkeypatch.delenv(name)
    with nothing_leaves_the_machine(monkeypatch) as outside:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        yield outside


def _point_at(router: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The two lines a user sets (README "SageMaker Python SDK").
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", router.admin_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", router.runtime_url)
    # The SDK caches its boto3 clients per process: start from none pointed elsewhere.
    importlib.import_module("sagemaker.core.utils.utils").SageMakerClient.reset()


def _deploy(resources: Any, name: str, containers: list[Any], mode: str) -> Any:
    shapes = importlib.import_module("sagemaker.core.shapes")
    model = resources.Model.create(
        model_name=name,
        containers=containers,
        inference_execution_config=shapes.InferenceExecutionConfig(mode=mode),
        execution_role_arn=ROLE,
    )
    config = resources.EndpointConfig.create(
        endpoint_config_name=name,
        production_variants=[
            shapes.ProductionVariant(
                variant_name="AllTraffic",
                model_name=name,
                initial_instance_count=1,
                instance_type="ml.m5.large",
            )
        ],
    )
    endpoint = resources.Endpoint.create(endpoint_name=name, endpoint_config_name=name)
    endpoint.wait_for_status("InService", poll=1, timeout=60)
    return model, config, endpoint


async def test_sdk_v3_resources_create_get_invoke_delete(
    config_factory: Any, only_endpoint_variables: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = _resources()
    shapes = importlib.import_module("sagemaker.core.shapes")
    async with running_router(config_factory()) as router:
        _point_at(router, monkeypatch)

        def scenario() -> dict[str, Any]:
            containers = [
                shapes.ContainerDefinition(container_hostname=role, image=f"example/{role}:latest")
                for role in ("preprocess", "model")
            ]
            model, config, endpoint = _deploy(resources, "v3-direct", containers, "Direct")
            got = resources.Endpoint.get(endpoint_name="v3-direct")
            described_model = resources.Model.get(model_name="v3-direct")
            output = got.invoke(
                body=b"1,2,3",
                content_type="text/csv",
                target_container_hostname="preprocess",
            )
            scored = got.invoke(
                body=b'{"instances": [[1, 2, 3]]}',
                content_type="application/json",
                target_container_hostname="model",
            )
            # A single-container model given as PrimaryContainer comes back as one.
            primary = resources.Model.create(
                model_name="v3-primary",
                primary_container=shapes.ContainerDefinition(image="example/model:latest"),
                execution_role_arn=ROLE,
            )
            primary_back = resources.Model.get(model_name="v3-primary")
            endpoint.delete()
            endpoint.wait_for_delete(poll=1, timeout=60)
            config.delete()
            model.delete()
            primary.delete()
            return {
                "status": got.endpoint_status,
                "variant": got.production_variants[0].variant_name,
                "hostnames": [c.container_hostname for c in described_model.containers],
                "mode": described_model.inference_execution_config.mode,
                "body": output.body,
                "content_type": output.content_type,
                "invoked_variant": output.invoked_production_variant,
                "scored": scored.body,
                "primary_image": primary_back.primary_container.image,
            }

        result = await asyncio.to_thread(scenario)
        assert router.list_endpoints({})["Endpoints"] == []
    assert result["status"] == "InService" and result["variant"] == "AllTraffic"
    assert result["hostnames"] == ["preprocess", "model"] and result["mode"] == "Direct"
    assert _bytes(result["body"]) == b'{"instances":[[1.0,2.0,3.0]]}'
    assert result["content_type"] == "application/json"
    assert result["invoked_variant"] == "AllTraffic"
    assert _bytes(result["scored"]) == b'{"predictions":[1.375]}'
    assert result["primary_image"] == "example/model:latest"


async def test_sdk_v3_invoke_with_response_stream(
    config_factory: Any, only_endpoint_variables: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = _resources()
    shapes = importlib.import_module("sagemaker.core.shapes")
    async with running_router(config_factory()) as router:
        _point_at(router, monkeypatch)

        def scenario() -> bytes:
            containers = [shapes.ContainerDefinition(image="example/echo:latest")]
            _, _, endpoint = _deploy(resources, "v3-stream", containers, "Serial")
            assert _bytes(endpoint.invoke(body=b"ping", content_type="text/plain").body) == (
                b"ping"
            )
            try:
                output = endpoint.invoke_with_response_stream(
                    body=b"stream me", content_type="text/plain"
                )
                return b"".join(event.payload_part.bytes for event in output.body)
            except AttributeError as exc:
                # sagemaker-core (2.27 and earlier) transforms boto3's answer as if Body were
                # a dict, and boto3's Body is always an EventStream, so this call fails in the
                # SDK against AWS too, after the router answered. Read the same stream with the
                # boto3 client the variables point at (README "SageMaker Python SDK").
                if "'EventStream' object has no attribute 'get'" not in str(exc):
                    raise
                _close_abandoned_streams(exc)
            runtime = importlib.import_module("boto3").client("sagemaker-runtime")
            with closing(runtime):
                answer = runtime.invoke_endpoint_with_response_stream(
                    EndpointName="v3-stream", Body=b"stream me", ContentType="text/plain"
                )
                return b"".join(event["PayloadPart"]["Bytes"] for event in answer["Body"])

        streamed = await asyncio.to_thread(scenario)
    assert streamed == b"stream me"


def _close_abandoned_streams(exc: BaseException) -> None:
    """Close the EventStream the SDK dropped when its transform failed (its connection would
    otherwise be left open until garbage collection, a ResourceWarning here)."""
    stream_type = importlib.import_module("botocore.eventstream").EventStream
    traceback = exc.__traceback__
    while traceback is not None:
        for value in traceback.tb_frame.f_locals.values():
            body = value.get("Body") if isinstance(value, dict) else None
            if isinstance(body, stream_type):
                body.close()
        traceback = traceback.tb_next


def _bytes(body: Any) -> bytes:
    """The SDK hands the body over as bytes or as botocore's StreamingBody."""
    return body if isinstance(body, bytes) else bytes(body.read())
