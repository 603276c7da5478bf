"""The SageMaker control plane through an unmodified boto3 ``sagemaker`` client: the lifecycle with
its waiters, Describe/List outputs checked against botocore's model, paging, every error case,
concurrent calls, and deleting resources an endpoint uses."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from datetime import datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, WaiterError
from conftest import (
    FAST_WAITER,
    call,
    child_processes,
    container,
    control_client,
    direct_model,
    endpoint_config,
    http_exchange,
    invoke,
    multi_model,
    running_router,
    runtime_client,
    validate_output,
    wait_in_service,
    wait_no_live_processes,
)

from mce_router import Router, RouterConfig
from mce_router.config import HealthSettings, Limits

ROLE = "arn:aws:iam::000000000000:role/x"


async def call_error(function: Callable[..., Any], **kwargs: Any) -> ClientError:
    try:
        await call(function, **kwargs)
    except ClientError as error:
        return error
    raise AssertionError(f"{function.__name__}({kwargs}) succeeded but an error was expected")


@asynccontextmanager
async def control_session(config: RouterConfig) -> AsyncIterator[tuple[Router, Any]]:
    """A running router and a boto3 sagemaker client for its admin port."""
    async with running_router(config) as router:
        with closing(control_client(router.admin_url)) as client:
            yield router, client


async def wait_deleted(client: Any, name: str) -> None:
    waiter = client.get_waiter("endpoint_deleted")
    await call(waiter.wait, EndpointName=name, WaiterConfig=FAST_WAITER)


async def test_boto3_lifecycle_create_wait_invoke_delete(config_factory: Any) -> None:
    before = child_processes()
    model = multi_model(
        "life",
        [
            container("alpha", TEST_WHO="alpha"),
            # Starts listening after 0.5 s, so DescribeEndpoint right after CreateEndpoint
            # deterministically sees Creating.
            container("bravo", FAULT_STARTUP="delay:0.5", TEST_WHO="bravo"),
        ],
        "Direct",
    )
    async with running_router(config_factory()) as router:
        sm = control_client(router.admin_url)
        runtime = runtime_client(router)
        with closing(sm), closing(runtime):
            created = await call(sm.create_model, ExecutionRoleArn=ROLE, **model)
            assert created["ModelArn"] == "arn:aws:sagemaker:us-east-1:000000000000:model/life"
            config = await call(
                sm.create_endpoint_config,
                **endpoint_config("life-config", "life", InstanceType="ml.m5.large"),
            )
            assert config["EndpointConfigArn"].endswith(":endpoint-config/life-config")
            endpoint = await call(
                sm.create_endpoint, EndpointName="Life", EndpointConfigName="life-config"
            )
            assert endpoint["EndpointArn"] == (
                "arn:aws:sagemaker:us-east-1:000000000000:endpoint/life"
            )
            creating = await call(sm.describe_endpoint, EndpointName="Life")
            assert creating["EndpointStatus"] == "Creating"
            assert "ProductionVariants" not in creating
            validate_output(sm, "DescribeEndpoint", creating)

            await wait_in_service(sm, "Life")
            described = await call(sm.describe_endpoint, EndpointName="life")  # any case
            validate_output(sm, "DescribeEndpoint", described)
            assert described["EndpointName"] == "Life"
            assert described["EndpointConfigName"] == "life-config"
            assert described["EndpointStatus"] == "InService"
            assert "FailureReason" not in described
            assert isinstance(described["CreationTime"], datetime)
            assert described["LastModifiedTime"] >= described["CreationTime"]
            (variant,) = described["ProductionVariants"]
            assert variant["VariantName"] == "AllTraffic"
            assert variant["CurrentInstanceCount"] == variant["DesiredInstanceCount"] == 1
            assert variant["CurrentWeight"] == variant["DesiredWeight"] == 1.0
            (image,) = variant["DeployedImages"]
            assert image["SpecifiedImage"] == image["ResolvedImage"] == "test/fault:latest"

            for host in ("alpha", "bravo"):
                answer = await invoke(
                    runtime,
                    EndpointName="Life",
                    TargetContainerHostname=host,
                    Body=b"",
                    CustomAttributes="action=env",
                )
                assert json.loads(answer["Body"])["TEST_WHO"] == host

            listed = await call(sm.list_endpoints)
            validate_output(sm, "ListEndpoints", listed)
            assert [e["EndpointName"] for e in listed["Endpoints"]] == ["Life"]
            assert listed["Endpoints"][0]["EndpointStatus"] == "InService"
            assert "NextToken" not in listed

            assert await call(sm.delete_endpoint, EndpointName="Life")
            await wait_deleted(sm, "Life")
            gone = await call_error(sm.describe_endpoint, EndpointName="Life")
            assert gone.response["Error"]["Code"] == "ValidationException"
            assert (await call(sm.list_endpoints))["Endpoints"] == []
            assert "Life" not in router.endpoints
            await wait_no_live_processes(child_processes() - before)
            # The model and config stay until deleted themselves.
            await call(sm.delete_endpoint_config, EndpointConfigName="life-config")
            await call(sm.delete_model, ModelName="life")
            assert (await call(sm.list_models))["Models"] == []


async def test_describe_outputs_echo_the_definitions(config_factory: Any) -> None:
    model = multi_model(
        "shapes",
        [
            container("first", TEST_A="1"),
            {"ContainerHostname": "second", "Image": "test/fault:latest", "Mode": "SingleModel"},
        ],
        "Direct",
    )
    async with control_session(config_factory()) as (_router, sm):
        await call(
            sm.create_model,
            ExecutionRoleArn=ROLE,
            EnableNetworkIsolation=True,
            Tags=[{"Key": "team", "Value": "ml"}],
            **model,
        )
        described = await call(sm.describe_model, ModelName="SHAPES")
        validate_output(sm, "DescribeModel", described)
        assert described["ModelName"] == "shapes"
        assert described["ModelArn"].endswith(":model/shapes")
        assert described["Containers"] == model["Containers"]
        assert described["InferenceExecutionConfig"] == {"Mode": "Direct"}
        assert described["ExecutionRoleArn"] == ROLE
        assert described["EnableNetworkIsolation"] is True
        assert "Tags" not in described  # not a DescribeModel member

        # A SageMaker SDK PipelineModel sends no hostnames and no InferenceExecutionConfig.
        await call(
            sm.create_model,
            ModelName="pipeline",
            ExecutionRoleArn=ROLE,
            Containers=[{"Image": "test/fault:latest"}, {"Image": "test/echo:latest"}],
        )
        pipeline = await call(sm.describe_model, ModelName="pipeline")
        assert pipeline["InferenceExecutionConfig"] == {"Mode": "Serial"}
        assert [c["Image"] for c in pipeline["Containers"]] == [
            "test/fault:latest",
            "test/echo:latest",
        ]

        variants = [
            {
                "VariantName": "blue",
                "ModelName": "shapes",
                "InitialInstanceCount": 2,
                "InitialVariantWeight": 3.0,
                "InstanceType": "ml.m5.large",
                "ContainerStartupHealthCheckTimeoutInSeconds": 120,
            },
            {"VariantName": "green", "ModelName": "pipeline", "InstanceType": "ml.c5.xlarge"},
        ]
        await call(
            sm.create_endpoint_config,
            EndpointConfigName="shapes-config",
            ProductionVariants=variants,
            KmsKeyId="alias/unused",
            Tags=[{"Key": "team", "Value": "ml"}],
        )
        config = await call(sm.describe_endpoint_config, EndpointConfigName="shapes-config")
        validate_output(sm, "DescribeEndpointConfig", config)
        assert config["EndpointConfigArn"].endswith(":endpoint-config/shapes-config")
        assert config["KmsKeyId"] == "alias/unused"
        assert config["ProductionVariants"][0] == variants[0]
        assert config["ProductionVariants"][1] == {
            **variants[1],
            "InitialInstanceCount": 1,
            "InitialVariantWeight": 1.0,
        }
        for operation, response in [
            ("ListModels", await call(sm.list_models)),
            ("ListEndpointConfigs", await call(sm.list_endpoint_configs)),
        ]:
            validate_output(sm, operation, response)


async def test_list_paging_sorting_filters_and_paginators(config_factory: Any) -> None:
    async with control_session(config_factory()) as (_router, sm):
        names = [f"m{i:02d}" for i in range(12)]
        for name in names:
            await call(sm.create_model, **direct_model(name, ["a"]))

        first = await call(sm.list_models)
        # SageMaker's defaults: newest first, 10 per page.
        assert [m["ModelName"] for m in first["Models"]] == names[::-1][:10]
        assert first["NextToken"]
        second = await call(sm.list_models, NextToken=first["NextToken"])
        assert [m["ModelName"] for m in second["Models"]] == ["m01", "m00"]
        assert "NextToken" not in second

        paginator = sm.get_paginator("list_models")
        pages = await call(
            lambda: list(
                paginator.paginate(
                    SortBy="Name", SortOrder="Ascending", PaginationConfig={"PageSize": 5}
                )
            )
        )
        assert [len(p["Models"]) for p in pages] == [5, 5, 2]
        assert [m["ModelName"] for p in pages for m in p["Models"]] == names

        # Keyset paging: deleting an item already returned and creating one that sorts later
        # neither repeats nor skips anything.
        page = await call(sm.list_models, SortBy="Name", SortOrder="Ascending", MaxResults=4)
        await call(sm.delete_model, ModelName="m00")
        await call(sm.create_model, **direct_model("m99", ["a"]))
        rest = await call(
            sm.list_models,
            SortBy="Name",
            SortOrder="Ascending",
            MaxResults=100,
            NextToken=page["NextToken"],
        )
        assert [m["ModelName"] for m in rest["Models"]] == [*names[4:], "m99"]

        contains = await call(sm.list_models, NameContains="M1", SortBy="Name")
        assert [m["ModelName"] for m in contains["Models"]] == ["m11", "m10"]

        # boto3 sends timestamps in whole seconds, so the bounds are a second apart.
        everything = (await call(sm.list_models, MaxResults=100))["Models"]
        oldest = min(m["CreationTime"] for m in everything)
        newest = max(m["CreationTime"] for m in everything)
        second = timedelta(seconds=1)
        for bounds, expected in [
            ({"CreationTimeAfter": oldest - second}, len(everything)),
            ({"CreationTimeAfter": newest + second}, 0),
            ({"CreationTimeBefore": newest + second}, len(everything)),
            ({"CreationTimeBefore": oldest - second}, 0),
            ({"CreationTimeAfter": oldest - second, "CreationTimeBefore": oldest - second}, 0),
        ]:
            listed = await call(sm.list_models, MaxResults=100, **bounds)
            assert len(listed["Models"]) == expected, bounds

        # A token belongs to its filters.
        foreign = await call_error(sm.list_models, NameContains="m", NextToken=first["NextToken"])
        assert foreign.response["Error"]["Code"] == "ValidationException"
        assert "other filters" in foreign.response["Error"]["Message"]

        for i in range(3):
            await call(sm.create_endpoint_config, **endpoint_config(f"cfg{i}", "m01"))
        config_pages = await call(
            lambda: list(
                sm.get_paginator("list_endpoint_configs").paginate(PaginationConfig={"PageSize": 2})
            )
        )
        assert [c["EndpointConfigName"] for p in config_pages for c in p["EndpointConfigs"]] == [
            "cfg2",
            "cfg1",
            "cfg0",
        ]


async def test_list_endpoints_by_status_and_modified_time(config_factory: Any) -> None:
    health = HealthSettings(startup_timeout_seconds=5, startup_ping_interval_seconds=0.05)
    async with control_session(config_factory(health=health)) as (_router, sm):
        await call(sm.create_model, **direct_model("ok", ["a"]))
        await call(
            sm.create_model,
            **multi_model("broken", [container("a", FAULT_STARTUP="exit")], "Direct"),
        )
        await call(sm.create_endpoint_config, **endpoint_config("ok", "ok"))
        await call(sm.create_endpoint_config, **endpoint_config("broken", "broken"))
        for name, config in [("zeta", "ok"), ("alpha", "ok"), ("mid", "broken")]:
            await call(sm.create_endpoint, EndpointName=name, EndpointConfigName=config)
        await wait_in_service(sm, "zeta")
        await wait_in_service(sm, "alpha")
        with pytest.raises(WaiterError, match='matched expected path: "Failed"'):
            await wait_in_service(sm, "mid")

        by_status = await call(sm.list_endpoints, StatusEquals="Failed")
        assert [e["EndpointName"] for e in by_status["Endpoints"]] == ["mid"]
        by_name = await call(sm.list_endpoints, SortBy="Name", SortOrder="Ascending")
        assert [e["EndpointName"] for e in by_name["Endpoints"]] == ["alpha", "mid", "zeta"]
        sorted_by_status = await call(sm.list_endpoints, SortBy="Status", SortOrder="Ascending")
        assert [e["EndpointStatus"] for e in sorted_by_status["Endpoints"]] == [
            "Failed",
            "InService",
            "InService",
        ]
        newest = max(e["LastModifiedTime"] for e in by_name["Endpoints"])
        modified_before = await call(
            sm.list_endpoints, LastModifiedTimeBefore=newest + timedelta(seconds=1)
        )
        assert len(modified_before["Endpoints"]) == 3
        modified_after = await call(
            sm.list_endpoints, LastModifiedTimeAfter=newest + timedelta(seconds=1)
        )
        assert modified_after["Endpoints"] == []
        described = await call(sm.describe_endpoint, EndpointName="mid")
        validate_output(sm, "DescribeEndpoint", described)
        assert described["EndpointStatus"] == "Failed"
        assert "a did not pass the ping health check" in described["FailureReason"]
        assert "exited with code 3" in described["FailureReason"]
        # boto3's endpoint_deleted waiter fails on Failed: deletion must not linger there.
        await call(sm.delete_endpoint, EndpointName="mid")
        await wait_deleted(sm, "mid")


async def test_every_error_case(config_factory: Any) -> None:
    health = HealthSettings(startup_timeout_seconds=5, startup_ping_interval_seconds=0.05)
    async with running_router(config_factory(health=health)) as router:
        # Without client-side validation, so the router's own validation answers.
        sm = control_client(router.admin_url, parameter_validation=False)
        with closing(sm):
            await call(sm.create_model, **direct_model("exists", ["a"]))
            await call(sm.create_model, **direct_model("doomed", ["a"]))
            await call(
                sm.create_model,
                **multi_model("broken", [container("a", FAULT_STARTUP="exit")], "Direct"),
            )
            await call(sm.create_endpoint_config, **endpoint_config("exists", "exists"))
            await call(sm.create_endpoint_config, **endpoint_config("orphaned", "doomed"))
            await call(sm.create_endpoint_config, **endpoint_config("broken", "broken"))
            await call(sm.delete_model, ModelName="doomed")
            await call(sm.create_endpoint, EndpointName="exists", EndpointConfigName="exists")
            await call(sm.create_endpoint, EndpointName="failed", EndpointConfigName="broken")
            await wait_in_service(sm, "exists")
            assert (await router.wait_settled("failed")) is not None

            arn = "arn:aws:sagemaker:us-east-1:000000000000"
            cases: list[tuple[str, dict[str, Any], str, str]] = [
                (
                    "create_model",
                    direct_model("EXISTS", ["a"]),
                    "ValidationException",
                    f'Cannot create already existing model "{arn}:model/exists"',
                ),
                (
                    "create_model",
                    direct_model("bad_name", ["a"]),
                    "ValidationException",
                    "at 'ModelName' failed to satisfy constraint: Member must satisfy regular "
                    "expression pattern",
                ),
                ("create_model", {"ModelName": "x"}, "ValidationException", "'Containers'"),
                (
                    "create_model",
                    direct_model("unmapped", ["a"], image="nowhere/unknown:1"),
                    "ValidationException",
                    "has no entry in the router config's 'images'",
                ),
                (
                    "create_model",
                    multi_model("nohost", [container(None)], "Direct"),
                    "ValidationException",
                    "Containers[0].ContainerHostname",
                ),
                (
                    "create_model",
                    direct_model("toomany", [f"c{i}" for i in range(16)]),
                    "ValidationException",
                    "less than or equal to 15",
                ),
                (
                    "describe_model",
                    {"ModelName": "missing"},
                    "ValidationException",
                    f'Could not find model "{arn}:model/missing"',
                ),
                ("delete_model", {"ModelName": "missing"}, "ValidationException", "Could not find"),
                ("describe_model", {}, "ValidationException", "Member must not be null"),
                (
                    "create_endpoint_config",
                    endpoint_config("Exists", "exists"),
                    "ValidationException",
                    "Cannot create already existing endpoint configuration",
                ),
                (
                    "create_endpoint_config",
                    endpoint_config("new", "missing"),
                    "ValidationException",
                    f'Could not find model "{arn}:model/missing"',
                ),
                (
                    "create_endpoint_config",
                    endpoint_config("new", "exists", InitialInstanceCount=0),
                    "ValidationException",
                    "greater than or equal to 1",
                ),
                (
                    "describe_endpoint_config",
                    {"EndpointConfigName": "missing"},
                    "ValidationException",
                    f'Could not find endpoint configuration "{arn}:endpoint-config/missing"',
                ),
                (
                    "delete_endpoint_config",
                    {"EndpointConfigName": "missing"},
                    "ValidationException",
                    "Could not find endpoint configuration",
                ),
                (
                    "create_endpoint",
                    {"EndpointName": "EXISTS", "EndpointConfigName": "exists"},
                    "ResourceInUse",
                    f'Cannot create already existing endpoint "{arn}:endpoint/exists"',
                ),
                (
                    "create_endpoint",
                    {"EndpointName": "new", "EndpointConfigName": "missing"},
                    "ValidationException",
                    "Could not find endpoint configuration",
                ),
                (
                    "create_endpoint",
                    {"EndpointName": "new", "EndpointConfigName": "orphaned"},
                    "ValidationException",
                    "it was deleted after the configuration was created",
                ),
                (
                    "create_endpoint",
                    {"EndpointName": "new"},
                    "ValidationException",
                    "'EndpointConfigName'",
                ),
                (
                    "describe_endpoint",
                    {"EndpointName": "missing"},
                    "ValidationException",
                    f'Could not find endpoint "{arn}:endpoint/missing"',
                ),
                (
                    "describe_endpoint",
                    {"EndpointName": "-bad"},
                    "ValidationException",
                    "regular expression pattern",
                ),
                (
                    "delete_endpoint",
                    {"EndpointName": "missing"},
                    "ValidationException",
                    "Could not find endpoint",
                ),
                (
                    "update_endpoint",
                    {"EndpointName": "missing", "EndpointConfigName": "exists"},
                    "ValidationException",
                    "Could not find endpoint",
                ),
                (
                    "update_endpoint",
                    {"EndpointName": "exists", "EndpointConfigName": "missing"},
                    "ValidationException",
                    "Could not find endpoint configuration",
                ),
                (
                    "update_endpoint",
                    {"EndpointName": "failed", "EndpointConfigName": "exists"},
                    "ValidationException",
                    "while its status is Failed",
                ),
                ("list_models", {"MaxResults": 0}, "ValidationException", "greater than or equal"),
                ("list_models", {"MaxResults": 101}, "ValidationException", "less than or equal"),
                ("list_models", {"NextToken": "bm9wZQ=="}, "ValidationException", "NextToken"),
                ("list_models", {"SortBy": "Status"}, "ValidationException", "enum value set"),
                (
                    "list_endpoint_configs",
                    {"SortOrder": "Sideways"},
                    "ValidationException",
                    "enum value set",
                ),
                ("list_endpoints", {"StatusEquals": "Sleeping"}, "ValidationException", "enum"),
                ("list_endpoints", {"NameContains": "a_b"}, "ValidationException", "pattern"),
            ]
            problems = []
            for operation, params, code, fragment in cases:
                try:
                    await call(getattr(sm, operation), **params)
                except ClientError as error:
                    got_code = error.response["Error"]["Code"]
                    message = error.response["Error"]["Message"]
                    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
                    if got_code != code or fragment not in message or status != 400:
                        problems.append(f"{operation}({params}): {status} {got_code}: {message}")
                else:
                    problems.append(f"{operation}({params}) succeeded")
            assert not problems, "\n".join(problems)

            # The modeled error is raised as its own class.
            with pytest.raises(sm.exceptions.ResourceInUse):
                await call(sm.create_endpoint, EndpointName="exists", EndpointConfigName="exists")
            # Nothing of the refused calls was created.
            assert sorted(router.models) == ["broken", "exists"]
            assert sorted(router.endpoints) == ["exists", "failed"]

        port = router.admin_port
        # boto3 cannot send these: it serializes (and refuses) them client-side.
        for target, body, code in [
            (
                "SageMaker.ListEndpoints",
                b'{"CreationTimeAfter": "yesterday"}',
                "ValidationException",
            ),
            ("SageMaker.DescribeNothing", b"{}", "UnknownOperationException"),
            ("", b"{}", "UnknownOperationException"),
            ("Other.DescribeEndpoint", b"{}", "UnknownOperationException"),
            ("SageMaker.DescribeEndpoint", b'{"EndpointName": ', "SerializationException"),
            ("SageMaker.DescribeEndpoint", b'["exists"]', "SerializationException"),
            (
                "SageMaker.CreateModel",
                b'{"ModelName": "' + b"x" * 1024 * 1024 + b'"}',
                "SerializationException",
            ),
        ]:
            status, headers, answer = await http_exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/x-amz-json-1.1\r\n"
                + (f"X-Amz-Target: {target}\r\n".encode() if target else b"")
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body,
            )
            assert status == 400, (target, answer)
            assert headers["content-type"] == "application/x-amz-json-1.1"
            error = json.loads(answer)
            assert error["__type"] == code, (target, error)
            assert error["message"]


async def test_resource_limit_exceeded(config_factory: Any) -> None:
    async with running_router(config_factory(limits=Limits(max_running_containers=3))) as router:
        with closing(control_client(router.admin_url)) as sm:
            await call(sm.create_model, **direct_model("pair", ["a", "b"]))
            await call(sm.create_endpoint_config, **endpoint_config("pair", "pair"))
            await call(sm.create_endpoint, EndpointName="first", EndpointConfigName="pair")
            await wait_in_service(sm, "first")
            with pytest.raises(sm.exceptions.ResourceLimitExceeded) as caught:
                await call(sm.create_endpoint, EndpointName="second", EndpointConfigName="pair")
            message = caught.value.response["Error"]["Message"]
            assert "limits.max_running_containers (3)" in message
            assert "would start 2 containers" in message
            # An update runs both fleets for a while, so it counts both.
            with pytest.raises(sm.exceptions.ResourceLimitExceeded):
                await call(sm.update_endpoint, EndpointName="first", EndpointConfigName="pair")
            assert (await call(sm.describe_endpoint, EndpointName="first"))[
                "EndpointStatus"
            ] == "InService"


async def test_concurrent_calls_keep_state_intact(config_factory: Any) -> None:
    before = child_processes()
    async with running_router(config_factory()) as router:
        clients = [control_client(router.admin_url) for _ in range(20)]
        try:

            async def create_model(index: int) -> str:
                name = "racer" if index % 2 else "RACER"
                try:
                    await call(clients[index].create_model, **direct_model(name, [f"h{index}"]))
                except ClientError as error:
                    return error.response["Error"]["Code"]
                return f"created h{index}"

            outcomes = await asyncio.gather(*(create_model(i) for i in range(20)))
            created = [o for o in outcomes if o.startswith("created")]
            assert len(created) == 1, outcomes
            assert outcomes.count("ValidationException") == 19
            winner = created[0].removeprefix("created ")
            described = await call(clients[0].describe_model, ModelName="racer")
            assert [c["ContainerHostname"] for c in described["Containers"]] == [winner]
            winner_name = described["ModelName"]  # "racer" or "RACER", whichever came first

            await call(clients[0].create_endpoint_config, **endpoint_config("racer", "racer"))

            async def create_endpoint(index: int) -> str:
                try:
                    await call(
                        clients[index].create_endpoint,
                        EndpointName="racer",
                        EndpointConfigName="racer",
                    )
                except ClientError as error:
                    return error.response["Error"]["Code"]
                return "created"

            outcomes = await asyncio.gather(*(create_endpoint(i) for i in range(20)))
            assert sorted(set(outcomes)) == ["ResourceInUse", "created"]
            assert outcomes.count("created") == 1
            await wait_in_service(clients[0], "racer")
            assert len(child_processes() - before) == 1  # one container, started once
            state_file = router.config.state_path
            with closing(sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)) as db:
                assert db.execute("SELECT name FROM models").fetchall() == [(winner_name,)]
                assert db.execute("SELECT name, status FROM endpoints").fetchall() == [
                    ("racer", "InService")
                ]

            # Ten updates at once: one is accepted, the others find the endpoint Updating.
            async def update(index: int) -> str:
                try:
                    await call(
                        clients[index].update_endpoint,
                        EndpointName="racer",
                        EndpointConfigName="racer",
                    )
                except ClientError as error:
                    return error.response["Error"]["Message"]
                return "accepted"

            outcomes = await asyncio.gather(*(update(i) for i in range(10)))
            assert outcomes.count("accepted") == 1, outcomes
            assert all("while its status is Updating" in o for o in outcomes if o != "accepted")

            # Deletions racing the update and each other: each one is accepted or finds the
            # endpoint gone already; in the end nothing is left, in memory, file or processes.
            async def delete(index: int) -> str:
                try:
                    await call(clients[index].delete_endpoint, EndpointName="racer")
                except ClientError as error:
                    return error.response["Error"]["Code"]
                return "accepted"

            outcomes = await asyncio.gather(*(delete(i) for i in range(10)))
            assert "accepted" in outcomes
            assert set(outcomes) <= {"accepted", "ValidationException"}, outcomes
            await call(
                clients[0].get_waiter("endpoint_deleted").wait,
                EndpointName="racer",
                WaiterConfig=FAST_WAITER,
            )
            await wait_no_live_processes(child_processes() - before)
            with closing(sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)) as db:
                assert db.execute("SELECT name FROM endpoints").fetchall() == []
            assert list(router.endpoints) == []
        finally:
            for client in clients:
                client.close()


async def test_deleted_model_and_config_do_not_affect_a_running_endpoint(
    config_factory: Any,
) -> None:
    """As in SageMaker: DeleteModel and DeleteEndpointConfig succeed while an endpoint uses them;
    the endpoint keeps serving (and reporting its config name), also after a restart."""
    config = config_factory()
    model = direct_model("kept", ["a"], environment={"TEST_WHO": "kept"})
    async with control_session(config) as (router, sm):
        with closing(runtime_client(router)) as runtime:
            await call(sm.create_model, **model)
            await call(sm.create_endpoint_config, **endpoint_config("kept", "kept"))
            await call(sm.create_endpoint, EndpointName="kept", EndpointConfigName="kept")
            await wait_in_service(sm, "kept")
            await call(sm.delete_endpoint_config, EndpointConfigName="kept")
            await call(sm.delete_model, ModelName="kept")
            described = await call(sm.describe_endpoint, EndpointName="kept")
            assert described["EndpointStatus"] == "InService"
            assert described["EndpointConfigName"] == "kept"
            answer = await invoke(
                runtime, EndpointName="kept", TargetContainerHostname="a", Body=b"still here"
            )
            assert answer["Body"] == b"still here"
            # The config cannot start anything new.
            error = await call_error(
                sm.create_endpoint, EndpointName="new", EndpointConfigName="kept"
            )
            assert error.response["Error"]["Code"] == "ValidationException"

    async with control_session(config) as (router, sm):
        with closing(runtime_client(router)) as runtime:
            described = await call(sm.describe_endpoint, EndpointName="kept")
            assert described["EndpointStatus"] == "InService"
            answer = await invoke(
                runtime,
                EndpointName="kept",
                TargetContainerHostname="a",
                Body=b"",
                CustomAttributes="action=env",
            )
            assert json.loads(answer["Body"])["TEST_WHO"] == "kept"
            assert (await call(sm.list_models))["Models"] == []
