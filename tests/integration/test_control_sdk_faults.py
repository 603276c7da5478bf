"""The control-plane and runtime faults that the SageMaker Python SDK (v2, v3) ran into, each
checked with boto3 as the SDK calls it: a PrimaryContainer model described with
PrimaryContainer, the warning for ModelDataUrl, InvokeEndpointAsync refused in SageMaker's error
shape, STS GetCallerIdentity on the admin port, and the endpoint_deleted waiter."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import (
    FAULT_IMAGE,
    call,
    control_client,
    endpoint_config,
    invoke,
    running_router,
    runtime_client,
    validate_output,
    wait_in_service,
)


async def test_a_primary_container_model_is_described_as_given(
    config_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_factory()
    primary = {"Image": FAULT_IMAGE, "ModelDataUrl": "s3://bucket/model.tar.gz"}
    async with running_router(config) as router:
        sm = control_client(router.admin_url)
        with caplog.at_level(logging.WARNING, logger="mce_router.control.catalog"):
            await call(
                sm.create_model,
                ModelName="single",
                PrimaryContainer=primary,
                ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
            )
        # The process runtime ignores ModelDataUrl: CreateModel says so, naming the container
        # and the field.
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "container-1 has PrimaryContainer.ModelDataUrl" in warning.getMessage()
        assert "ignores" in warning.getMessage()
        described = await call(sm.describe_model, ModelName="single")
        validate_output(sm, "DescribeModel", described)
        assert described["PrimaryContainer"] == primary
        assert "Containers" not in described
        assert "InferenceExecutionConfig" not in described
        await call(sm.create_endpoint_config, **endpoint_config("single", "single"))
        await call(sm.create_endpoint, EndpointName="single", EndpointConfigName="single")
        await wait_in_service(sm, "single")
        response = await invoke(runtime_client(router), EndpointName="single", Body=b"hi")
        assert response["Body"] == b"hi"
    async with running_router(config) as router:  # read back from the state file
        sm = control_client(router.admin_url)
        assert (await call(sm.describe_model, ModelName="single"))["PrimaryContainer"] == primary
        await wait_in_service(sm, "single")


async def test_invoke_endpoint_async_is_refused_in_sagemakers_error_shape(
    config_factory: Any,
) -> None:
    async with running_router(config_factory()) as router:
        runtime = runtime_client(router)
        for endpoint in ("any-endpoint", "x"):  # refused before the endpoint is looked up
            with pytest.raises(runtime.exceptions.ValidationError) as caught:
                await call(
                    runtime.invoke_endpoint_async,
                    EndpointName=endpoint,
                    InputLocation="s3://bucket/input.json",
                    ContentType="application/json",
                )
            response = caught.value.response
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
            message = response["Error"]["Message"]
            assert "InvokeEndpointAsync" in message and "not supported" in message
            assert "Call InvokeEndpoint" in message
