"""SageMaker's container contract on real containers, driven through boto3 (control plane and
runtime): Direct and Serial endpoints of images, the accept-bind-to-port label rule, ``serve``
and the environment as seen inside, a shared network namespace per instance, an instance's
limits shared by its containers (one cgroup, seen from inside), per-container CPU/memory metrics
from the engine's stats."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import (
    call,
    container,
    control_client,
    invoke,
    multi_model,
    runtime_client,
    wait_in_service,
)
from enginelib import (  # the fixtures, too: a conftest.py here would shadow tests/conftest.py
    DIR_IMAGE,
    QUICKSTART_IMAGE,
    UNLABELLED_IMAGE,
    Engine,
    engine,
    engine_config,
    engine_router,
    exec_in,
    invoke_target,
    no_container_left_behind,
)

from mce_router.config import MetricsSettings
from mce_router.runtime.engine import EngineContainer

pytestmark = pytest.mark.engine
__all__ = ["engine", "no_container_left_behind"]

LABEL_TEXT = (
    "Your Ecr Image {} does not contain required "
    "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true Docker label(s)."
)


def engine_container(router: Any, endpoint: str, name: str, instance: int = 0) -> EngineContainer:
    deployment = router.endpoints[endpoint].deployment
    slots = [s for s in deployment.slots if s.launch.container_name == name]
    running = slots[instance].container
    assert isinstance(running, EngineContainer)
    return running


async def create_endpoint(sm: Any, name: str, model: dict[str, Any], **variant: Any) -> None:
    await call(sm.create_model, **model)
    await call(
        sm.create_endpoint_config,
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model["ModelName"],
                "InitialInstanceCount": 1,
                **variant,
            }
        ],
    )
    await call(sm.create_endpoint, EndpointName=name, EndpointConfigName=name)
    await wait_in_service(sm, name)


@dataclass(frozen=True)
class CgroupView:
    """A container's memory and CPU cgroup (v1) as seen from inside it."""

    #: The cgroup its own cgroup sits in (/proc/self/cgroup, memory hierarchy).
    parent: str
    own_memory_limit: int
    own_cpu_quota: int
    #: The kernel's effective limit: the smallest of its own and its ancestors'.
    hierarchical_memory_limit: int


async def cgroup_view(engine: Engine, container_id: str) -> CgroupView:
    script = (
        "grep ':memory:' /proc/self/cgroup; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; "
        "grep '^hierarchical_memory_limit ' /sys/fs/cgroup/memory/memory.stat"
    )
    lines = (await exec_in(engine, container_id, "sh", "-c", script)).split()
    path = lines[0].split(":", 2)[2]
    return CgroupView(path.rsplit("/", 1)[0], int(lines[1]), int(lines[2]), int(lines[4]))


def host_cgroup_value(controller: str, path: str, name: str) -> int:
    """A cgroup v1 value as the host sees it (the engine runs on this machine)."""
    return int(Path(f"/sys/fs/cgroup/{controller}{path}/{name}").read_text())


async def create_failing_endpoint(sm: Any, name: str, seconds: float) -> dict[str, Any]:
    """CreateEndpoint on the config called ``name``; its DescribeEndpoint once Failed."""
    await call(sm.create_endpoint, EndpointName=name, EndpointConfigName=name)
    for _ in range(int(seconds * 10)):
        described: dict[str, Any] = await call(sm.describe_endpoint, EndpointName=name)
        if described["EndpointStatus"] != "Creating":
            break
        await asyncio.sleep(0.1)
    assert described["EndpointStatus"] == "Failed"
    return described


async def test_direct_and_serial_endpoints_of_images_through_boto3(
    engine: Engine, tmp_path: Path
) -> None:
    config = engine_config(engine, tmp_path).replace(
        metrics=MetricsSettings(usage_sample_seconds=0.2)
    )
    async with engine_router(config) as router:
        sm = control_client(router.admin_url)
        runtime = runtime_client(router)
        roles = ("preprocess", "model", "postprocess")
        serial = multi_model(
            "pipeline",
            [container(r, QUICKSTART_IMAGE, EXAMPLE_ROLE=r) for r in roles],
            "Serial",
        )
        direct = multi_model(
            "direct",
            [container(r, QUICKSTART_IMAGE, EXAMPLE_ROLE=r) for r in roles[:2]],
            "Direct",
        )
        await asyncio.gather(
            create_endpoint(sm, "serial", serial, InstanceType="ml.m5.large"),
            create_endpoint(
                sm, "direct", direct, InstanceType="ml.c5.large", InitialInstanceCount=2
            ),
        )
        answer = await invoke(
            runtime, EndpointName="serial", ContentType="text/csv", Body=b"1,2,3\n4,5,6\n"
        )
        assert answer["Body"] == b"1.375,positive\n4.0,positive\n"
        for _ in range(4):  # both instances answer
            answer_body = await invoke_target(
                runtime, "direct", "model", b'{"instances": [[1, 2, 3]]}'
            )
            assert answer_body == b'{"predictions":[1.375]}'

        # Started as SageMaker starts it: `<entrypoint> serve`, Environment + SAGEMAKER_*.
        model = engine_container(router, "serial", "model")
        info = await model.handle.show()
        assert info["Config"]["Cmd"] == ["serve"]
        env = (await exec_in(engine, model.container_id, "env")).splitlines()
        assert "EXAMPLE_ROLE=model" in env
        assert "SAGEMAKER_BIND_TO_PORT=8081" in env  # second container of its instance
        assert "SAGEMAKER_SAFE_PORT_RANGE=20010-20019" in env
        cmdlines = await exec_in(
            engine, model.container_id, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"
        )
        assert "/opt/program/entrypoint.sh serve" in cmdlines or "container.py" in cmdlines

        # One network namespace per instance: preprocess reaches model on localhost:8081.
        pre = engine_container(router, "serial", "preprocess")
        probe = (
            "import urllib.request as u; print(u.urlopen(u.Request('http://127.0.0.1:8081/"
            "invocations', data=b'{\"instances\": [[2]]}', headers={'Content-Type': "
            "'application/json'})).read().decode())"
        )
        assert (await exec_in(engine, pre.container_id, "python3", "-c", probe)).strip() == (
            '{"predictions":[1.0]}'
        )
        # Two instances of one variant: same ports inside, different ports for the router.
        first, second = (engine_container(router, "direct", "model", i) for i in (0, 1))
        assert first.port != second.port
        assert first.launch.instance_id != second.launch.instance_id

        # The instance type's limits hold for the containers of one instance together: each
        # container has no limit of its own, all sit in one cgroup (the instance's infra
        # container's) whose limits are the type's, and the kernel's effective limit seen
        # from inside every one of them is the instance's memory.
        serial_views = [
            await cgroup_view(engine, engine_container(router, "serial", role).container_id)
            for role in roles
        ]
        parents = {view.parent for view in serial_views}
        assert len(parents) == 1  # one cgroup for the whole instance
        for view in serial_views:
            assert view.own_memory_limit > 8 * 1024**3  # unlimited on its own
            assert view.own_cpu_quota == -1
            assert view.hierarchical_memory_limit == 8 * 1024**3  # ml.m5.large: 8 GiB
        (parent,) = parents
        assert host_cgroup_value("cpu", parent, "cpu.cfs_quota_us") == 200_000  # 2 vCPU
        assert host_cgroup_value("cpu", parent, "cpu.cfs_period_us") == 100_000
        assert host_cgroup_value("memory", parent, "memory.limit_in_bytes") == 8 * 1024**3
        # Two instances of one variant: a cgroup each, each with the whole type's limits.
        direct_views = [
            await cgroup_view(engine, engine_container(router, "direct", "model", i).container_id)
            for i in (0, 1)
        ]
        assert direct_views[0].parent != direct_views[1].parent
        for view in direct_views:
            assert view.hierarchical_memory_limit == 4 * 1024**3  # ml.c5.large: 4 GiB

        # Labels name router, endpoint, variant, instance and container.
        labels = info["Config"]["Labels"]
        assert labels["io.github.mce-router.endpoint"] == "serial"
        assert labels["io.github.mce-router.variant"] == "AllTraffic"
        assert labels["io.github.mce-router.instance"] == model.launch.instance_id
        assert labels["io.github.mce-router.container"] == "model"

        # CPUUtilization / MemoryUtilization per container, from the engine's stats.
        assert router.metrics is not None
        key = ("serial", "AllTraffic", "model")
        for _ in range(100):
            if key in router.metrics.usage:
                break
            await asyncio.sleep(0.1)
        usage = router.metrics.usage[key]
        assert 0.0 <= usage.cpu_now <= 200.0
        assert 0.0 < usage.memory_now < 5.0  # tens of MiB of 8 GiB
        text = router.metrics.prometheus_text().decode()
        assert 'sagemaker_container_memory_utilization_percent{container_name="model"' in text

        # The container's output streams into its log file, with the router's names.
        log_text = await asyncio.to_thread(Path(model.launch.log_path).read_text)
        assert "started serial/AllTraffic/" in log_text

        for name in ("serial", "direct"):
            await call(sm.delete_endpoint, EndpointName=name)
        for name in ("serial", "direct"):
            waiter = sm.get_waiter("endpoint_deleted")
            await call(waiter.wait, EndpointName=name, WaiterConfig={"Delay": 0.2})


async def test_create_model_rejects_images_without_the_label_or_absent(
    engine: Engine, tmp_path: Path
) -> None:
    async with engine_router(engine_config(engine, tmp_path)) as router:
        sm = control_client(router.admin_url)
        unlabelled = multi_model(
            "nolabel",
            [container("a", QUICKSTART_IMAGE), container("b", UNLABELLED_IMAGE)],
            "Direct",
        )
        with pytest.raises(ClientError) as caught:
            await call(sm.create_model, **unlabelled)
        error = caught.value.response["Error"]
        assert error["Code"] == "ValidationException"
        assert error["Message"] == LABEL_TEXT.format(UNLABELLED_IMAGE)
        # One container: SageMaker does not ask for the label.
        await call(
            sm.create_model, **multi_model("single", [container("a", UNLABELLED_IMAGE)], "Direct")
        )
        absent = "localhost/mce-does-not-exist:1"
        with pytest.raises(ClientError) as caught:
            await call(sm.create_model, **multi_model("absent", [container("a", absent)], "Serial"))
        error = caught.value.response["Error"]
        assert error["Code"] == "ValidationException"
        assert absent in error["Message"] and "Containers[0].Image" in error["Message"]
        with pytest.raises(ClientError) as caught:
            await call(
                sm.create_endpoint_config,
                EndpointConfigName="c",
                ProductionVariants=[
                    {"VariantName": "v", "ModelName": "single", "InstanceType": "ml.nope.large"}
                ],
            )
        message = caught.value.response["Error"]["Message"]
        assert "ml.nope.large" in message and "ml.m5.large" in message


async def test_model_data_from_a_file_tar_and_a_directory(engine: Engine, tmp_path: Path) -> None:
    import tarfile

    tree = tmp_path / "model"
    (tree / "sub").mkdir(parents=True)
    (tree / "model.json").write_text(json.dumps({"weights": [2, 1], "name": "from-tar"}))
    (tree / "sub" / "extra.txt").write_text("extra")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "model.json", "model.json")
        tar.add(tree / "sub", "sub")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.json").write_text(json.dumps({"weights": [1], "name": "from-dir"}))
    async with engine_router(engine_config(engine, tmp_path / "state")) as router:
        sm = control_client(router.admin_url)
        runtime = runtime_client(router)
        model = multi_model(
            "files",
            [
                {**container("tar", DIR_IMAGE), "ModelDataUrl": f"file://{archive}"},
                {**container("dir", DIR_IMAGE), "ModelDataUrl": f"file://{plain}"},
            ],
            "Direct",
        )
        await create_endpoint(sm, "files", model)
        for name, expected in (("tar", b"from-tar"), ("dir", b"from-dir")):
            answer = await invoke(
                runtime,
                EndpointName="files",
                TargetContainerHostname=name,
                ContentType="application/json",
                Body=b'{"instances": [[1, 1]]}',
            )
            assert expected in answer["Body"]
        running = engine_container(router, "files", "tar")
        listing = await exec_in(engine, running.container_id, "find", "/opt/ml/model")
        assert "/opt/ml/model/sub/extra.txt" in listing.split()
        # Read-only, as SageMaker mounts it.
        touch = await asyncio.to_thread(
            engine.podman, "exec", running.container_id, "touch", "/opt/ml/model/x", check=False
        )
        assert touch.returncode != 0
        # Fetched once: a second instance reuses the unpacked tree.
        cache = tmp_path / "state" / "model-data"
        assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
        await call(sm.delete_endpoint, EndpointName="files")
        await call(
            sm.get_waiter("endpoint_deleted").wait,
            EndpointName="files",
            WaiterConfig={"Delay": 0.2},
        )


async def test_container_exiting_at_start_names_exit_code_and_log_lines(
    engine: Engine, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    async with engine_router(engine_config(engine, tmp_path / "state")) as router:
        sm = control_client(router.admin_url)
        model = multi_model(
            "broken",
            [{**container("m", DIR_IMAGE), "ModelDataUrl": f"file://{empty}"}],
            "Direct",
        )
        await call(sm.create_model, **model)
        await call(
            sm.create_endpoint_config,
            EndpointConfigName="broken",
            ProductionVariants=[{"VariantName": "v", "ModelName": "broken"}],
        )
        described = await create_failing_endpoint(sm, "broken", seconds=20)
        reason = described["FailureReason"]
        assert "exited with code 1" in reason
        assert "model.json" in reason  # the traceback's last lines name the missing file
