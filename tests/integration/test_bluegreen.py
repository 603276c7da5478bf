"""UpdateEndpoint's DeploymentConfig through boto3 (issue 19 point 6): a canary to a fleet that
answers 500 rolls back on a router-config alarm with no failure beyond the canary's share; a
linear shift to a healthy fleet moves the weights step by step; bad DeploymentConfigs are
refused as SageMaker refuses them."""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import (
    FAULT_IMAGE,
    call,
    control_client,
    endpoint_config,
    invoke,
    runtime_client,
    validate_output,
    wait_in_service,
    wait_no_live_processes,
    wait_until,
)

from mce_router import Router
from mce_router.config import AlarmSpec
from mce_router.dataplane.proxy import EndpointRoute

ENDPOINT = "bg"
#: Alarm datapoints every 0.3 s (AWS: CloudWatch's period, a minute at least).
FIVE_XX = AlarmSpec(name="green-5xx", metric="Invocation5XXErrors", period_seconds=0.3)
SLOW = AlarmSpec(name="green-latency", metric="ModelLatency", statistic="Average", threshold=2e6)


def model(name: str, **environment: str) -> dict[str, Any]:
    """One container named ``<name>-main``: the container metrics then tell the fleets apart."""
    return {
        "ModelName": name,
        "Containers": [
            {
                "ContainerHostname": f"{name}-main",
                "Image": FAULT_IMAGE,
                "Environment": {"TEST_FLEET": name, **environment},
            }
        ],
    }


async def create_fleets(sm: Any, green_environment: dict[str, str]) -> None:
    await call(sm.create_model, **model("blue"))
    await call(sm.create_endpoint_config, **endpoint_config("blue", "blue"))
    await call(sm.create_model, **model("green", **green_environment))
    await call(sm.create_endpoint_config, **endpoint_config("green", "green"))
    await call(sm.create_endpoint, EndpointName=ENDPOINT, EndpointConfigName="blue")
    await wait_in_service(sm, ENDPOINT)


def green_share(route: EndpointRoute | None) -> float:
    """The weight of the green fleet's variants in the routing table, out of 1."""
    if route is None:
        return 0.0
    total = sum(v.weight for v in route.variants) or 1.0
    green = sum(
        v.weight
        for v in route.variants
        if v.instances and v.instances[0].chain[0].container_name == "green-main"
    )
    return round(green / total, 3)


def policy(routing: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, **extra}}


def rollout(routing: dict[str, Any], alarms: list[str], **extra: Any) -> dict[str, Any]:
    return {
        **policy(routing, **extra),
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarms]},
    }


class Load:
    """Sequential invocations (one at a time, 5 ms apart, at most ``limit``) until stopped."""

    def __init__(self, client: Any, limit: int = 3000) -> None:
        self.client, self.limit = client, limit
        self.ok = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set() and self.ok + len(self.failures) < self.limit:
            try:
                await invoke(self.client, EndpointName=ENDPOINT, Body=b"x")
                self.ok += 1
            except ClientError as exc:
                self.failures.append(exc.response["Error"].get("Message", ""))
            await asyncio.sleep(0.005)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def blue_under_load(sm: Any, runtime: Any, green_environment: dict[str, str]) -> Load:
    """Both fleets' configs created, the endpoint on blue, load running and answered by it."""
    await create_fleets(sm, green_environment)
    load = Load(runtime)
    load.start()
    await wait_until(_cond(lambda: load.ok >= 10), 10, "requests on blue")
    return load


def green_pids(router: Router) -> set[int]:
    state = router.endpoints[ENDPOINT]
    fleet = state.starting or state.deployment
    assert fleet is not None
    return {pid for slot in fleet.slots if slot.container for pid in slot.container.pids()}


async def test_canary_to_failing_fleet_rolls_back(config_factory: Any) -> None:
    config = config_factory(alarms=(FIVE_XX, SLOW))
    async with Router(config) as router:
        sm, runtime = control_client(router.admin_url), runtime_client(router)
        with closing(sm), closing(runtime):
            load = await blue_under_load(sm, runtime, {"FAULT_DEFAULT_ACTION": "status:500"})
            deployment = rollout(
                # Far longer than the test: only the alarm can end the canary.
                {
                    "Type": "CANARY",
                    "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20},
                    "WaitIntervalInSeconds": 600,
                },
                ["green-5xx", "green-latency"],
                TerminationWaitInSeconds=0,
            )
            await call(
                sm.update_endpoint,
                EndpointName=ENDPOINT,
                EndpointConfigName="green",
                DeploymentConfig=deployment,
            )
            state = router.endpoints[ENDPOINT]
            await wait_until(_cond(lambda: state.traffic_shift == 0.2), 20, "the canary")
            shares = {green_share(router.runtime_server.table.by_name.get(ENDPOINT))}
            pids = green_pids(router)
            await wait_until(_cond(lambda: state.failure_reason is not None), 20, "the rollback")
            await wait_in_service(sm, ENDPOINT)
            at_rollback = load.ok
            await wait_until(_cond(lambda: load.ok >= at_rollback + 30), 10, "blue again")
            await load.stop()

            assert shares == {0.2}
            # Every failure is a canary request answered 500 by green, and each of those the
            # router counted on green's container; none after the rollback, none on blue.
            assert router.metrics is not None
            green = router.metrics.containers[(ENDPOINT, "AllTraffic", "green-main")]
            assert load.failures, "the canary received no request"
            assert len(load.failures) == green.errors_5xx == green.count
            assert all("error 500" in message for message in load.failures), load.failures
            blue = router.metrics.containers[(ENDPOINT, "AllTraffic", "blue-main")]
            assert blue.errors_5xx == 0

            described = await call(sm.describe_endpoint, EndpointName=ENDPOINT)
            validate_output(sm, "DescribeEndpoint", described)
            assert described["EndpointStatus"] == "InService"
            assert described["EndpointConfigName"] == "blue"
            assert "PendingDeploymentSummary" not in described
            assert "rolled back" in described["FailureReason"]
            assert "alarm green-5xx went into ALARM" in described["FailureReason"]
            assert described["LastDeploymentConfig"] == deployment
            await wait_no_live_processes(pids)
            assert green_share(router.runtime_server.table.by_name[ENDPOINT]) == 0.0


async def test_linear_shift_to_healthy_fleet_completes_step_by_step(
    config_factory: Any,
) -> None:
    config = config_factory(alarms=(FIVE_XX,))
    async with Router(config) as router:
        sm, runtime = control_client(router.admin_url), runtime_client(router)
        with closing(sm), closing(runtime):
            load = await blue_under_load(sm, runtime, {})
            await call(
                sm.update_endpoint,
                EndpointName=ENDPOINT,
                EndpointConfigName="green",
                DeploymentConfig=rollout(
                    {
                        "Type": "LINEAR",
                        "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 34},
                        "WaitIntervalInSeconds": 1,
                    },
                    ["green-5xx"],
                    TerminationWaitInSeconds=1,
                ),
            )
            seen: list[float] = []
            state = router.endpoints[ENDPOINT]
            deadline = time.monotonic() + 30
            while state.config_name != "green" or state.status != "InService":
                share = green_share(router.runtime_server.table.by_name.get(ENDPOINT))
                if not seen or seen[-1] != share:
                    seen.append(share)
                assert time.monotonic() < deadline, f"the linear shift stalled at {seen}"
                await asyncio.sleep(0.05)
            await load.stop()
            assert seen == [0.0, 0.34, 0.68, 1.0], seen
            assert load.failures == []
            described = await call(sm.describe_endpoint, EndpointName=ENDPOINT)
            assert described["EndpointConfigName"] == "green"
            assert "FailureReason" not in described
            assert router.metrics is not None
            green = router.metrics.containers[(ENDPOINT, "AllTraffic", "green-main")]
            assert green.count > 0 and green.errors_5xx == 0


def _cond(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check


BAD_CONFIGS = [
    (
        policy({"Type": "BLUE", "WaitIntervalInSeconds": 1}),
        "Member must satisfy enum value set: [ALL_AT_ONCE, CANARY, LINEAR]",
    ),
    (policy({"Type": "CANARY", "WaitIntervalInSeconds": 1}), "CANARY requires CanarySize"),
    (
        policy(
            {
                "Type": "LINEAR",
                "WaitIntervalInSeconds": 1,
                "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1},
                "LinearStepSize": {"Type": "INSTANCE_COUNT", "Value": 1},
            }
        ),
        "CanarySize is only valid with TrafficRoutingConfiguration Type CANARY",
    ),
    (
        policy({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 3601}),
        "Member must have value less than or equal to 3600",
    ),
    (policy({"Type": "ALL_AT_ONCE"}), "trafficRoutingConfiguration.waitIntervalInSeconds"),
    (
        policy(
            {
                "Type": "CANARY",
                "WaitIntervalInSeconds": 1,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 101},
            }
        ),
        "Member must have value less than or equal to 100",
    ),
    (
        policy(
            {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            MaximumExecutionTimeoutInSeconds=60,
        ),
        "Member must have value greater than or equal to 600",
    ),
    ({"BlueGreenUpdatePolicy": {}}, "blueGreenUpdatePolicy.trafficRoutingConfiguration"),
    (
        {
            **policy({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}),
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "nope"}]},
        },
        "The alarm nope named in AutoRollbackConfiguration does not exist",
    ),
]


async def test_bad_deployment_configs_are_refused(config_factory: Any) -> None:
    async with Router(config_factory(alarms=(FIVE_XX,))) as router:
        # Without client-side validation, so that the router's own answers are what is tested.
        sm = control_client(router.admin_url, parameter_validation=False)
        with closing(sm):
            await create_fleets(sm, {})
            for deployment, message in BAD_CONFIGS:
                with pytest.raises(ClientError) as raised:
                    await call(
                        sm.update_endpoint,
                        EndpointName=ENDPOINT,
                        EndpointConfigName="green",
                        DeploymentConfig=deployment,
                    )
                error = raised.value.response["Error"]
                assert error["Code"] == "ValidationException", (deployment, error)
                assert message in error["Message"], (deployment, error["Message"])
            described = await call(sm.describe_endpoint, EndpointName=ENDPOINT)
            assert described["EndpointStatus"] == "InService"
            assert described["EndpointConfigName"] == "blue"
            assert "LastDeploymentConfig" not in described


async def test_delete_during_canary_stops_both_fleets(config_factory: Any) -> None:
    async with Router(config_factory()) as router:
        sm = control_client(router.admin_url)
        with closing(sm):
            await create_fleets(sm, {})
            blue = green_pids(router)
            await call(
                sm.update_endpoint,
                EndpointName=ENDPOINT,
                EndpointConfigName="green",
                DeploymentConfig=policy(
                    {
                        "Type": "CANARY",
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                        "WaitIntervalInSeconds": 600,
                    }
                ),
            )
            state = router.endpoints[ENDPOINT]
            await wait_until(_cond(lambda: state.traffic_shift == 0.5), 20, "the canary")
            green = green_pids(router)
            assert green and green.isdisjoint(blue)
            await call(sm.delete_endpoint, EndpointName=ENDPOINT)
            await wait_until(_cond(lambda: ENDPOINT not in router.endpoints), 20, "the deletion")
            await wait_no_live_processes(blue | green)
