"""AddTags / ListTags / DeleteTags and the Tags of Create*, through boto3: on every resource
type, durable across a restart, gone with their resource, refused as SageMaker refuses, and
authorized as ``sagemaker:<Operation>`` on the ARN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import (
    call,
    control_client,
    direct_model,
    endpoint_config,
    running_router,
    signed_client,
    validate_output,
    wait_in_service,
)

from mce_router import RouterConfig
from mce_router.security import AuthConfig

ARN = "arn:aws:sagemaker:us-east-1:000000000000"


def tags(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in pairs]


async def list_tags(sm: Any, arn: str) -> list[dict[str, str]]:
    response = await call(sm.list_tags, ResourceArn=arn)
    validate_output(sm, "ListTags", response)
    assert "NextToken" not in response
    result: list[dict[str, str]] = response["Tags"]
    return result


async def validation_error(function: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        await call(function, **kwargs)
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    message: str = error["Message"]
    return message


async def test_tags_on_every_resource_durable_and_gone_with_it(config_factory: Any) -> None:
    config: RouterConfig = config_factory()
    model_arn, config_arn, endpoint_arn = (
        f"{ARN}:model/tagged",
        f"{ARN}:endpoint-config/tagged",
        f"{ARN}:endpoint/tagged",
    )
    async with running_router(config) as router:
        sm = control_client(router.admin_url)
        await call(sm.create_model, **direct_model("Tagged", ["a"]), Tags=tags(("team", "search")))
        await call(
            sm.create_endpoint_config, **endpoint_config("Tagged", "Tagged"), Tags=tags(("c", ""))
        )
        await call(
            sm.create_endpoint,
            EndpointName="Tagged",
            EndpointConfigName="Tagged",
            Tags=tags(("stage", "dev"), ("owner", "ml@example.com")),
        )
        assert await list_tags(sm, model_arn) == tags(("team", "search"))
        assert await list_tags(sm, config_arn) == tags(("c", ""))
        assert await list_tags(sm, endpoint_arn) == tags(
            ("stage", "dev"), ("owner", "ml@example.com")
        )
        # AddTags overwrites a key's value in place and appends new keys; the answer echoes
        # what was added. Keys are case-sensitive.
        added = await call(
            sm.add_tags,
            ResourceArn=endpoint_arn,
            Tags=tags(("stage", "prod"), ("Stage", "x"), ("cost:center", "4 2/=+-@._")),
        )
        validate_output(sm, "AddTags", added)
        assert added["Tags"] == tags(
            ("stage", "prod"), ("Stage", "x"), ("cost:center", "4 2/=+-@._")
        )
        # The name part of the ARN compares ignoring case, as the router's names do.
        await call(sm.delete_tags, ResourceArn=f"{ARN}:endpoint/TAGGED", TagKeys=["owner", "none"])
        expected = tags(("stage", "prod"), ("Stage", "x"), ("cost:center", "4 2/=+-@._"))
        assert await list_tags(sm, endpoint_arn) == expected
        # Tags are not part of DescribeModel's output (as in SageMaker).
        assert "Tags" not in await call(sm.describe_model, ModelName="tagged")
        await wait_in_service(sm, "Tagged")

    async with running_router(config) as router:  # the same state file
        sm = control_client(router.admin_url)
        assert await list_tags(sm, endpoint_arn) == expected
        assert await list_tags(sm, model_arn) == tags(("team", "search"))
        await call(sm.delete_model, ModelName="Tagged")
        message = await validation_error(sm.list_tags, ResourceArn=model_arn)
        assert message == f'Could not find model "{model_arn}".'
        await call(sm.create_model, **direct_model("tagged", ["a"]))
        assert await list_tags(sm, model_arn) == []  # a new model starts with no tags
        await call(sm.delete_endpoint, EndpointName="tagged")
        waiter = sm.get_waiter("endpoint_deleted")
        await call(
            waiter.wait, EndpointName="tagged", WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
        )
        message = await validation_error(sm.list_tags, ResourceArn=endpoint_arn)
        assert message == f'Could not find endpoint "{endpoint_arn}".'


async def test_tag_calls_refused_as_sagemaker_refuses_them(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        sm = control_client(router.admin_url)
        await call(sm.create_model, **direct_model("m", ["a"]))
        arn = f"{ARN}:model/m"
        refused: list[tuple[Any, dict[str, Any], str]] = [
            (
                sm.list_tags,
                {"ResourceArn": f"{ARN}:model/absent"},
                f'Could not find model "{ARN}:model/absent".',
            ),
            (
                sm.add_tags,
                {"ResourceArn": f"{ARN}:endpoint-config/absent", "Tags": tags(("k", "v"))},
                "Could not find endpoint configuration",
            ),
            (sm.list_tags, {"ResourceArn": f"{ARN}:training-job/m"}, "model, endpoint-config or"),
            (
                sm.list_tags,
                {"ResourceArn": "arn:aws:sagemaker:eu-west-1:000000000000:model/m"},
                "this router serves region us-east-1 of account 000000000000",
            ),
            (
                sm.list_tags,
                {"ResourceArn": "arn:aws:s3:::bucket"},
                "Member must satisfy regular expression pattern: arn:aws[a-z-]*:sagemaker:",
            ),
            (sm.add_tags, {"ResourceArn": arn, "Tags": tags(("aws:x", "v"))}, "aws:"),
            (sm.add_tags, {"ResourceArn": arn, "Tags": tags(("a b!", "v"))}, "'Tags[0].Key'"),
            (sm.add_tags, {"ResourceArn": arn, "Tags": tags(("k", "v"), ("k", "w"))}, "unique"),
            (sm.add_tags, {"ResourceArn": arn, "Tags": tags(("k", "v" * 257))}, "Tags[0].Value"),
            (sm.list_tags, {"ResourceArn": arn, "NextToken": "x"}, "NextToken"),
        ]
        for function, kwargs, expected in refused:
            message = await validation_error(function, **kwargs)
            assert expected in message, (kwargs, message)
        # At most 50 per resource, counting the ones it has.
        await call(sm.add_tags, ResourceArn=arn, Tags=tags(*((f"k{i}", "v") for i in range(50))))
        message = await validation_error(sm.add_tags, ResourceArn=arn, Tags=tags(("one", "more")))
        assert "at most 50 tags" in message
        await call(sm.add_tags, ResourceArn=arn, Tags=tags(("k0", "overwritten")))
        assert (await list_tags(sm, arn))[0] == {"Key": "k0", "Value": "overwritten"}
        # Bad Tags at Create* refuse the whole call: nothing is created.
        message = await validation_error(
            sm.create_model, **direct_model("bad", ["a"]), Tags=tags(("aws:k", "v"))
        )
        assert "'Tags[0].Key'" in message
        await validation_error(sm.describe_model, ModelName="bad")


async def test_tag_operations_are_authorized_on_the_resource_arn(config_factory: Any) -> None:
    reader = ("AKIDREADER", "reader-secret-key-0123456789")
    admin = ("AKIDADMIN", "admin-secret-key-0123456789")
    auth = AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "credentials": [
                {
                    "access_key_id": admin[0],
                    "secret_access_key": admin[1],
                    "policies": [
                        {
                            "Version": "2012-10-17",
                            "Statement": [
                                {"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}
                            ],
                        }
                    ],
                },
                {
                    "access_key_id": reader[0],
                    "secret_access_key": reader[1],
                    "policies": [
                        {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": "sagemaker:ListTags",
                                    "Resource": f"{ARN}:model/m*",
                                }
                            ],
                        }
                    ],
                },
            ],
        },
        Path.cwd(),
    )
    async with running_router(config_factory(auth=auth)) as router:
        sm_admin = signed_client("sagemaker", router.admin_url, admin)
        sm_reader = signed_client("sagemaker", router.admin_url, reader)
        await call(sm_admin.create_model, **direct_model("Model1", ["a"]), Tags=tags(("k", "v")))
        # The ARN's name is matched lower-cased, as the router writes its ARNs.
        assert await list_tags(sm_reader, f"{ARN}:model/MODEL1") == tags(("k", "v"))
        for function, kwargs in (
            (sm_reader.add_tags, {"Tags": tags(("k", "w"))}),
            (sm_reader.delete_tags, {"TagKeys": ["k"]}),
        ):
            with pytest.raises(ClientError) as caught:
                await call(function, ResourceArn=f"{ARN}:model/model1", **kwargs)
            assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
        assert await list_tags(sm_reader, f"{ARN}:model/model1") == tags(("k", "v"))
