"""State survives: ``mce-router serve`` killed with SIGKILL comes back with every endpoint, and
operations cut short by the crash end in defined states; declared resources are idempotent; one
router per state file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from botocore.exceptions import ClientError
from conftest import (
    FAULT_CONTAINER,
    FAULT_IMAGE,
    call,
    child_processes,
    client_for_url,
    container,
    control_client,
    endpoint_config,
    free_port,
    http_get,
    invoke,
    live_processes,
    multi_model,
    running_router,
    runtime_client,
    wait_in_service,
    wait_no_live_processes,
    wait_until,
)

from mce_router import ConfigError, EndpointStartupError, Router
from mce_router.config import HealthSettings


async def container_env(client: Any, endpoint: str, hostname: str) -> dict[str, Any]:
    answer = await invoke(
        client,
        EndpointName=endpoint,
        TargetContainerHostname=hostname,
        Body=b"",
        CustomAttributes="action=env",
    )
    env: dict[str, Any] = json.loads(answer["Body"])
    return env


@asynccontextmanager
async def serve(tmp_path: Path, run: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m mce_router.cli serve`` on fixed ports with its state in ``tmp_path/state``;
    yields the process and its base URL without the port part (runtime and admin ports are
    ``RUNTIME_PORT``/``ADMIN_PORT`` of the config written on first use)."""
    config_path = tmp_path / "router.yaml"
    if not config_path.exists():
        config = {
            "images": {FAULT_IMAGE: {"command": ["python", str(FAULT_CONTAINER)]}},
            "listen": {"host": "127.0.0.1", "port": free_port(), "admin_port": free_port()},
            "health": {
                "startup_timeout_seconds": 20,
                "startup_ping_interval_seconds": 0.05,
                "ping_interval_seconds": 0.5,
            },
            "process": {"stop_grace_seconds": 3},
        }
        config_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with (tmp_path / f"{run}.stderr").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mce_router.cli",
            "serve",
            "--config",
            str(config_path),
            "--state-dir",
            str(tmp_path / "state"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            ready = (await process.stdout.readline()).decode()
        assert ready.startswith("mce-router ready"), (
            ready,
            (tmp_path / f"{run}.stderr").read_text(),
        )
        yield process, ready
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def urls(ready_line: str) -> tuple[str, str]:
    """(runtime URL, admin URL) from ``mce-router ready: runtime URL admin URL``."""
    words = ready_line.split()
    return words[words.index("runtime") + 1], words[words.index("admin") + 1]


async def test_sigkill_restart_brings_every_endpoint_back(tmp_path: Path) -> None:
    """Run 1 (then SIGKILL): ``steady`` InService, ``moving`` in the middle of an update whose
    containers never come up, ``swapped`` Updating after its traffic moved (the old fleet drains
    a request), ``late`` Creating, ``leaving`` Deleting while it drains a request, ``broken``
    Failed. Run 2, on the same state directory, without any user action: ``steady`` serves with
    the same containers, ``moving`` serves its old fleet and says the update was interrupted,
    ``swapped`` serves its new fleet, ``late`` comes up, ``leaving`` is gone, ``broken`` is still
    Failed."""
    steady_model = multi_model(
        "steady",
        [container("alpha", TEST_WHO="alpha"), container("bravo", TEST_WHO="bravo")],
        "Direct",
    )
    async with serve(tmp_path, "run1") as (first, ready):
        runtime_url, admin_url = urls(ready)
        sm, runtime = control_client(admin_url), client_for_url(runtime_url)
        slow_clients = [client_for_url(runtime_url, read_timeout=60) for _ in range(2)]
        with closing(sm), closing(runtime), closing(slow_clients[0]), closing(slow_clients[1]):
            models = [
                steady_model,
                multi_model("old", [container("main", TEST_WHO="old")], "Direct"),
                multi_model("new", [container("main", TEST_WHO="new")], "Direct"),
                multi_model("never", [container("main", FAULT_STARTUP="delay:600")], "Direct"),
                multi_model("late", [container("main", FAULT_STARTUP="delay:2")], "Direct"),
                multi_model("broken", [container("main", FAULT_STARTUP="exit")], "Direct"),
            ]
            for model in models:
                await call(sm.create_model, **model)
                name = model["ModelName"]
                await call(sm.create_endpoint_config, **endpoint_config(name, name))
            for endpoint, config in [
                ("steady", "steady"),
                ("moving", "old"),
                ("leaving", "old"),
                ("swapped", "old"),
                ("broken", "broken"),
            ]:
                await call(sm.create_endpoint, EndpointName=endpoint, EndpointConfigName=config)
            for endpoint in ("steady", "moving", "leaving", "swapped"):
                await wait_in_service(sm, endpoint)
            assert (await container_env(runtime, "steady", "alpha"))["TEST_WHO"] == "alpha"
            before = await call(sm.describe_endpoint, EndpointName="steady")

            await call(sm.update_endpoint, EndpointName="moving", EndpointConfigName="never")
            # Invocations in flight keep "swapped" (after its update moved traffic) and
            # "leaving" (being deleted) draining when the kill comes.
            in_flight = []
            for client, endpoint in zip(slow_clients, ("swapped", "leaving"), strict=True):
                thread = threading.Thread(
                    target=_invoke_ignoring_errors,
                    args=(client, endpoint, "action=sleep:30"),
                    daemon=True,
                )
                thread.start()
                in_flight.append(thread)
                port = _port_from_log(tmp_path / "state", endpoint, "main")
                await wait_until(
                    lambda port=port: _invocations(port, 1), 10, f"a request to reach {endpoint}"
                )
            await call(sm.update_endpoint, EndpointName="swapped", EndpointConfigName="new")
            await _wait_described(
                sm, "swapped", EndpointConfigName="new", EndpointStatus="Updating"
            )
            await call(sm.delete_endpoint, EndpointName="leaving")
            await call(sm.create_endpoint, EndpointName="late", EndpointConfigName="late")
            statuses = {
                e["EndpointName"]: e["EndpointStatus"]
                for e in (await call(sm.list_endpoints))["Endpoints"]
            }
            assert statuses == {
                "steady": "InService",
                "moving": "Updating",
                "late": "Creating",
                "leaving": "Deleting",
                "swapped": "Updating",
                "broken": "Failed",
            }
            first_run = {p.pid for p in psutil.Process(first.pid).children(recursive=True)}
            assert len(first_run) >= 5

            first.send_signal(signal.SIGKILL)
            async with asyncio.timeout(10):
                await first.wait()
            for thread in in_flight:
                await asyncio.to_thread(thread.join, 10)

    async with serve(tmp_path, "run2") as (second, ready):
        # Nothing of the first run survives it (its containers die with it or are reaped).
        await wait_no_live_processes(first_run)
        runtime_url, admin_url = urls(ready)
        sm, runtime = control_client(admin_url), client_for_url(runtime_url)
        with closing(sm), closing(runtime):
            # Serving again before "ready" was printed: no waiter needed.
            after = await call(sm.describe_endpoint, EndpointName="steady")
            assert after["EndpointStatus"] == "InService"
            assert after["EndpointConfigName"] == before["EndpointConfigName"]
            assert after["CreationTime"] == before["CreationTime"]
            assert [
                v["DeployedImages"][0]["SpecifiedImage"] for v in after["ProductionVariants"]
            ] == [v["DeployedImages"][0]["SpecifiedImage"] for v in before["ProductionVariants"]]
            described_model = await call(sm.describe_model, ModelName="steady")
            assert described_model["Containers"] == steady_model["Containers"]
            for host in ("alpha", "bravo"):
                assert (await container_env(runtime, "steady", host))["TEST_WHO"] == host

            moving = await call(sm.describe_endpoint, EndpointName="moving")
            assert moving["EndpointStatus"] == "InService"
            assert moving["EndpointConfigName"] == "old"
            assert "update to endpoint configuration never was interrupted" in (
                moving["FailureReason"].lower()
            )
            assert "PendingDeploymentSummary" not in moving
            assert (await container_env(runtime, "moving", "main"))["TEST_WHO"] == "old"

            swapped = await call(sm.describe_endpoint, EndpointName="swapped")
            assert swapped["EndpointStatus"] == "InService"
            assert swapped["EndpointConfigName"] == "new"
            assert "FailureReason" not in swapped
            assert (await container_env(runtime, "swapped", "main"))["TEST_WHO"] == "new"

            await wait_in_service(sm, "late")
            broken = await call(sm.describe_endpoint, EndpointName="broken")
            assert broken["EndpointStatus"] == "Failed"
            assert "main did not pass the ping health check" in broken["FailureReason"]
            with pytest.raises(ClientError) as caught:
                await call(sm.describe_endpoint, EndpointName="leaving")
            assert caught.value.response["Error"]["Code"] == "ValidationException"
            names = sorted(e["EndpointName"] for e in (await call(sm.list_endpoints))["Endpoints"])
            assert names == ["broken", "late", "moving", "steady", "swapped"]
            # "moving" can be updated again, now to a config that works.
            await call(sm.update_endpoint, EndpointName="moving", EndpointConfigName="steady")
            await _wait_described(
                sm, "moving", EndpointConfigName="steady", EndpointStatus="InService"
            )
            second_run = {p.pid for p in psutil.Process(second.pid).children(recursive=True)}
            assert not second_run & first_run
        second.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await second.wait() == 0
        await wait_no_live_processes(second_run)


def _port_from_log(state_dir: Path, endpoint: str, hostname: str) -> int:
    """The fault container logs ``listening on HOST:PORT`` (the router runs in another process,
    so its slots are out of reach)."""
    (log_file,) = (state_dir / "logs" / endpoint).rglob(f"{hostname}.log")
    for line in log_file.read_text().splitlines():
        if "listening on " in line:
            return int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    raise AssertionError(f"no 'listening on' line in {log_file}")


async def _invocations(port: int, count: int) -> bool:
    status, body = await http_get(port, "/stats")
    return status == 200 and json.loads(body)["invocations"] >= count


def _invoke_ignoring_errors(client: Any, endpoint: str, attributes: str) -> None:
    try:
        client.invoke_endpoint(
            EndpointName=endpoint,
            TargetContainerHostname="main",
            Body=b"",
            CustomAttributes=attributes,
        )
    except Exception:  # the router is killed mid-request: that is the point
        return


async def _wait_described(client: Any, endpoint: str, **expected: str) -> None:
    """Poll DescribeEndpoint (up to 30 s) until the given members have the given values."""
    for _ in range(300):
        described = await call(client.describe_endpoint, EndpointName=endpoint)
        if all(described.get(key) == value for key, value in expected.items()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{endpoint} never showed {expected}: {described}")


def _declared(name: str, config_name: str, fleet: str) -> dict[str, Any]:
    return {
        "models": (multi_model(name, [container("main", TEST_FLEET=fleet)], "Direct"),),
        "endpoint_configs": (endpoint_config(config_name, name),),
        "endpoints": ({"EndpointName": "declared", "EndpointConfigName": config_name},),
    }


async def test_declared_resources_are_idempotent_and_update_through_the_api_path(
    config_factory: Any,
) -> None:
    first = config_factory(**_declared("v1", "v1", "one"))
    async with running_router(first) as router:
        described = router.describe_endpoint("declared")
        assert described["EndpointStatus"] == "InService"
        created = described["CreationTime"]
        model_created = router.describe_model("v1")["CreationTime"]
        # Declared resources are ordinary ones: the API sees and manages them.
        with closing(control_client(router.admin_url)) as sm:
            listed = await call(sm.list_models)
            assert [m["ModelName"] for m in listed["Models"]] == ["v1"]

    # Serving the same config again changes nothing (no duplicates, no update).
    async with running_router(first) as router:
        described = router.describe_endpoint("declared")
        assert described["EndpointStatus"] == "InService"
        assert described["CreationTime"] == created
        assert described["EndpointConfigName"] == "v1"
        assert router.describe_model("v1")["CreationTime"] == model_created
        assert sorted(router.models) == ["v1"]
        with closing(runtime_client(router)) as runtime:
            assert (await container_env(runtime, "declared", "main"))["TEST_FLEET"] == "one"

    # Another endpoint config for the endpoint: an UpdateEndpoint at startup.
    second = config_factory(**_declared("v2", "v2", "two"))
    async with running_router(second) as router:
        described = router.describe_endpoint("declared")
        assert described["EndpointStatus"] == "InService"
        assert described["EndpointConfigName"] == "v2"
        assert described["CreationTime"] == created
        assert sorted(router.models) == ["v1", "v2"]  # v1 stays until deleted
        with closing(runtime_client(router)) as runtime:
            assert (await container_env(runtime, "declared", "main"))["TEST_FLEET"] == "two"

    # Same model name, another definition: refused with a message naming it.
    changed = config_factory(**_declared("v2", "v2", "changed"))
    with pytest.raises(ConfigError) as caught:
        async with running_router(changed):
            raise AssertionError("started with a conflicting model")
    assert "config.models[0]: model 'v2' already exists" in caught.value.message
    assert "another definition" in caught.value.message


async def test_declared_failed_endpoint_is_created_again(config_factory: Any) -> None:
    health = HealthSettings(startup_timeout_seconds=5, startup_ping_interval_seconds=0.05)
    broken = config_factory(
        health=health,
        models=(multi_model("m", [container("main", FAULT_STARTUP="exit")], "Direct"),),
        endpoint_configs=(endpoint_config("c", "m"),),
        endpoints=({"EndpointName": "e", "EndpointConfigName": "c"},),
    )
    with pytest.raises(EndpointStartupError):
        async with running_router(broken):
            raise AssertionError("started although the declared endpoint failed")
    # Embedded, without declarations: the Failed endpoint stays Failed across restarts.
    async with running_router(config_factory(health=health)) as router:
        assert router.describe_endpoint("e")["EndpointStatus"] == "Failed"
    # Declared again: deleted and created again (and fails again, loudly).
    with pytest.raises(EndpointStartupError) as caught:
        async with running_router(broken):
            raise AssertionError("started although the declared endpoint failed")
    assert "main did not pass the ping health check" in caught.value.message


async def test_one_router_per_state_directory(config_factory: Any) -> None:
    before = child_processes()
    async with running_router(config_factory()) as router:
        with pytest.raises(ConfigError) as caught:
            async with Router(config_factory()):
                raise AssertionError("a second router started on the same state directory")
        assert f"in use by another mce-router (pid {os.getpid()})" in caught.value.message
        # The first one is unharmed.
        with closing(control_client(router.admin_url)) as sm:
            assert (await call(sm.list_endpoints))["Endpoints"] == []
    assert not live_processes(child_processes() - before)
