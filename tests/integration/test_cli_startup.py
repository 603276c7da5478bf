"""`mce-router` as a person meets it: one clear line for every start-up failure (exit 2 for
usage and configuration, 1 at run time; no traceback unless --log-level DEBUG), --version and
``python -m mce_router``, and SIGINT/SIGTERM honoured at every moment, start-up included."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import (
    FAULT_CONTAINER,
    FAULT_IMAGE,
    container,
    endpoint_config,
    free_port,
    invocations_received,
    live_processes,
    multi_model,
    wait_no_live_processes,
    wait_until,
)

import mce_router

pytestmark = pytest.mark.timeout(120)

FAST_HEALTH = {"startup_ping_interval_seconds": 0.05, "ping_interval_seconds": 0.5}


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MALLOC_"))}


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mce_router", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "images": {FAULT_IMAGE: {"command": ["python", str(FAULT_CONTAINER)]}},
        "listen": {"host": "127.0.0.1", "port": free_port(), "admin_port": free_port()},
        "health": {"startup_timeout_seconds": 20, **FAST_HEALTH},
        "process": {"stop_grace_seconds": 30},
        "state_dir": str(tmp_path / "state"),
    }
    config.update(changes)
    return config


def _declared(name: str, **environment: str) -> dict[str, Any]:
    return {
        "models": [multi_model(name, [container("a", **environment)], "Direct")],
        "endpoint_configs": [endpoint_config(name, name)],
        "endpoints": [{"EndpointName": name, "EndpointConfigName": name}],
    }


def _write(tmp_path: Path, config: dict[str, Any] | str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure as the user sees it: exactly one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mce-router: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version_and_python_dash_m() -> None:
    result = _run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"mce-router {mce_router.__version__}")
    assert mce_router.__version__ != "0+unknown"  # installed: the version comes from metadata


def test_an_invalid_log_level_is_a_usage_error(tmp_path: Path) -> None:
    result = _run_cli("serve", "--config", str(_write(tmp_path, {})), "--log-level", "LOUD")
    assert result.returncode == 2
    assert "'LOUD' is not a log level; choose one of DEBUG, INFO, WARNING, ERROR" in result.stderr


@pytest.mark.parametrize(
    ("config", "status", "expected"),
    [
        (None, 2, "config: cannot read {path}: No such file or directory"),
        ("listen:\n  port: 1\n bad: [", 2, "config: {path}:3:2: YAML syntax error: "),
        (
            {"listen": {"prot": 1}},
            2,
            "config.listen.prot: unknown setting 'prot'; did you mean 'port'?",
        ),
        ({"modles": []}, 2, "config.modles: unknown setting 'modles'; did you mean 'models'?"),
        (
            {"models": [{"ModelName": "m", "Containers": [{"Image": "i", "Enviroment": {}}]}]},
            2,
            "config.models[0] (ModelName 'm'): 1 validation error detected: Value 'Enviroment' at "
            "'Containers[0].Enviroment' failed to satisfy constraint: Member must be a parameter "
            "of ContainerDefinition (did you mean 'Containers[0].Environment'?)",
        ),
        (
            {"endpoints": [{"EndpointName": "e"}]},
            2,
            "config.endpoints[0] (EndpointName 'e'): 1 validation error detected: Value null at "
            "'EndpointConfigName' failed to satisfy constraint: Member must not be null",
        ),
    ],
    ids=[
        "missing-file",
        "yaml-syntax",
        "misspelled-setting",
        "misspelled-section",
        "misspelled-model-field",
        "missing-required-field",
    ],
)
def test_configuration_errors_are_one_line_and_exit_2(
    tmp_path: Path, config: Any, status: int, expected: str
) -> None:
    path = tmp_path / "router.yaml" if config is None else _write(tmp_path, config)
    result = _run_cli("serve", "--config", str(path))
    assert result.returncode == status, result.stderr
    assert _one_line(result).startswith(f"mce-router: {expected.format(path=path)}")


def test_a_port_in_use_names_the_listener_and_exits_1(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = _config(tmp_path)
        config["listen"]["admin_port"] = port
        result = _run_cli("serve", "--config", str(_write(tmp_path, config)))
    assert result.returncode == 1, result.stderr
    assert _one_line(result) == (
        f"mce-router: admin and control-plane listener: cannot listen on 127.0.0.1:{port}: "
        "address already in use (another program has it; choose another listen.admin_port or "
        "--admin-port)"
    )


def test_a_state_directory_that_cannot_be_created_is_one_line_and_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = _config(tmp_path, state_dir=str(blocker / "state"))
    result = _run_cli("serve", "--config", str(_write(tmp_path, config)))
    assert result.returncode == 1, result.stderr
    assert _one_line(result) == (
        f"mce-router: state directory {blocker / 'state'}: cannot create or write it "
        "(Not a directory); set state_dir (or --state-dir) to a writable directory"
    )


def test_debug_log_level_adds_the_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = _config(tmp_path, state_dir=str(blocker / "state"))
    result = _run_cli("serve", "--config", str(_write(tmp_path, config)), "--log-level", "debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


async def _start_cli(config_path: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mce_router",
        "serve",
        "--config",
        str(config_path),
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_cli_env(),
    )


async def _kill_leftovers(cli: asyncio.subprocess.Process, containers: set[int]) -> None:
    """After a failed assertion: nothing the test started may outlive it."""
    if cli.returncode is None:
        cli.kill()
        await cli.wait()
    for pid in live_processes(containers):
        os.kill(pid, signal.SIGKILL)


def _containers_of(cli: asyncio.subprocess.Process) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(cli.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_during_start_up_stops_it_and_the_containers_started_so_far(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # The container never listens: start-up would wait for its whole startup window (10 min).
    config = _config(
        tmp_path,
        health={"startup_timeout_seconds": 600, **FAST_HEALTH},
        **_declared("slow", FAULT_STARTUP="never-listen"),
    )
    cli = await _start_cli(_write(tmp_path, config))
    containers: set[int] = set()
    try:

        async def container_running() -> bool:
            containers.update(_containers_of(cli))
            return bool(containers)

        await wait_until(container_running, 30, "the container to be started")
        cli.send_signal(sig)
        async with asyncio.timeout(15):
            _, stderr = await cli.communicate()
        assert cli.returncode == 0, stderr.decode()
        assert "stopping during start-up: stopping the containers started so far" in (
            stderr.decode()
        )
        await wait_no_live_processes(containers)
    finally:
        await _kill_leftovers(cli, containers)


async def test_a_second_signal_during_the_drain_exits_at_once_and_still_saves_state(
    tmp_path: Path,
) -> None:
    # The container ignores SIGTERM and a request keeps the drain waiting for a minute.
    config = _config(tmp_path, **_declared("draining", FAULT_IGNORE_SIGTERM="1"))
    cli = await _start_cli(_write(tmp_path, config), "--drain-seconds", "60")
    containers: set[int] = set()
    assert cli.stdout is not None
    try:
        async with asyncio.timeout(30):
            ready = await cli.stdout.readline()
        assert ready.startswith(b"mce-router ready"), ready
        containers = _containers_of(cli)
        assert containers
        port = config["listen"]["port"]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /endpoints/draining/invocations HTTP/1.1\r\nHost: x\r\n"
            b"X-Amzn-SageMaker-Target-Container-Hostname: a\r\n"
            b"X-Amzn-SageMaker-Custom-Attributes: action=sleep:60\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()

        async def arrived() -> bool:
            return await invocations_received(containers) >= 1

        await wait_until(arrived, 10, "the request to reach the container", 0.02)
        cli.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert cli.returncode is None  # draining: waiting for the request
        cli.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):  # not the 60 s drain, nor the 30 s stop grace
            _, stderr = await cli.communicate()
        writer.close()
        assert cli.returncode == 0, stderr.decode()
        assert "SIGINT again: stopping now, without waiting for the drain" in stderr.decode()
        await wait_no_live_processes(containers)
    finally:
        await _kill_leftovers(cli, containers)
    # The endpoint is in the state file, as it was: the next start brings it back.
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        rows = db.execute("SELECT name FROM endpoints").fetchall()
    assert rows == [("draining",)]
