"""The control-plane and runtime faults that the SageMaker Python SDK (v2, v3) ran into, each
checked with boto3 as the SDK calls it: a PrimaryContainer model described with
PrimaryContainer, the warning for ModelDataUrl, InvokeEndpointAsync refused in SageMaker's error
shape, STS GetCallerIdentity on the admin port, and the endpoint_deleted waiter."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import (
    FAULT_IMAGE,
    call,
    control_client,
    direct_model,
    endpoint_config,
    invoke,
    running_router,
    runtime_client,
    signed_client,
    validate_output,
    wait_in_service,
    wait_until,
)

from mce_router import Router
from mce_router.config import Limits
from mce_router.security import AuthConfig


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


def sts_client(url: str | None, key: tuple[str, str] = ("AKIDEXAMPLE", "secret")) -> Any:
    return signed_client("sts", url, key)


async def test_sts_get_caller_identity_without_authentication(
    config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_router(config_factory(account_id="123456789012")) as router:
        identity = await call(sts_client(router.admin_url).get_caller_identity)
        validate_output(sts_client(None), "GetCallerIdentity", identity)
        assert (identity["Account"], identity["Arn"], identity["UserId"]) == (
            "123456789012",
            "arn:aws:iam::123456789012:root",
            "123456789012",
        )
        # AWS_ENDPOINT_URL_STS sends a client built without endpoint_url to the router.
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", router.admin_url)
        identity = await call(sts_client(None).get_caller_identity)
        assert identity["Account"] == "123456789012"
        # Other STS actions are refused as STS refuses unknown ones.
        with pytest.raises(ClientError) as caught:
            await call(sts_client(router.admin_url).get_session_token)
        assert caught.value.response["Error"]["Code"] == "InvalidAction"
        assert "GetCallerIdentity only" in caught.value.response["Error"]["Message"]
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        # The SageMaker API on the same path is unaffected.
        assert (await call(control_client(router.admin_url).list_models))["Models"] == []


async def test_sts_get_caller_identity_answers_the_signing_key(config_factory: Any) -> None:
    alice = ("AKIDALICE", "alice-secret-key-0123456789")
    other = ("AKIDOTHER", "other-secret-key-0123456789")
    deny_all = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}],
    }
    auth = AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "account_id": "000000000000",
            "credentials": [
                {
                    "access_key_id": alice[0],
                    "secret_access_key": alice[1],
                    "principal": "arn:aws:iam::000000000000:user/alice",
                    "policies": [deny_all],
                },
                {
                    "access_key_id": other[0],
                    "secret_access_key": other[1],
                    "principal": "arn:aws:sts::111122223333:assumed-role/ml/session",
                    "policies": [deny_all],
                },
            ],
        },
        Path.cwd(),
    )
    async with running_router(config_factory(auth=auth)) as router:
        # A Deny of everything does not stop it: AWS answers GetCallerIdentity regardless.
        identity = await call(sts_client(router.admin_url, alice).get_caller_identity)
        assert (identity["Account"], identity["Arn"], identity["UserId"]) == (
            "000000000000",
            "arn:aws:iam::000000000000:user/alice",
            "AKIDALICE",
        )
        identity = await call(sts_client(router.admin_url, other).get_caller_identity)
        assert identity["Account"] == "111122223333"
        assert identity["Arn"] == "arn:aws:sts::111122223333:assumed-role/ml/session"
        for key, code in (
            ((alice[0], "wrong-secret"), "SignatureDoesNotMatch"),
            (("AKIDNOBODY", "x"), "InvalidClientTokenId"),
        ):
            with pytest.raises(ClientError) as caught:
                await call(sts_client(router.admin_url, key).get_caller_identity)
            assert caught.value.response["Error"]["Code"] == code
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_endpoint_deleted_waiter_succeeds_within_the_drain_time(config_factory: Any) -> None:
    """DeleteEndpoint on a Direct endpoint: DescribeEndpoint says Deleting, then the waiter's
    ValidationException "Could not find endpoint" comes once in-flight requests finished or the
    drain time ran out, and the containers (which exit on SIGTERM) stopped."""
    drain = 2.0
    config = config_factory(limits=Limits(drain_timeout_seconds=drain))
    async with running_router(config) as router:
        sm = control_client(router.admin_url)
        await call(sm.create_model, **direct_model("direct", ["a", "b"]))
        await call(sm.create_endpoint_config, **endpoint_config("direct", "direct"))
        for name, hang in (("idle", False), ("busy", True)):
            await call(sm.create_endpoint, EndpointName=name, EndpointConfigName="direct")
            await wait_in_service(sm, name)
            hanging = None
            if hang:  # a request still in flight when DeleteEndpoint arrives
                hanging = asyncio.ensure_future(
                    invoke(
                        runtime_client(router, read_timeout=30),
                        EndpointName=name,
                        TargetContainerHostname="a",
                        CustomAttributes="action=hang",
                        Body=b"x",
                    )
                )
                await wait_until(_in_flight(router, name), 5, "the request to reach the container")
            started = time.monotonic()
            await call(sm.delete_endpoint, EndpointName=name)
            described = await call(sm.describe_endpoint, EndpointName=name)
            assert described["EndpointStatus"] == "Deleting"
            waiter = sm.get_waiter("endpoint_deleted")
            delay = 0.1
            await call(
                waiter.wait,
                EndpointName=name,
                WaiterConfig={"Delay": delay, "MaxAttempts": int((drain + 1.5) / delay)},
            )
            elapsed = time.monotonic() - started
            # Idle: gone without waiting out the drain time (a loaded machine may take a second).
            assert elapsed < (drain + 1.5 if hang else drain * 0.95), (name, elapsed)
            if hanging is not None:
                # Cut off when its container stopped, with an error naming it.
                with pytest.raises(ClientError, match="from a with message"):
                    await hanging


def _in_flight(router: Router, name: str) -> Any:
    async def check() -> bool:
        deployment = router.endpoints[name].deployment
        return deployment is not None and deployment.in_flight > 0

    return check
