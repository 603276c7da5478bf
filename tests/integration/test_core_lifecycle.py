"""Lifecycle: startup health failures, embedded use leaving nothing behind, the external runtime,
and the ``mce-router serve`` CLI as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import (
    FAULT_CONTAINER,
    FAULT_IMAGE,
    call_raising,
    child_processes,
    client_for_url,
    container,
    deploy,
    endpoint_config,
    free_port,
    http_get,
    images_for_tests,
    invocations_received,
    invoke,
    live_processes,
    multi_model,
    running_router,
    runtime_client,
    slot_of,
    wait_no_live_processes,
    wait_until,
)

from mce_router import EndpointStartupError, Router
from mce_router.config import HealthSettings, ProcessSettings, parse_external_url

FAST_HEALTH = dict(
    startup_ping_interval_seconds=0.05,
    ping_interval_seconds=0.5,
    unhealthy_threshold=2,
    restart_backoff_initial_seconds=0.1,
)


def _router_timers(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """Scheduled, uncancelled timer callbacks of mce_router objects (asyncio's own loop keeps
    them in ``_scheduled``)."""
    scheduled = getattr(loop, "_scheduled", None)
    assert scheduled is not None, "the tests run on asyncio's loop, which lists its timers"
    return [
        handle
        for handle in scheduled
        if not handle.cancelled()
        and type(getattr(handle._callback, "__self__", None)).__module__.startswith("mce_router")
    ]


async def _create_failing(router: Router, model: dict[str, Any]) -> EndpointStartupError:
    name = str(model["ModelName"])
    router.create_model(model)
    router.create_endpoint_config(endpoint_config(name, name))
    with pytest.raises(EndpointStartupError) as caught:
        await router.create_endpoint({"EndpointName": name, "EndpointConfigName": name})
    return caught.value


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_startup_fails_when_a_container_never_passes_ping(config_factory: Any) -> None:
    config = config_factory(health=HealthSettings(startup_timeout_seconds=2.0, **FAST_HEALTH))
    before = child_processes()
    model = multi_model(
        "unhealthy",
        [
            container("alpha"),
            container("bravo", FAULT_PING="fail"),
            container("charlie"),
            container("delta", FAULT_PING="fail"),
        ],
        "Direct",
    )
    async with running_router(config) as router:
        error = await _create_failing(router, model)
        assert error.failed_containers == ("bravo", "delta")
        for name in ("bravo", "delta"):
            assert f"{name} did not pass the ping health check" in error.message, error.message
        for name in ("alpha", "charlie"):
            assert name not in error.message.split(" See the container logs")[0], error.message
        assert "GET /ping answered 500" in error.message

        described = router.describe_endpoint("unhealthy")
        assert described["EndpointStatus"] == "Failed"
        assert described["FailureReason"] == error.message
        assert router.endpoints["unhealthy"].deployment is None

        # Everything it started is stopped already, before the router exits.
        await wait_no_live_processes(child_processes() - before)
        # It did start all four: each has its log file.
        logs = sorted(p.stem for p in (config.state_dir / "logs" / "unhealthy").rglob("*.log"))
        assert logs == ["alpha", "bravo", "charlie", "delta"]

        with closing(runtime_client(router)) as client:
            failed = await call_raising(
                client, EndpointName="unhealthy", TargetContainerHostname="alpha", Body=b"x"
            )
            assert isinstance(failed, client.exceptions.ValidationError), repr(failed)
    await wait_no_live_processes(child_processes() - before)


async def test_startup_exit_fails_fast(config_factory: Any) -> None:
    # A 60 s window: the failure must come from the exit, not from waiting the window out.
    config = config_factory(health=HealthSettings(startup_timeout_seconds=60.0, **FAST_HEALTH))
    before = child_processes()
    model = multi_model(
        "exits", [container("alpha"), container("bravo", FAULT_STARTUP="exit")], "Direct"
    )
    async with running_router(config) as router:
        async with asyncio.timeout(15):
            error = await _create_failing(router, model)
        assert error.failed_containers == ("bravo",)
        assert "bravo did not pass the ping health check" in error.message
        assert "exited with code 3" in error.message, error.message
        # The container's own words: the last lines of its log.
        assert "; last log lines: fault container [" in error.message
        assert "]: FAULT_STARTUP=exit: exiting with code 3" in error.message
        described = router.describe_endpoint("exits")
        assert described["EndpointStatus"] == "Failed"
        assert "FAULT_STARTUP=exit: exiting with code 3" in described["FailureReason"]
        await wait_no_live_processes(child_processes() - before)


async def test_a_container_that_never_listens_is_reported_as_refused_not_as_a_cut_timeout(
    config_factory: Any,
) -> None:
    config = config_factory(health=HealthSettings(startup_timeout_seconds=1.5, **FAST_HEALTH))
    model = multi_model("deaf", [container("alpha", FAULT_STARTUP="never-listen")], "Direct")
    async with running_router(config) as router:
        error = await _create_failing(router, model)
        port = error.message.partition("connection refused on port ")[2].split(" ")[0]
        assert port.isdigit(), error.message
        assert "not healthy within 1.5 s; last: connection refused on port" in error.message
        assert "must listen on SAGEMAKER_BIND_TO_PORT" in error.message
        assert "no answer to GET /ping" not in error.message


async def test_embedded_router_leaves_nothing_behind(config_factory: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    config = config_factory(process=ProcessSettings(stop_grace_seconds=0.5))
    model = multi_model(
        "embedded",
        [
            container("plain"),
            container(
                "forker",
                FAULT_FORK_CHILD="1",
                FAULT_CHILD_PID_FILE=str(pid_file),
                FAULT_CHILD_MAX_SECONDS="60",
            ),
            container("stubborn", FAULT_IGNORE_SIGTERM="1"),
        ],
        "Direct",
    )
    this_task = asyncio.current_task()
    tasks_before = asyncio.all_tasks()
    assert tasks_before == {this_task}
    children_before = child_processes()
    fds_before = psutil.Process().num_fds()

    async with Router(config) as router:
        endpoint = await deploy(router, model)
        with closing(runtime_client(router)) as client:
            for host in ("plain", "forker", "stubborn"):
                response = await invoke(
                    client, EndpointName=endpoint, TargetContainerHostname=host, Body=host.encode()
                )
                assert response["Body"] == host.encode()
        grandchild = int(pid_file.read_text())
        started = child_processes() - children_before
        assert grandchild in started
        assert len(started) == 4  # three containers and the forked grandchild
        stubborn = slot_of(router, endpoint, "stubborn").container
        forker = slot_of(router, endpoint, "forker").container
        ports = [router.runtime_port, router.admin_port]
        ports += [slot.container.port for slot in router.endpoints[endpoint].deployment.slots]  # type: ignore[union-attr]

    assert asyncio.all_tasks() == {this_task}
    # Nor a timer of its own on the caller's loop (the runtime server's sweeper once stayed).
    assert _router_timers(asyncio.get_running_loop()) == []
    # Stopping waits for every group to be gone; SIGKILL is asynchronous, so allow a brief poll.
    await wait_no_live_processes(started | {grandchild}, timeout=3.0)
    assert not live_processes(started | {grandchild})
    assert not live_processes(child_processes() - children_before)
    assert getattr(stubborn, "process").returncode == -signal.SIGKILL  # noqa: B009
    assert getattr(forker, "process").returncode == 0  # noqa: B009  SIGTERM: clean exit
    for port in ports:
        assert await _refused(port), f"port {port} still accepts connections"
    assert psutil.Process().num_fds() == fds_before


async def test_external_container_is_used_not_owned(config_factory: Any) -> None:
    port = free_port()
    env = dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(port), TEST_WHO="external")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FAULT_CONTAINER),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def listening() -> bool:
            try:
                return (await http_get(port, "/ping"))[0] == 200
            except OSError:
                return False

        await wait_until(listening, 10.0, "the external container to listen")
        images = images_for_tests(
            **{"external/fault:1": parse_external_url(f"http://127.0.0.1:{port}", "test")}
        )
        model = multi_model(
            "ext", [container("outside", "external/fault:1"), container("inside")], "Direct"
        )
        async with running_router(config_factory(images=images)) as router:
            endpoint = await deploy(router, model)
            assert slot_of(router, endpoint, "outside").container.port == port  # type: ignore[union-attr]
            with closing(runtime_client(router)) as client:
                outside = await invoke(
                    client,
                    EndpointName=endpoint,
                    TargetContainerHostname="outside",
                    Body=b"",
                    CustomAttributes="action=env",
                )
                assert json.loads(outside["Body"])["TEST_WHO"] == "external"
                inside = await invoke(
                    client, EndpointName=endpoint, TargetContainerHostname="inside", Body=b"in"
                )
                assert inside["Body"] == b"in"
        # The router stopped; the container it did not start still runs and serves.
        assert process.returncode is None
        assert (await http_get(port, "/ping"))[0] == 200
    finally:
        if process.returncode is None:
            process.kill()
        async with asyncio.timeout(10):
            await process.wait()


async def test_cli_serve_answers_boto3_and_stops_cleanly(tmp_path: Path) -> None:
    runtime_port, admin_port = free_port(), free_port()
    config = {
        "images": {FAULT_IMAGE: {"command": ["python", str(FAULT_CONTAINER)]}},
        "listen": {"host": "127.0.0.1", "port": runtime_port, "admin_port": admin_port},
        "health": {"startup_timeout_seconds": 20, **FAST_HEALTH},
        "process": {"stop_grace_seconds": 3},
        "state_dir": "state",
        "models": [multi_model("cli", [container("a"), container("b")], "Direct")],
        "endpoint_configs": [endpoint_config("cli", "cli")],
        "endpoints": [{"EndpointName": "cli", "EndpointConfigName": "cli"}],
    }
    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml.safe_dump(config))
    stderr_path = tmp_path / "cli.stderr"
    # Without the operator's own malloc settings, which the sidecar would leave alone.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MALLOC_")) and k != "GLIBC_TUNABLES"
    }
    with stderr_path.open("wb") as stderr:
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mce_router.cli",
            "serve",
            "--config",
            str(config_path),
            "--drain-seconds",
            "5",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    assert cli.stdout is not None
    try:
        async with asyncio.timeout(30):
            ready = await cli.stdout.readline()
        assert ready.decode().strip() == (
            f"mce-router ready: runtime http://127.0.0.1:{runtime_port} "
            f"admin http://127.0.0.1:{admin_port}"
        ), (ready, stderr_path.read_text())
        assert (tmp_path / "state" / "logs" / "cli").is_dir()
        if platform.libc_ver()[0] == "glibc":
            assert "memory allocator: glibc malloc: blocks under 8 MiB from the heap" in (
                stderr_path.read_text()
            )

        with closing(client_for_url(f"http://127.0.0.1:{runtime_port}")) as client:
            for host in ("a", "b"):
                response = await invoke(
                    client, EndpointName="cli", TargetContainerHostname=host, Body=host.encode()
                )
                assert response["Body"] == host.encode()
                assert response["InvokedProductionVariant"] == "AllTraffic"
        assert (await http_get(admin_port, "/ping"))[0] == 200
        containers = {p.pid for p in psutil.Process(cli.pid).children(recursive=True)}
        assert len(containers) == 2

        # SIGTERM drains: a request the container is still working on is answered, then the
        # router stops its containers and exits.
        received = await invocations_received(containers)

        async def arrived() -> bool:
            return await invocations_received(containers) > received

        with closing(client_for_url(f"http://127.0.0.1:{runtime_port}")) as slow_client:
            in_flight = asyncio.ensure_future(
                invoke(
                    slow_client,
                    EndpointName="cli",
                    TargetContainerHostname="a",
                    Body=b"in flight at SIGTERM",
                    CustomAttributes="action=sleep:1.5",
                )
            )
            await wait_until(arrived, 10, "the request to reach container a", 0.02)
            cli.send_signal(signal.SIGTERM)
            answered = await in_flight
        assert answered["Body"] == b"in flight at SIGTERM"
        async with asyncio.timeout(15):
            rest = await cli.stdout.read()
            code = await cli.wait()
        assert code == 0, (rest, stderr_path.read_text())
        await wait_no_live_processes(containers, timeout=3.0)
        assert await _refused(runtime_port)
        assert await _refused(admin_port)
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()


async def test_router_start_failure_cleans_up(config_factory: Any) -> None:
    """Declared resources whose endpoint fails make ``async with Router`` raise, and everything
    started so far (listeners, containers, tasks) is gone."""
    model = multi_model(
        "declared", [container("alpha"), container("bravo", FAULT_STARTUP="exit:4")], "Direct"
    )
    config = config_factory(
        models=(model,),
        endpoint_configs=(endpoint_config("declared", "declared"),),
        endpoints=({"EndpointName": "declared", "EndpointConfigName": "declared"},),
    )
    this_task = asyncio.current_task()
    children_before = child_processes()
    fds_before = psutil.Process().num_fds()
    with pytest.raises(EndpointStartupError) as caught:
        async with Router(config):
            raise AssertionError("the router started although its endpoint failed")
    assert "bravo did not pass the ping health check" in caught.value.message
    assert "exited with code 4" in caught.value.message
    assert "alpha" not in caught.value.message.split(" See the container logs")[0]
    assert asyncio.all_tasks() == {this_task}
    await wait_no_live_processes(child_processes() - children_before)
    assert psutil.Process().num_fds() == fds_before


async def test_orphans_of_a_killed_router_are_reaped_by_the_next(
    config_factory: Any, tmp_path: Path
) -> None:
    """A router killed outright cannot stop anything: its containers die with it (parent-death
    signal), a child they forked survives, and the next router on the same state_dir kills it."""
    pid_file = tmp_path / "grandchild.pid"
    forker = container(
        "forker",
        FAULT_FORK_CHILD="1",
        FAULT_CHILD_PID_FILE=str(pid_file),
        FAULT_CHILD_MAX_SECONDS="60",
    )
    config = {
        "images": {FAULT_IMAGE: {"command": ["python", str(FAULT_CONTAINER)]}},
        "listen": {"host": "127.0.0.1", "port": free_port(), "admin_port": free_port()},
        "health": {"startup_timeout_seconds": 20, **FAST_HEALTH},
        "state_dir": "state",
        "models": [multi_model("orphans", [forker], "Direct")],
        "endpoint_configs": [endpoint_config("orphans", "orphans")],
        "endpoints": [{"EndpointName": "orphans", "EndpointConfigName": "orphans"}],
    }
    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mce_router.cli",
        "serve",
        "--config",
        str(config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert cli.stdout is not None
    grandchild = 0
    try:
        async with asyncio.timeout(30):
            ready = await cli.stdout.readline()
        assert ready.startswith(b"mce-router ready"), ready
        grandchild = int(pid_file.read_text())
        leaders = {p.pid for p in psutil.Process(cli.pid).children()}
        assert len(leaders) == 1

        cli.kill()
        async with asyncio.timeout(10):
            await cli.stdout.read()
            await cli.wait()
        await wait_no_live_processes(leaders)
        assert live_processes({grandchild}) == {grandchild}, "nothing left to reap"

        # The next router with the same state_dir finds the recorded group and kills it. (Its
        # own state file is elsewhere: the endpoint coming back from state.db, with a new
        # SIGTERM-ignoring grandchild to wait out at stop, is test_control_restart's subject.)
        next_router = config_factory(state_file=tmp_path / "other-state.db")
        assert next_router.state_dir == tmp_path / "state"
        async with running_router(next_router):
            await wait_no_live_processes({grandchild})
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
        if grandchild and live_processes({grandchild}):
            os.kill(grandchild, signal.SIGKILL)
