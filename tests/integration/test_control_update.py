"""Blue/green UpdateEndpoint and draining DeleteEndpoint, through boto3: zero failed requests under
steady load, a failed update keeping the old fleet in service, drains with a deadline, and
deletions that cancel a bring-up or an update."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import (
    FAST_WAITER,
    call,
    call_raising,
    child_processes,
    container,
    control_client,
    endpoint_config,
    invoke,
    live_processes,
    multi_model,
    running_router,
    runtime_client,
    validate_output,
    wait_in_service,
    wait_no_live_processes,
    wait_until,
)

from mce_router import Router
from mce_router.config import HealthSettings, Limits


def fleet_model(name: str, fleet: str, **environment: str) -> dict[str, Any]:
    """A Direct model whose one container reports ``TEST_FLEET`` through ``action=env``."""
    return multi_model(name, [container("main", TEST_FLEET=fleet, **environment)], "Direct")


async def which_fleet(client: Any, endpoint: str) -> str:
    answer = await invoke(
        client,
        EndpointName=endpoint,
        TargetContainerHostname="main",
        Body=b"",
        CustomAttributes="action=env",
    )
    return str(json.loads(answer["Body"])["TEST_FLEET"])


def fleet_pids(router: Router, endpoint: str) -> set[int]:
    deployment = router.endpoints[endpoint].deployment
    assert deployment is not None
    return {pid for slot in deployment.slots if slot.container for pid in slot.container.pids()}


async def create_blue(router: Router, sm: Any, endpoint: str = "bg") -> None:
    await call(sm.create_model, **fleet_model("blue", "blue"))
    await call(sm.create_endpoint_config, **endpoint_config("blue", "blue"))
    await call(sm.create_endpoint, EndpointName=endpoint, EndpointConfigName="blue")
    await wait_in_service(sm, endpoint)


async def test_update_under_steady_load_loses_no_request(config_factory: Any) -> None:
    """A client invoking sequentially every 10 ms through a whole blue/green update: every
    request succeeds, those before the swap are answered by blue, those after by green, and a
    long request in flight on blue at the swap finishes there before blue stops."""
    async with running_router(config_factory()) as router:
        sm, runtime = control_client(router.admin_url), runtime_client(router)
        slow_client = runtime_client(router)
        with closing(sm), closing(runtime), closing(slow_client):
            await create_blue(router, sm)
            blue_pids = fleet_pids(router, "bg")
            # Green listens 0.5 s after it starts: the update takes a while under load.
            await call(sm.create_model, **fleet_model("green", "green", FAULT_STARTUP="delay:0.5"))
            await call(sm.create_endpoint_config, **endpoint_config("green", "green"))

            answers: list[str] = []
            failures: list[str] = []
            sent = 0
            stop_load = asyncio.Event()

            async def steady_load() -> None:
                nonlocal sent
                while not stop_load.is_set():
                    sent += 1
                    try:
                        answers.append(await which_fleet(runtime, "bg"))
                    except Exception as exc:  # counted, and shown if any
                        failures.append(repr(exc))
                    await asyncio.sleep(0.01)

            load = asyncio.create_task(steady_load())
            await wait_until(
                condition(lambda: len(answers) >= 10), 10, "requests before the update"
            )

            await call(sm.update_endpoint, EndpointName="bg", EndpointConfigName="green")
            # 3 s on blue, started while green is still starting: in flight at the swap.
            slow = asyncio.create_task(
                invoke(
                    slow_client,
                    EndpointName="bg",
                    TargetContainerHostname="main",
                    Body=b"slow",
                    CustomAttributes="action=sleep:3",
                )
            )
            updating = await call(sm.describe_endpoint, EndpointName="bg")
            assert updating["EndpointStatus"] == "Updating"
            assert updating["EndpointConfigName"] == "blue"
            assert updating["PendingDeploymentSummary"]["EndpointConfigName"] == "green"
            validate_output(sm, "DescribeEndpoint", updating)

            state = router.endpoints["bg"]
            await wait_until(
                condition(lambda: state.config_name == "green"),
                15,
                "the routing table to swap",
            )
            # Swapped: blue is out of the table, draining the slow request, not stopped yet.
            assert state.status == "Updating"
            (retiring,) = state.retiring
            # The slow request; a steady-load request that reached blue just before the swap
            # may still be finishing.
            await wait_until(
                condition(lambda: retiring.in_flight == 1), 5, "blue to drain all but the slow one"
            )
            assert live_processes(blue_pids) == blue_pids
            swapped_at = len(answers)

            assert (await slow)["Body"] == b"slow"
            await wait_in_service(sm, "bg")
            await wait_until(
                condition(lambda: len(answers) >= swapped_at + 20), 10, "requests on green"
            )
            stop_load.set()
            await load

            assert failures == [], failures
            assert len(answers) == sent
            first_green = answers.index("green")
            assert set(answers[:first_green]) == {"blue"}
            assert set(answers[first_green:]) == {"green"}, "blue answered after the swap"
            assert first_green >= 10
            assert len(answers) - first_green >= 20
            print(
                f"steady load: sent={sent} ok={len(answers)} failed={len(failures)} "
                f"blue={first_green} green={len(answers) - first_green}"
            )

            described = await call(sm.describe_endpoint, EndpointName="bg")
            assert described["EndpointConfigName"] == "green"
            assert "PendingDeploymentSummary" not in described
            assert "FailureReason" not in described
            await wait_no_live_processes(blue_pids)

            # The end of the lifecycle: delete, and boto3's waiter sees it gone.
            green_pids = fleet_pids(router, "bg")
            await call(sm.delete_endpoint, EndpointName="bg")
            waiter = sm.get_waiter("endpoint_deleted")
            await call(waiter.wait, EndpointName="bg", WaiterConfig=FAST_WAITER)
            await wait_no_live_processes(green_pids)


async def test_failed_update_keeps_the_old_fleet_in_service(config_factory: Any) -> None:
    health = HealthSettings(
        startup_timeout_seconds=2.0,
        startup_ping_interval_seconds=0.05,
        ping_interval_seconds=0.5,
        unhealthy_threshold=2,
    )
    before = child_processes()
    async with running_router(config_factory(health=health)) as router:
        sm, runtime = control_client(router.admin_url), runtime_client(router)
        with closing(sm), closing(runtime):
            await create_blue(router, sm)
            blue_pids = fleet_pids(router, "bg")
            broken = multi_model(
                "broken",
                [
                    container("main", TEST_FLEET="broken"),
                    container("bravo", FAULT_STARTUP="exit:5"),
                    container("charlie", FAULT_PING="fail"),
                ],
                "Direct",
            )
            await call(sm.create_model, **broken)
            await call(sm.create_endpoint_config, **endpoint_config("broken", "broken"))
            await call(sm.update_endpoint, EndpointName="bg", EndpointConfigName="broken")
            assert (await router.wait_settled("bg")) is not None

            # The waiter succeeds at once: the endpoint is InService, on the old fleet.
            await wait_in_service(sm, "bg")
            described = await call(sm.describe_endpoint, EndpointName="bg")
            assert described["EndpointStatus"] == "InService"
            assert described["EndpointConfigName"] == "blue"
            reason = described["FailureReason"]
            assert "Update to endpoint configuration broken failed" in reason
            assert "still serves blue" in reason
            assert "bravo did not pass the ping health check" in reason
            assert "charlie did not pass the ping health check" in reason
            assert "main did not pass" not in reason
            assert "PendingDeploymentSummary" not in described
            assert await which_fleet(runtime, "bg") == "blue"
            assert fleet_pids(router, "bg") == blue_pids
            # Nothing of the failed fleet is left running.
            await wait_no_live_processes(child_processes() - before - blue_pids)

            # A later successful update clears the reason.
            await call(sm.create_model, **fleet_model("green", "green"))
            await call(sm.create_endpoint_config, **endpoint_config("green", "green"))
            await call(sm.update_endpoint, EndpointName="bg", EndpointConfigName="green")
            await router.wait_settled("bg")
            await wait_in_service(sm, "bg")
            described = await call(sm.describe_endpoint, EndpointName="bg")
            assert described["EndpointConfigName"] == "green"
            assert "FailureReason" not in described
            assert await which_fleet(runtime, "bg") == "green"


async def test_update_refused_unless_in_service_and_delete_cancels_it(
    config_factory: Any,
) -> None:
    before = child_processes()
    async with running_router(config_factory()) as router:
        sm, runtime = control_client(router.admin_url), runtime_client(router)
        with closing(sm), closing(runtime):
            await create_blue(router, sm)
            # Green never listens within the test: the update stays Updating until deleted.
            await call(sm.create_model, **fleet_model("green", "green", FAULT_STARTUP="delay:60"))
            await call(sm.create_endpoint_config, **endpoint_config("green", "green"))
            await call(sm.update_endpoint, EndpointName="bg", EndpointConfigName="green")
            with pytest.raises(ClientError) as caught:
                await call(sm.update_endpoint, EndpointName="bg", EndpointConfigName="blue")
            assert caught.value.response["Error"]["Code"] == "ValidationException"
            assert "while its status is Updating" in caught.value.response["Error"]["Message"]
            await wait_until(
                condition(lambda: router.endpoints["bg"].starting is not None),
                5,
                "green to start",
            )
            assert len(child_processes() - before) == 2  # blue serving, green starting
            assert await which_fleet(runtime, "bg") == "blue"

            await call(sm.delete_endpoint, EndpointName="bg")
            waiter = sm.get_waiter("endpoint_deleted")
            await call(waiter.wait, EndpointName="bg", WaiterConfig=FAST_WAITER)
            await wait_no_live_processes(child_processes() - before)
            error = await call_raising(
                runtime, EndpointName="bg", TargetContainerHostname="main", Body=b""
            )
            assert isinstance(error, runtime.exceptions.ValidationError), repr(error)


async def test_delete_during_creating_cancels_the_bring_up(config_factory: Any) -> None:
    before = child_processes()
    async with running_router(config_factory()) as router:
        with closing(control_client(router.admin_url)) as sm:
            await call(sm.create_model, **fleet_model("slow", "slow", FAULT_STARTUP="delay:60"))
            await call(sm.create_endpoint_config, **endpoint_config("slow", "slow"))
            await call(sm.create_endpoint, EndpointName="slow", EndpointConfigName="slow")
            await wait_until(
                condition(lambda: len(child_processes() - before) == 1),
                5,
                "the container to start",
            )
            assert (await call(sm.describe_endpoint, EndpointName="slow"))[
                "EndpointStatus"
            ] == "Creating"
            await call(sm.delete_endpoint, EndpointName="slow")
            waiter = sm.get_waiter("endpoint_deleted")
            await call(waiter.wait, EndpointName="slow", WaiterConfig=FAST_WAITER)
            await wait_no_live_processes(child_processes() - before)
            # The name is free again.
            await call(sm.create_endpoint, EndpointName="slow", EndpointConfigName="slow")
            await call(sm.delete_endpoint, EndpointName="slow")


@pytest.mark.parametrize("drain_timeout", [30.0, 0.5])
async def test_delete_drains_in_flight_requests_up_to_the_deadline(
    config_factory: Any, drain_timeout: float
) -> None:
    """In-flight requests finish before the containers stop; one that outlives
    ``limits.drain_timeout_seconds`` is cut off when they do."""
    before = child_processes()
    config = config_factory(limits=Limits(drain_timeout_seconds=drain_timeout))
    async with running_router(config) as router:
        sm, runtime = control_client(router.admin_url), runtime_client(router)
        with closing(sm), closing(runtime):
            await create_blue(router, sm)
            pids = fleet_pids(router, "bg")
            slow = asyncio.create_task(
                invoke(
                    runtime,
                    EndpointName="bg",
                    TargetContainerHostname="main",
                    Body=b"slow",
                    CustomAttributes="action=sleep:2",
                )
            )
            state = router.endpoints["bg"]
            assert state.deployment is not None
            deployment = state.deployment
            await wait_until(
                condition(lambda: deployment.in_flight == 1), 5, "the request to arrive"
            )
            await call(sm.delete_endpoint, EndpointName="bg")
            deleting = await call(sm.describe_endpoint, EndpointName="bg")
            assert deleting["EndpointStatus"] == "Deleting"
            # Out of the routing table at once.
            with closing(runtime_client(router)) as other:
                error = await call_raising(
                    other, EndpointName="bg", TargetContainerHostname="main", Body=b""
                )
                assert isinstance(error, other.exceptions.ValidationError), repr(error)
            waiter = sm.get_waiter("endpoint_deleted")
            await call(waiter.wait, EndpointName="bg", WaiterConfig=FAST_WAITER)
            if drain_timeout > 2:
                assert (await slow)["Body"] == b"slow"  # the containers waited for it
            else:
                failure = await asyncio.gather(slow, return_exceptions=True)
                assert isinstance(failure[0], Exception), failure
            await wait_no_live_processes(pids | (child_processes() - before))


def condition(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``wait_until`` polls an async check; most checks here read router state."""

    async def check() -> bool:
        return predicate()

    return check
