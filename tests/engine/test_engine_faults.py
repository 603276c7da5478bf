"""Engine faults are clear errors, never hangs; crashes leave nothing behind; s3:// models.

An unreachable engine at start-up; a container killed for memory; a router killed with SIGKILL
(the next one removes its containers and only those); the engine going away under a running
endpoint (clear 5xx meanwhile, serving again once it is back); ModelDataUrl from a real
S3-compatible server (moto's server mode).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from conftest import call, container, control_client, invoke, multi_model, runtime_client
from enginelib import (  # the fixtures, too: a conftest.py here would shadow tests/conftest.py
    DIR_IMAGE,
    QUICKSTART_IMAGE,
    REPO,
    Engine,
    engine,
    engine_config,
    engine_router,
    labelled_containers,
    no_container_left_behind,
    start_service,
    stop_service,
)
from test_engine_contract import create_endpoint, create_failing_endpoint, engine_container

from mce_router import Router, RouterConfig
from mce_router.config import EngineSettings
from mce_router.errors import ContainerEngineError
from mce_router.runtime.engine import ROUTER_LABEL

pytestmark = pytest.mark.engine
__all__ = ["engine", "no_container_left_behind"]
HOG_IMAGE = "localhost/mce-test-hog:latest"


async def test_unreachable_engine_is_a_start_up_error_naming_the_url(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-engine.sock"
    config = engine_config(Engine(url, {}, None, None), tmp_path)
    router = Router(config)
    with pytest.raises(ContainerEngineError) as caught:
        async with asyncio.timeout(20):
            await router.start()
    assert url in caught.value.message


async def test_killed_for_memory_is_said_as_such(engine: Engine, tmp_path: Path) -> None:
    build = await asyncio.to_thread(
        engine.podman,
        "build",
        "-q",
        "--build-arg",
        "BASE_IMAGE=localhost/mce-base:latest",
        "-t",
        HOG_IMAGE,
        str(Path(__file__).parent / "images" / "hog"),
    )
    assert build.returncode == 0
    async with engine_router(engine_config(engine, tmp_path)) as router:
        sm = control_client(router.admin_url)
        await call(sm.create_model, **multi_model("hog", [container("hog", HOG_IMAGE)], "Direct"))
        await call(
            sm.create_endpoint_config,
            EndpointConfigName="hog",
            ProductionVariants=[
                {
                    "VariantName": "v",
                    "ModelName": "hog",
                    "InstanceType": "ml.t2.medium",
                    # Faulting in 4 GiB takes a while on a shared machine.
                    "ContainerStartupHealthCheckTimeoutInSeconds": 90,
                }
            ],
        )
        described = await create_failing_endpoint(sm, "hog", seconds=90)
        reason = described["FailureReason"]
        assert "exited with code 137" in reason
        assert "killed for running out of memory" in reason
        assert "4 GiB of instance type ml.t2.medium" in reason


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_router_killed_with_sigkill_leaves_no_orphans(engine: Engine, tmp_path: Path) -> None:
    state = tmp_path / "state"
    model = multi_model("m", [container("model", QUICKSTART_IMAGE)], "Direct")
    config = {
        "listen": {"port": _free_port(), "admin_port": _free_port()},
        "state_dir": str(state),
        "container_engine": {"url": engine.url, "stop_grace_seconds": 2},
        "health": {"ping_interval_seconds": 0.5},
        "models": [model],
        "endpoint_configs": [
            {
                "EndpointConfigName": "c",
                "ProductionVariants": [{"VariantName": "v", "ModelName": "m"}],
            }
        ],
        "endpoints": [{"EndpointName": "e", "EndpointConfigName": "c"}],
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    # Containers another router (or a user) runs: never touched.
    foreign = await asyncio.to_thread(
        engine.podman,
        "run",
        "-d",
        "--label",
        f"{ROUTER_LABEL}=someone-else",
        "localhost/mce-base:latest",
        "sleep",
        "300",
    )
    foreign_id = foreign.stdout.strip()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, read in a thread
        [sys.executable, "-m", "mce_router.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(_read_until_ready, process.stdout), 60)
        assert ready, "the router did not report ready"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        left = [
            c
            for c in await labelled_containers(engine.url)
            if c["Labels"].get(ROUTER_LABEL) != "someone-else"
        ]
        assert len(left) == 2  # the model container and its instance's network holder
        async with Router(RouterConfig.from_file(path)) as router:
            now = {c["Id"] for c in await labelled_containers(engine.url)}
            assert not {c["Id"] for c in left} & now  # the orphans are gone
            assert foreign_id in now  # and someone else's container is still there
            assert router.endpoints["e"].status == "InService"  # brought back as new containers
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        await asyncio.to_thread(engine.podman, "rm", "-f", foreign_id, check=False)


def _read_until_ready(stream: Any) -> bool:
    for _ in range(10_000):  # bounded: the router logs a few lines before it is ready
        line = stream.readline()
        if not line:
            return False
        if b"mce-router ready" in line:
            return True
    return False


async def test_engine_going_away_under_a_running_endpoint(engine: Engine, tmp_path: Path) -> None:
    if engine.service is None:
        pytest.skip("needs a podman service this test can stop and start (MCE_ENGINE_URL given)")
    own = await asyncio.to_thread(start_service, engine.env)
    assert own.service is not None and own.socket_dir is not None
    try:
        config = engine_config(own, tmp_path, api_timeout_seconds=2.0)
        # Restart attempts every 0.5 s at most, so the test sees the recovery soon.
        config = config.replace(
            health=dataclasses.replace(config.health, restart_backoff_max_seconds=0.5)
        )
        async with engine_router(config) as router:
            sm = control_client(router.admin_url)
            runtime = runtime_client(router)
            model = multi_model("m", [container("model", QUICKSTART_IMAGE)], "Direct")
            await create_endpoint(sm, "e", model)
            request = {
                "EndpointName": "e",
                "TargetContainerHostname": "model",
                "ContentType": "application/json",
                "Body": b'{"instances": [[1]]}',
            }
            await asyncio.to_thread(stop_service, own.service)
            # podman's containers outlive its API service: still serving.
            assert (await invoke(runtime, **request))["Body"] == b'{"predictions":[0.5]}'
            # Docker's die with the engine: the container goes too, the engine is still away.
            running = engine_container(router, "e", "model")
            await asyncio.to_thread(own.podman, "kill", running.container_id, check=False)
            error = None
            for _ in range(100):
                try:
                    await invoke(runtime, **request)
                except ClientError as exc:
                    error = exc
                    if "does not answer" in str(exc):
                        break
                await asyncio.sleep(0.1)
            assert error is not None
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert error.response["Error"]["Code"] == "ServiceUnavailable"
            assert own.url in str(error)  # says which engine does not answer
            # DescribeEndpoint and ListEndpoints say so: out of service, and why.
            described = await call(sm.describe_endpoint, EndpointName="e")
            assert described["EndpointStatus"] == "OutOfService"
            assert "e/AllTraffic/" in described["FailureReason"]
            assert own.url in described["FailureReason"]
            listed = await call(sm.list_endpoints, StatusEquals="OutOfService")
            assert [e["EndpointName"] for e in listed["Endpoints"]] == ["e"]
            # The engine is back on the same socket: the container is restarted, serving again.
            own = await asyncio.to_thread(start_service, engine.env, own.socket_dir)
            answer: dict[str, Any] = {}
            for _ in range(200):
                try:
                    answer = await invoke(runtime, **request)
                    break
                except ClientError:
                    await asyncio.sleep(0.1)
            assert answer.get("Body") == b'{"predictions":[0.5]}'
            described = await call(sm.describe_endpoint, EndpointName="e")
            assert described["EndpointStatus"] == "InService"
            assert "FailureReason" not in described
    finally:
        if own.service is not None:
            await asyncio.to_thread(stop_service, own.service)


async def test_model_data_from_s3(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        endpoint_url = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint_url)
        await call(s3.create_bucket, Bucket="models")
        body = json.dumps({"weights": [3], "name": "from-s3"}).encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            info = tarfile.TarInfo("model.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        await call(s3.put_object, Bucket="models", Key="m/model.tar.gz", Body=archive.getvalue())
        config = engine_config(engine, tmp_path, s3_endpoint_url=endpoint_url)
        async with engine_router(config) as router:
            sm = control_client(router.admin_url)
            model = multi_model(
                "s3m",
                [{**container("m", DIR_IMAGE), "ModelDataUrl": "s3://models/m/model.tar.gz"}],
                "Direct",
            )
            await create_endpoint(sm, "s3", model)
            answer = await invoke(
                runtime_client(router),
                EndpointName="s3",
                TargetContainerHostname="m",
                ContentType="application/json",
                Body=b'{"instances": [[2]]}',
            )
            assert answer["Body"] == b'{"predictions":[6.0],"model":"from-s3"}'
    finally:
        server.stop()


def test_engine_settings_default_to_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/x.sock")
    assert EngineSettings().url == "unix:///run/x.sock"
    monkeypatch.delenv("DOCKER_HOST")
    assert EngineSettings().url == "unix:///var/run/docker.sock"
