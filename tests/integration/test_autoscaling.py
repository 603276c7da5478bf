"""Application Auto Scaling on the router: boto3's ``application-autoscaling`` client against the
admin port, real container processes, bounded load on loopback, zero failed requests while
instances come and go."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import (
    FAULT_IMAGE,
    call,
    child_processes,
    control_client,
    direct_model,
    endpoint_config,
    running_router,
    runtime_client,
    signed_client,
    validate_output,
    wait_no_live_processes,
)

from mce_router import Router
from mce_router.config import AutoscalingSettings
from mce_router.control.autoscaling import DIMENSION
from mce_router.security import AuthConfig

RESOURCE = "endpoint/scaled/variant/AllTraffic"


def autoscaling_client(router: Router) -> Any:
    return boto3.client(
        "application-autoscaling",
        endpoint_url=router.admin_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


async def deploy_scaled(router: Router, **variant: Any) -> None:
    router.create_model(direct_model("scaled", ["a", "b"], FAULT_IMAGE))
    router.create_endpoint_config(endpoint_config("scaled", "scaled", **variant))
    await router.create_endpoint({"EndpointName": "scaled", "EndpointConfigName": "scaled"})


@contextlib.asynccontextmanager
async def scaled_router(
    config_factory: Any, period: float, *, scale_in: int, max_capacity: int
) -> AsyncIterator[tuple[Router, Any]]:
    """A router with a fast target tracking period, the endpoint deployed and registered."""
    settings = AutoscalingSettings(
        period_seconds=period, scale_out_datapoints=3, scale_in_datapoints=scale_in
    )
    async with running_router(config_factory(autoscaling=settings)) as router:
        await deploy_scaled(router)
        client = autoscaling_client(router)
        await call(
            client.register_scalable_target, **target(MinCapacity=1, MaxCapacity=max_capacity)
        )
        yield router, client


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def target(**extra: Any) -> dict[str, Any]:
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": RESOURCE,
        "ScalableDimension": DIMENSION,
        **extra,
    }


class Load:
    """Concurrent InvokeEndpoint calls through boto3, bounded in count and time; counts
    failures (any exception or non-200)."""

    def __init__(self, router: Router, workers: int, hosts: tuple[str, ...] = ("a",)) -> None:
        self.client = runtime_client(router)
        self.workers = workers
        self.hosts = hosts
        self.ok = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    def _one(self, host: str, action: str) -> None:
        try:
            response = self.client.invoke_endpoint(
                EndpointName="scaled",
                Body=b"x",
                TargetContainerHostname=host,
                CustomAttributes=f"action={action}",
            )
            response["Body"].read()
            self.ok += 1
        except Exception as exc:  # every failure is one the test reports
            self.failures.append(repr(exc))

    async def _worker(
        self, index: int, deadline: float, limit: int, action: str, interval: float
    ) -> None:
        done = 0
        while not self._stop.is_set() and time.monotonic() < deadline and done < limit:
            began = time.monotonic()
            await asyncio.to_thread(self._one, self.hosts[index % len(self.hosts)], action)
            done += 1
            # Paced workers start one call per interval: a fixed rate whatever the call costs.
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    @contextlib.asynccontextmanager
    async def running(
        self,
        seconds: float = 40.0,
        limit: int = 5000,
        action: str = "sleep:0.02",
        interval: float = 0.0,
    ) -> AsyncIterator[Load]:
        deadline = time.monotonic() + seconds
        self._stop.clear()
        tasks = [
            asyncio.create_task(self._worker(i, deadline, limit, action, interval))
            for i in range(self.workers)
        ]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)


async def test_scalable_targets_and_policies_wire_and_validation(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        await deploy_scaled(router)
        client = autoscaling_client(router)
        out = await call(client.register_scalable_target, **target(MinCapacity=1, MaxCapacity=3))
        assert out["ScalableTargetARN"].startswith("arn:aws:application-autoscaling:us-east-1:")
        described = await call(client.describe_scalable_targets, ServiceNamespace="sagemaker")
        validate_output(client, "DescribeScalableTargets", described)
        (found,) = described["ScalableTargets"]
        assert (found["ResourceId"], found["MinCapacity"], found["MaxCapacity"]) == (
            RESOURCE,
            1,
            3,
        )
        put = await call(
            client.put_scaling_policy,
            PolicyName="ipi",
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": 70.0,
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "ScaleInCooldown": 60,
            },
            **target(),
        )
        validate_output(client, "PutScalingPolicy", put)
        assert ":policyName/ipi" in put["PolicyARN"] and len(put["Alarms"]) == 2
        policies = await call(client.describe_scaling_policies, ServiceNamespace="sagemaker")
        validate_output(client, "DescribeScalingPolicies", policies)
        assert [p["PolicyName"] for p in policies["ScalingPolicies"]] == ["ipi"]

        errors = client.exceptions
        bad_cases: list[tuple[Any, dict[str, Any], type[Exception], str]] = [
            # a variant that does not exist
            (
                client.register_scalable_target,
                {**target(MinCapacity=1, MaxCapacity=2), "ResourceId": "endpoint/scaled/variant/x"},
                errors.ValidationException,
                "not present",
            ),
            (
                client.register_scalable_target,
                {**target(MinCapacity=1, MaxCapacity=2), "ResourceId": "endpoint/nope/variant/v"},
                errors.ValidationException,
                "Could not find endpoint",
            ),
            (
                client.register_scalable_target,
                target(MinCapacity=3, MaxCapacity=2),
                errors.ValidationException,
                "cannot be less than minimum",
            ),
            (
                client.register_scalable_target,
                {**target(MinCapacity=1, MaxCapacity=2), "ResourceId": "scaled/AllTraffic"},
                errors.ValidationException,
                "Unsupported resource ID",
            ),
            (
                client.put_scaling_policy,
                {
                    "PolicyName": "p",
                    "PolicyType": "TargetTrackingScaling",
                    "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 1.0},
                    **target(ResourceId="endpoint/scaled/variant/Other"),
                },
                errors.ObjectNotFoundException,
                "No scalable target registered for service namespace: sagemaker",
            ),
            (
                client.put_scaling_policy,
                {
                    "PolicyName": "p",
                    "PolicyType": "TargetTrackingScaling",
                    "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 1.0},
                    **target(),
                },
                errors.ValidationException,
                "Exactly one of PredefinedMetricSpecification",
            ),
            (
                client.put_scaling_policy,
                {
                    "PolicyName": "p",
                    "PolicyType": "TargetTrackingScaling",
                    "TargetTrackingScalingPolicyConfiguration": {
                        "TargetValue": 1.0,
                        "CustomizedMetricSpecification": {
                            "MetricName": "DiskUtilization",
                            "Namespace": "/aws/sagemaker/Endpoints",
                            "Statistic": "Average",
                            "Dimensions": [],
                        },
                    },
                    **target(),
                },
                errors.ValidationException,
                "not one this router measures",
            ),
            (
                client.delete_scaling_policy,
                {"PolicyName": "nope", **target()},
                errors.ObjectNotFoundException,
                "No scaling policy found",
            ),
            (
                client.describe_scalable_targets,
                {"ServiceNamespace": "sagemaker", "MaxResults": 51},
                errors.ValidationException,
                "less than or equal to 50",
            ),
            (
                client.describe_scalable_targets,
                {"ServiceNamespace": "sagemaker", "NextToken": "garbage!"},
                errors.InvalidNextTokenException,
                "Invalid token",
            ),
        ]
        for function, params, error, words in bad_cases:
            with pytest.raises(error, match=words):
                await call(function, **params)

        # Paginators page with MaxResults over NextToken; DeregisterScalableTarget drops the
        # target's policies.
        for name in ("p2", "p3"):
            await call(
                client.put_scaling_policy,
                PolicyName=name,
                PolicyType="StepScaling",
                StepScalingPolicyConfiguration={
                    "AdjustmentType": "ChangeInCapacity",
                    "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
                },
                **target(),
            )
        pages = client.get_paginator("describe_scaling_policies").paginate(
            ServiceNamespace="sagemaker", PaginationConfig={"PageSize": 2}
        )
        # The paginator's HTTP calls happen while iterating: in a thread, like every call here.
        names = await asyncio.to_thread(
            lambda: [[p["PolicyName"] for p in page["ScalingPolicies"]] for page in pages]
        )
        assert names == [["ipi", "p2"], ["p3"]]
        await call(client.deregister_scalable_target, **target())
        with pytest.raises(errors.ObjectNotFoundException, match="No scalable target found"):
            await call(client.deregister_scalable_target, **target())
        left = await call(client.describe_scaling_policies, ServiceNamespace="sagemaker")
        assert left["ScalingPolicies"] == []


async def test_targets_survive_a_restart(config_factory: Any) -> None:
    config = config_factory()
    async with running_router(config) as router:
        await deploy_scaled(router)
        client = autoscaling_client(router)
        await call(client.register_scalable_target, **target(MinCapacity=1, MaxCapacity=4))
    async with running_router(config) as router:
        client = autoscaling_client(router)
        described = await call(client.describe_scalable_targets, ServiceNamespace="sagemaker")
        assert [t["MaxCapacity"] for t in described["ScalableTargets"]] == [4]


async def instances(router: Router) -> tuple[int, int]:
    out = router.scaler.describe("scaled", router.describe_endpoint("scaled"))
    variant = out["ProductionVariants"][0]
    return variant["CurrentInstanceCount"], variant["DesiredInstanceCount"]


async def test_weights_and_capacities_without_a_failed_request(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        await deploy_scaled(router)
        sagemaker = control_client(router.admin_url)
        load = Load(router, workers=4, hosts=("a", "b"))
        async with load.running(seconds=60):
            await until(lambda: load.ok > 20, 10, "load.ok > 20")
            await call(
                sagemaker.update_endpoint_weights_and_capacities,
                EndpointName="scaled",
                DesiredWeightsAndCapacities=[
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": 3}
                ],
            )
            described = await call(sagemaker.describe_endpoint, EndpointName="scaled")
            assert described["EndpointStatus"] == "Updating"
            assert described["ProductionVariants"][0]["DesiredInstanceCount"] == 3
            await until(
                lambda: router.scaler.is_changing("scaled") is False, 20, "the capacity change"
            )
            assert await instances(router) == (3, 3)
            route = router.runtime_server.table.by_name["scaled"]
            assert len(route.variants[0].instances) == 3
            before = load.ok
            await until(lambda: load.ok > before + 30, 10, "load.ok > before + 30")
            await call(
                sagemaker.update_endpoint_weights_and_capacities,
                EndpointName="scaled",
                DesiredWeightsAndCapacities=[
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": 1}
                ],
            )
            await until(
                lambda: router.scaler.is_changing("scaled") is False, 20, "the capacity change"
            )
            assert await instances(router) == (1, 1)
            before = load.ok
            await until(lambda: load.ok > before + 30, 10, "load.ok > before + 30")
        assert load.failures == [], load.failures[:3]
        described = await call(sagemaker.describe_endpoint, EndpointName="scaled")
        assert described["EndpointStatus"] == "InService"
        with pytest.raises(sagemaker.exceptions.ClientError, match="not present"):
            await call(
                sagemaker.update_endpoint_weights_and_capacities,
                EndpointName="scaled",
                DesiredWeightsAndCapacities=[{"VariantName": "Nope", "DesiredWeight": 1.0}],
            )


async def test_target_tracking_scales_out_and_in(config_factory: Any) -> None:
    async with scaled_router(config_factory, 0.5, scale_in=6, max_capacity=3) as (router, client):
        await call(
            client.put_scaling_policy,
            PolicyName="ipi",
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": 600.0,  # invocations per minute per instance: 10 per second
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "ScaleOutCooldown": 1,
                "ScaleInCooldown": 1,
            },
            **target(),
        )
        load = Load(router, workers=4)
        started = time.monotonic()
        async with load.running(seconds=60):
            await until(lambda: router.scaler.scale_out_latencies != [], 30, "a scale-out")
            serving = time.monotonic() - started
            assert (await instances(router))[0] >= 2
        assert load.failures == [], "\n".join(load.failures[:2])
        # Load gone: 6 datapoints below 90 % of the target scale back in to MinCapacity.
        fleet = router.endpoints["scaled"].deployment
        assert fleet is not None
        await until(
            lambda: (
                fleet.instance_count("AllTraffic") == 1 and not router.scaler.is_changing("scaled")
            ),
            30,
            "the scale-in",
        )
        activities = await call(
            client.describe_scaling_activities, ServiceNamespace="sagemaker", ResourceId=RESOURCE
        )
        validate_output(client, "DescribeScalingActivities", activities)
        newest, *older = activities["ScalingActivities"]
        assert newest["Description"] == "Setting desired instance count to 1."
        assert "AlarmLow" in newest["Cause"] and newest["StatusCode"] == "Successful"
        assert any("AlarmHigh" in a["Cause"] for a in older)
        print(
            f"threshold crossed -> new instance serving: "
            f"{router.scaler.scale_out_latencies[0]:.2f} s; load start -> serving {serving:.2f} s"
        )


async def test_hottest_container_cpu_scales_where_invocations_per_instance_does_not(
    config_factory: Any,
) -> None:
    """Same total rate, the mix shifted to a CPU-heavy call: InvocationsPerInstance stays
    flat, the hottest container's CPU rises, and only that policy scales out."""
    async with scaled_router(config_factory, 1.0, scale_in=60, max_capacity=2) as (router, client):
        ipi = {
            "TargetValue": 1200.0,  # 20 per second per instance: the load below is 10
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
        }
        hottest = {
            "TargetValue": 8.0,  # percent of one core, of the busiest container per instance
            "CustomizedMetricSpecification": {
                "Namespace": "MceRouter",
                "MetricName": "HottestContainerCPUUtilization",
                "Dimensions": [
                    {"Name": "EndpointName", "Value": "scaled"},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
                "Statistic": "Average",
            },
        }
        for name, policy in (("ipi", ipi), ("hottest-cpu", hottest)):
            await call(
                client.put_scaling_policy,
                PolicyName=name,
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration=policy,
                **target(),
            )
        # 10 calls per second (2 paced workers, one call each 0.2 s) in both phases.
        light = Load(router, workers=2, hosts=("a",))
        began = time.monotonic()
        async with light.running(seconds=5, action="echo", interval=0.2):
            await asyncio.sleep(5)
        light_rate = light.ok / (time.monotonic() - began)
        assert (await instances(router))[0] == 1, "the light mix must not scale"
        # Same rate, every call now to the CPU-heavy container (50 ms of CPU per call).
        heavy = Load(router, workers=2, hosts=("b",))
        began = time.monotonic()
        async with heavy.running(seconds=25, action="spin:0.05", interval=0.2):
            await until(lambda: router.scaler.scale_out_latencies != [], 20, "a scale-out")
        heavy_rate = heavy.ok / (time.monotonic() - began)
        assert light.failures == heavy.failures == []
        assert abs(heavy_rate - light_rate) < 0.25 * light_rate, (light_rate, heavy_rate)
        activities = await call(
            client.describe_scaling_activities, ServiceNamespace="sagemaker", ResourceId=RESOURCE
        )
        causes = [a["Cause"] for a in activities["ScalingActivities"]]
        assert any("policy hottest-cpu" in c for c in causes)
        assert not any("policy ipi" in c for c in causes)


async def test_sigv4_and_application_autoscaling_actions(config_factory: Any) -> None:
    """Signed for the service application-autoscaling; authorized as
    application-autoscaling:<Operation>; a sagemaker-signed request is refused."""
    scaler = ("AKIDSCALER000000", "scaler-secret")
    reader = ("AKIDREADER000000", "reader-secret")

    def allow(*actions: str) -> dict[str, Any]:
        return {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
        }

    auth = AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "credentials": [
                {
                    "access_key_id": scaler[0],
                    "secret_access_key": scaler[1],
                    "principal": "arn:aws:iam::000000000000:user/scaler",
                    "policies": [allow("application-autoscaling:*")],
                },
                {
                    "access_key_id": reader[0],
                    "secret_access_key": reader[1],
                    "principal": "arn:aws:iam::000000000000:user/reader",
                    "policies": [allow("application-autoscaling:Describe*", "sagemaker:*")],
                },
            ],
        },
        Path.cwd(),
    )
    async with running_router(config_factory(auth=auth)) as router:
        await deploy_scaled(router)
        admin = signed_client("application-autoscaling", router.admin_url, scaler)
        readonly = signed_client("application-autoscaling", router.admin_url, reader)
        await call(admin.register_scalable_target, **target(MinCapacity=1, MaxCapacity=2))
        described = await call(readonly.describe_scalable_targets, ServiceNamespace="sagemaker")
        assert len(described["ScalableTargets"]) == 1
        with pytest.raises(ClientError) as denied:
            await call(readonly.register_scalable_target, **target(MinCapacity=1, MaxCapacity=3))
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        assert "application-autoscaling:RegisterScalableTarget" in str(denied.value)
        unknown = signed_client("application-autoscaling", router.admin_url, ("AKIDX", "nope"))
        with pytest.raises(ClientError) as refused:
            await call(unknown.describe_scalable_targets, ServiceNamespace="sagemaker")
        assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
        # The sagemaker client's signature (service sagemaker) does not verify here.
        sagemaker = signed_client("sagemaker", router.admin_url, scaler)
        sagemaker.meta.events.register(
            "before-sign.sagemaker.*",
            lambda request, **_: request.headers.__setitem__(
                "X-Amz-Target", "AnyScaleFrontendService.DescribeScalableTargets"
            ),
        )
        with pytest.raises(ClientError) as wrong_scope:
            await call(sagemaker.list_models)
        assert wrong_scope.value.response["Error"]["Code"] in (
            "InvalidSignatureException",
            "IncompleteSignatureException",
        )


async def test_traffic_splits_by_variant_weight_and_follows_desired_weight(
    config_factory: Any,
) -> None:
    async with running_router(config_factory()) as router:
        router.create_model(direct_model("split", ["a"], FAULT_IMAGE))
        variant = {"ModelName": "split", "InitialInstanceCount": 1}
        router.create_endpoint_config(
            {
                "EndpointConfigName": "split",
                "ProductionVariants": [
                    {"VariantName": "Light", "InitialVariantWeight": 1.0, **variant},
                    {"VariantName": "Heavy", "InitialVariantWeight": 3.0, **variant},
                ],
            }
        )
        await router.create_endpoint({"EndpointName": "split", "EndpointConfigName": "split"})
        runtime = runtime_client(router)
        sagemaker = control_client(router.admin_url)

        def served_by(count: int) -> dict[str, int]:
            seen: dict[str, int] = {}
            for _ in range(count):
                response = runtime.invoke_endpoint(
                    EndpointName="split", Body=b"x", TargetContainerHostname="a"
                )
                response["Body"].read()
                name = response["InvokedProductionVariant"]
                seen[name] = seen.get(name, 0) + 1
            return seen

        seen = await asyncio.to_thread(served_by, 200)
        # 1:3 -> 50 expected on Light; the bounds are 4 standard deviations (6.1) wide.
        assert 25 <= seen.get("Light", 0) <= 75, seen
        await call(
            sagemaker.update_endpoint_weights_and_capacities,
            EndpointName="split",
            DesiredWeightsAndCapacities=[{"VariantName": "Heavy", "DesiredWeight": 0.0}],
        )
        described = await call(sagemaker.describe_endpoint, EndpointName="split")
        weights = {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]}
        assert weights == {"Light": 1.0, "Heavy": 0.0}
        assert await asyncio.to_thread(served_by, 50) == {"Light": 50}


async def test_desired_count_and_weight_survive_a_restart(config_factory: Any) -> None:
    config = config_factory()
    async with running_router(config) as router:
        await deploy_scaled(router)
        sagemaker = control_client(router.admin_url)
        await call(
            sagemaker.update_endpoint_weights_and_capacities,
            EndpointName="scaled",
            DesiredWeightsAndCapacities=[
                {"VariantName": "AllTraffic", "DesiredInstanceCount": 2, "DesiredWeight": 2.0}
            ],
        )
        await until(lambda: not router.scaler.is_changing("scaled"), 20, "the scale-out")
    async with running_router(config) as router:
        await until(lambda: not router.scaler.is_changing("scaled"), 20, "the restore")
        variant = (
            await call(control_client(router.admin_url).describe_endpoint, EndpointName="scaled")
        )["ProductionVariants"][0]
        assert (variant["CurrentInstanceCount"], variant["DesiredInstanceCount"]) == (2, 2)
        assert variant["CurrentWeight"] == 2.0


async def test_delete_while_scaling_out_leaves_no_process_and_no_route(
    config_factory: Any,
) -> None:
    # Only this test's containers: a session fixture's processes (the engine tests' podman
    # service) are children of this process too.
    before = child_processes()
    async with running_router(config_factory()) as router:
        await deploy_scaled(router)
        sagemaker = control_client(router.admin_url)
        await call(
            sagemaker.update_endpoint_weights_and_capacities,
            EndpointName="scaled",
            DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}],
        )
        await router.delete_endpoint("scaled")
        await until(lambda: not router.scaler.is_changing("scaled"), 20, "the scale-out to end")
        assert "scaled" not in router.runtime_server.table.by_name
        await wait_no_live_processes(child_processes() - before)
