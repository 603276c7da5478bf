"""Container faults seen through boto3: error answers become ModelError with the original status,
broken calls name the container (never a truncated 200), hangs end at the invocation timeout,
and the supervisor restarts dead or unhealthy containers while callers get fast errors."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from conftest import (
    call_raising,
    container,
    container_stats,
    deploy,
    invoke,
    multi_model,
    running_router,
    runtime_client,
    slot_of,
    wait_until,
)

from mce_router.config import Limits


def _response(exc: Exception) -> dict[str, Any]:
    response: dict[str, Any] = exc.response  # type: ignore[attr-defined]
    return response


def _log_path(message: str) -> Path:
    match = re.search(r"See the container log at (\S+)\.$", message)
    assert match is not None, f"no log path in {message!r}"
    return Path(match.group(1))


async def _invoke_bounded(client: Any, seconds: float, **kwargs: Any) -> dict[str, Any] | Exception:
    """One invocation that must finish (answer or error) within ``seconds``: never a hang."""
    try:
        async with asyncio.timeout(seconds):
            return await invoke(client, **kwargs)
    except TimeoutError:
        raise AssertionError(f"the invocation hung for more than {seconds:g} s") from None
    except Exception as exc:
        return exc


async def _wait_serving_again(
    client: Any, endpoint: str, host: str, limit: float = 15.0
) -> list[str]:
    """Invoke ``action=echo`` until it succeeds (bounded); return the error codes seen meanwhile,
    each of which must be a SageMaker-shaped ServiceUnavailable or ModelError."""
    deadline = time.monotonic() + limit
    seen: list[str] = []
    while True:
        outcome = await _invoke_bounded(
            client,
            5.0,
            EndpointName=endpoint,
            TargetContainerHostname=host,
            Body=b"are you back",
            CustomAttributes="action=echo",
        )
        if isinstance(outcome, dict):
            assert outcome["Body"] == b"are you back"
            return seen
        assert isinstance(
            outcome, client.exceptions.ServiceUnavailable | client.exceptions.ModelError
        ), repr(outcome)
        status = _response(outcome)["ResponseMetadata"]["HTTPStatusCode"]
        assert status in (503, 424), status
        assert host in _response(outcome)["Error"]["Message"]
        seen.append(_response(outcome)["Error"]["Code"])
        assert time.monotonic() < deadline, f"{host} did not serve again within {limit:g} s: {seen}"
        await asyncio.sleep(0.05)


async def test_model_error_fields_from_a_500(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(
            router, multi_model("me", [container("a"), container("b")], "Direct")
        )
        with closing(runtime_client(router)) as client:
            error = await call_raising(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="b",
                Body=b"x",
                CustomAttributes="action=status:500;message=boom",
            )
            assert isinstance(error, client.exceptions.ModelError), repr(error)
        response = _response(error)
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert response["Error"]["Code"] == "ModelError"
        assert response["OriginalStatusCode"] == 500
        assert response["OriginalMessage"] == "boom"
        instance = slot_of(router, endpoint, "b").launch.instance_id
        assert response["LogStreamArn"] == (
            "arn:aws:logs:us-east-1:000000000000:log-group:"
            f"/aws/sagemaker/Endpoints/{endpoint}:log-stream:AllTraffic/{instance}/b"
        )
        message = response["Error"]["Message"]
        assert message.startswith('Received server error (500) from b with message "boom".'), (
            message
        )
        log = _log_path(message)
        assert log == slot_of(router, endpoint, "b").launch.log_path
        assert log.is_file()
        assert f"starting {endpoint}/AllTraffic/{instance}/b" in log.read_text()


async def test_model_error_from_4xx_and_reason_phrase(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, multi_model("me4", [container("a")], "Direct"))
        with closing(runtime_client(router)) as client:
            client_error = await call_raising(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"x",
                CustomAttributes="action=status:422;message=bad input",
            )
            assert isinstance(client_error, client.exceptions.ModelError), repr(client_error)
            assert _response(client_error)["OriginalStatusCode"] == 422
            assert _response(client_error)["OriginalMessage"] == "bad input"
            assert "client error (422) from a" in _response(client_error)["Error"]["Message"]

            # Empty body: the reason phrase is the only message the container gave.
            reason = await call_raising(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"x",
                CustomAttributes="action=reason",
            )
            assert isinstance(reason, client.exceptions.ModelError), repr(reason)
            assert _response(reason)["OriginalStatusCode"] == 500
            assert _response(reason)["OriginalMessage"] == "Custom Failure Reason"

            # The container is still fine and the connection pool still works.
            ok = await invoke(client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"y")
            assert ok["Body"] == b"y"


async def test_crash_mid_request_then_restart(config_factory: Any) -> None:
    # The restarted process waits 1 s before listening, so the restart window is observable.
    model = multi_model(
        "crash", [container("a", FAULT_STARTUP="delay:1"), container("b")], "Direct"
    )
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, model)
        first = slot_of(router, endpoint, "a").container
        assert first is not None
        with closing(runtime_client(router)) as client:
            warm = await invoke(
                client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"w"
            )
            assert warm["Body"] == b"w"
            crash = await _invoke_bounded(
                client,
                10.0,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"x",
                CustomAttributes="action=crash",
            )
            assert isinstance(crash, client.exceptions.ModelError), repr(crash)
            assert _response(crash)["ResponseMetadata"]["HTTPStatusCode"] == 424
            assert _response(crash)["OriginalStatusCode"] == 0
            assert "from a with message" in _response(crash)["Error"]["Message"]
            assert "Container a:" in _response(crash)["OriginalMessage"]

            # The other container is not affected.
            other = await invoke(
                client, EndpointName=endpoint, TargetContainerHostname="b", Body=b"b"
            )
            assert other["Body"] == b"b"

            seen = await _wait_serving_again(client, endpoint, "a")
            assert seen, "no request fell into the 1 s restart window"
            assert set(seen) <= {"ServiceUnavailable", "ModelError"}
        slot = slot_of(router, endpoint, "a")
        assert slot.restarts == 1
        assert slot.container is not None and slot.container is not first
        assert first.exit_status() == 1
        assert slot.container.port == first.port


async def test_die_mid_body_is_an_error_never_a_truncated_200(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, multi_model("midbody", [container("a")], "Direct"))
        with closing(runtime_client(router)) as client:
            outcome = await _invoke_bounded(
                client,
                10.0,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"x",
                CustomAttributes="action=die-mid-body",
            )
            assert isinstance(outcome, client.exceptions.ModelError), repr(outcome)
            response = _response(outcome)
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
            assert response["OriginalStatusCode"] == 0
            assert "from a with message" in response["Error"]["Message"]
            assert "in the middle of its response" in response["OriginalMessage"]
            await _wait_serving_again(client, endpoint, "a")
        assert slot_of(router, endpoint, "a").restarts == 1


async def test_broken_http_answers_name_the_container(config_factory: Any) -> None:
    limits = Limits(max_response_body_bytes=1000)
    async with running_router(config_factory(limits=limits)) as router:
        endpoint = await deploy(router, multi_model("broken", [container("a")], "Direct"))
        with closing(runtime_client(router)) as client:
            for action, detail in (
                ("garbage", "invalid HTTP response"),
                ("close", "closed the connection before answering"),
                ("big:2000", "larger than the 1000-byte limit"),
            ):
                outcome = await _invoke_bounded(
                    client,
                    10.0,
                    EndpointName=endpoint,
                    TargetContainerHostname="a",
                    Body=b"x",
                    CustomAttributes=f"action={action}",
                )
                assert isinstance(outcome, client.exceptions.ModelError), (action, outcome)
                response = _response(outcome)
                assert response["OriginalStatusCode"] == 0, action
                assert "from a with message" in response["Error"]["Message"], action
                assert detail in response["OriginalMessage"], (action, response)
                # The container itself is alive: the next call succeeds on a fresh connection.
                ok = await invoke(
                    client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"ok"
                )
                assert ok["Body"] == b"ok", action
            exactly = await invoke(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"x",
                CustomAttributes="action=big:1000",
            )
            assert exactly["Body"] == b"x" * 1000
        assert slot_of(router, endpoint, "a").restarts == 0


async def test_hang_times_out_while_other_containers_answer(config_factory: Any) -> None:
    limits = Limits(invocation_timeout_seconds=1.0)
    async with running_router(config_factory(limits=limits)) as router:
        endpoint = await deploy(
            router, multi_model("hang", [container("a"), container("b"), container("c")], "Direct")
        )
        with closing(runtime_client(router)) as hanging, closing(runtime_client(router)) as other:
            hung = asyncio.create_task(
                call_raising(
                    hanging,
                    EndpointName=endpoint,
                    TargetContainerHostname="a",
                    Body=b"x",
                    CustomAttributes="action=hang",
                )
            )

            async def hang_reached_container() -> bool:
                return (await container_stats(router, endpoint, "a"))["invocations"] == 1

            await wait_until(hang_reached_container, 5.0, "the hanging call to reach a")
            for host in ("b", "c"):
                answer = await invoke(
                    other, EndpointName=endpoint, TargetContainerHostname=host, Body=host.encode()
                )
                assert answer["Body"] == host.encode()
            assert not hung.done(), "the hanging call ended before the others were served"

            async with asyncio.timeout(10):
                error = await hung
            assert isinstance(error, hanging.exceptions.ModelError), repr(error)
            response = _response(error)
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
            assert response["OriginalStatusCode"] == 0
            assert (
                "Your invocation timed out while waiting for a response from container a"
                in response["Error"]["Message"]
            ), response["Error"]["Message"]
            # The hung container is alive; its connection was dropped, a new one works.
            again = await invoke(
                other, EndpointName=endpoint, TargetContainerHostname="a", Body=b"back"
            )
            assert again["Body"] == b"back"
        assert slot_of(router, endpoint, "a").restarts == 0


async def test_container_failing_pings_is_restarted(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        endpoint = await deploy(router, multi_model("pings", [container("a")], "Direct"))
        first = slot_of(router, endpoint, "a").container
        with closing(runtime_client(router)) as client:
            switched = await invoke(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="a",
                Body=b"",
                CustomAttributes="action=set-ping:fail",
            )
            assert switched["Body"] == b"ok"

            async def restarted() -> bool:
                return slot_of(router, endpoint, "a").restarts >= 1

            await wait_until(restarted, 10.0, "the unhealthy container to be restarted")
            await _wait_serving_again(client, endpoint, "a")
        slot = slot_of(router, endpoint, "a")
        assert slot.container is not first
        assert first is not None and first.exit_status() is not None
