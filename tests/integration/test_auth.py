"""SigV4 authentication and IAM authorization on both planes, with real boto3 clients."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import FAULT_IMAGE, deploy, invoke, running_router

from mce_router import Router, RouterConfig
from mce_router.config import Listener
from mce_router.errors import ConfigError
from mce_router.security import AuthConfig

REGION = "us-east-1"
ACCOUNT = "000000000000"
ALICE = ("AKIDALICE", "alice-secret-key-0123456789")
BOB = ("AKIDBOB", "bob-secret-key-0123456789")
ADMIN = ("AKIDADMIN", "admin-secret-key-0123456789")


def seed_allow_prefixes(endpoint: str) -> dict[str, Any]:
    """The seed document's first policy: only containers matching customIps* or common*."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Action": ["sagemaker:InvokeEndpoint"],
                "Effect": "Allow",
                "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{endpoint}",
                "Condition": {
                    "StringLike": {"sagemaker:TargetContainerHostname": ["customIps*", "common*"]}
                },
            }
        ],
    }


def seed_deny_special(endpoint: str) -> dict[str, Any]:
    """The seed document's second policy: any container but special*."""
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{endpoint}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Action": ["sagemaker:InvokeEndpoint"],
                "Effect": "Allow",
                "Resource": arn,
                "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["*"]}},
            },
            {
                "Action": ["sagemaker:InvokeEndpoint"],
                "Effect": "Deny",
                "Resource": arn,
                "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["special*"]}},
            },
        ],
    }


ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}],
}


def auth_config(endpoint: str) -> AuthConfig:
    return AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "credentials": [
                {
                    "access_key_id": ALICE[0],
                    "secret_access_key": ALICE[1],
                    "principal": f"arn:aws:iam::{ACCOUNT}:user/alice",
                    "policies": [seed_allow_prefixes(endpoint)],
                },
                {
                    "access_key_id": BOB[0],
                    "secret_access_key": BOB[1],
                    "principal": f"arn:aws:iam::{ACCOUNT}:user/bob",
                    "policies": [seed_deny_special(endpoint)],
                },
                {
                    "access_key_id": ADMIN[0],
                    "secret_access_key": ADMIN[1],
                    "principal": f"arn:aws:iam::{ACCOUNT}:user/admin",
                    "policies": [ADMIN_POLICY],
                },
            ],
        },
        Path.cwd(),
    )


def client(service: str, url: str, key: tuple[str, str]) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


async def error_code(call: Callable[..., Any], **kwargs: Any) -> tuple[str, int, str]:
    try:
        response = await asyncio.to_thread(call, **kwargs)
    except ClientError as exc:
        error = exc.response["Error"]
        return error["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"], error["Message"]
    if "Body" in response:
        response["Body"].read()
    return "OK", 200, ""


async def test_runtime_and_control_plane_enforce_sigv4_and_the_seed_policies(
    config_factory: Callable[..., RouterConfig],
) -> None:
    endpoint = "guarded"
    config = config_factory(auth=auth_config(endpoint))
    async with running_router(config) as router:
        await deploy(
            router,
            {
                "ModelName": endpoint,
                "InferenceExecutionConfig": {"Mode": "Direct"},
                "Containers": [
                    {"ContainerHostname": name, "Image": FAULT_IMAGE}
                    for name in ("customIps1", "common", "special1", "other")
                ],
            },
        )
        alice = client("sagemaker-runtime", router.runtime_url, ALICE)
        bob = client("sagemaker-runtime", router.runtime_url, BOB)
        invoke_alice = alice.invoke_endpoint
        invoke_bob = bob.invoke_endpoint

        async def outcome(
            call: Callable[..., Any], target: str | None, name: str = endpoint
        ) -> str:
            kwargs: dict[str, Any] = {"EndpointName": name, "Body": b"x"}
            if target is not None:
                kwargs["TargetContainerHostname"] = target
            return (await error_code(call, **kwargs))[0]

        # Seed policy 1: allow only customIps* and common*.
        assert await outcome(invoke_alice, "customIps1") == "OK"
        assert await outcome(invoke_alice, "common") == "OK"
        assert await outcome(invoke_alice, "special1") == "AccessDeniedException"
        assert await outcome(invoke_alice, "other") == "AccessDeniedException"
        # Absent header: StringLike does not match a missing key, so no Allow applies.
        assert await outcome(invoke_alice, None) == "AccessDeniedException"
        # A denied caller cannot tell whether a container or endpoint exists.
        denied_missing = await error_code(
            invoke_alice, EndpointName=endpoint, TargetContainerHostname="nope", Body=b"x"
        )
        denied_present = await error_code(
            invoke_alice, EndpointName=endpoint, TargetContainerHostname="other", Body=b"x"
        )
        assert denied_missing[:2] == denied_present[:2] == ("AccessDeniedException", 403)
        assert "nope" not in denied_missing[2] and "other" not in denied_present[2]
        assert await outcome(invoke_alice, "customIpsX", "no-such-endpoint") == (
            "AccessDeniedException"
        )
        # An allowed caller gets the router's usual answers.
        assert await outcome(invoke_alice, "customIpsMissing") == "ValidationError"

        # Seed policy 2: anything but special*; explicit Deny wins.
        assert await outcome(invoke_bob, "other") == "OK"
        assert await outcome(invoke_bob, "customIps1") == "OK"
        assert await outcome(invoke_bob, "special1") == "AccessDeniedException"
        assert await outcome(invoke_bob, None) == "AccessDeniedException"

        # Authentication failures, each with the code boto3 raises.
        wrong_secret = client("sagemaker-runtime", router.runtime_url, (ALICE[0], "wrong"))
        code, status, message = await error_code(
            wrong_secret.invoke_endpoint,
            EndpointName=endpoint,
            TargetContainerHostname="common",
            Body=b"x",
        )
        assert (code, status) == ("InvalidSignatureException", 403)
        assert ALICE[1] not in message
        unknown = client("sagemaker-runtime", router.runtime_url, ("AKIDUNKNOWN", "x"))
        code, status, _ = await error_code(
            unknown.invoke_endpoint,
            EndpointName=endpoint,
            TargetContainerHostname="common",
            Body=b"x",
        )
        assert (code, status) == ("UnrecognizedClientException", 403)
        # Every refusal is counted, with the endpoint the request named and the reason.
        assert router.metrics is not None
        assert router.metrics.answers.totals == {
            (endpoint, "", 403, "AccessDeniedException"): 7,
            ("no-such-endpoint", "", 403, "AccessDeniedException"): 1,
            (endpoint, "", 400, "ValidationError"): 1,
            (endpoint, "", 403, "InvalidSignatureException"): 1,
            (endpoint, "", 403, "UnrecognizedClientException"): 1,
        }

        # Control plane: alice may not manage anything, admin may.
        sm_alice = client("sagemaker", router.admin_url, ALICE)
        sm_admin = client("sagemaker", router.admin_url, ADMIN)
        code, status, _ = await error_code(sm_alice.describe_endpoint, EndpointName=endpoint)
        assert (code, status) == ("AccessDeniedException", 403)
        code, _, _ = await error_code(sm_alice.list_endpoints)
        assert code == "AccessDeniedException"
        described = await asyncio.to_thread(sm_admin.describe_endpoint, EndpointName=endpoint)
        assert described["EndpointStatus"] == "InService"
        sm_wrong = client("sagemaker", router.admin_url, (ADMIN[0], "wrong"))
        code, status, _ = await error_code(sm_wrong.list_endpoints)
        assert (code, status) == ("InvalidSignatureException", 403)
        # Unsigned requests: boto3 with signing disabled.
        from botocore import UNSIGNED

        unsigned = boto3.client(
            "sagemaker",
            endpoint_url=router.admin_url,
            region_name=REGION,
            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
        )
        code, status, _ = await error_code(unsigned.list_endpoints)
        assert (code, status) == ("MissingAuthenticationTokenException", 403)


async def test_invocations_work_end_to_end_when_signed(
    config_factory: Callable[..., RouterConfig],
) -> None:
    config = config_factory(auth=auth_config("signed"))
    async with running_router(config) as router:
        await deploy(
            router,
            {
                "ModelName": "signed",
                "InferenceExecutionConfig": {"Mode": "Direct"},
                "Containers": [{"ContainerHostname": "common", "Image": FAULT_IMAGE}],
            },
        )
        runtime = client("sagemaker-runtime", router.runtime_url, ALICE)
        response = await invoke(
            runtime,
            EndpointName="signed",
            TargetContainerHostname="common",
            Body=b"payload",
            ContentType="text/plain",
        )
        assert response["Body"] == b"payload"
        # A body large enough to arrive over many reads: the signature covers every byte.
        large = random.Random(3).randbytes(1024 * 1024)
        response = await invoke(
            runtime,
            EndpointName="signed",
            TargetContainerHostname="common",
            Body=large,
            ContentType="application/octet-stream",
        )
        assert response["Body"] == large


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
async def test_unauthenticated_router_refuses_to_listen_beyond_loopback_unless_told(
    config_factory: Callable[..., RouterConfig], host: str, caplog: pytest.LogCaptureFixture
) -> None:
    listener = Listener(host=host, port=0, admin_port=0)
    with pytest.raises(ConfigError, match="without authentication"):
        async with Router(config_factory(listener=listener)):
            pass
    explicit = AuthConfig.from_mapping({"mode": "none"}, Path.cwd())
    async with Router(config_factory(listener=listener, auth=explicit)) as router:
        assert router.guard is None
    assert any("authentication is off" in r.getMessage() for r in caplog.records)


def test_auth_section_in_yaml(tmp_path: Path) -> None:
    (tmp_path / "alice.key").write_text("from-a-file\n")
    (tmp_path / "policy.json").write_text(json.dumps(ADMIN_POLICY))
    (tmp_path / "router.yaml").write_text(
        "auth:\n"
        "  mode: sigv4\n"
        "  credentials:\n"
        "    - access_key_id: AKIDFILE\n"
        "      secret_access_key_file: alice.key\n"
        "      principal: arn:aws:iam::000000000000:user/file\n"
        "      policies: [{file: policy.json}]\n"
    )
    config = RouterConfig.from_file(tmp_path / "router.yaml")
    assert config.auth.enabled
    (credential,) = config.auth.credentials
    assert credential.secret_access_key == "from-a-file"
    assert "from-a-file" not in repr(config)
