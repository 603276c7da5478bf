"""Container-engine runtime: model images run as real containers over the Docker Engine API.

Works with Docker and with podman's Docker-compatible service (``podman system service``),
through aiodocker. Containers are started the way SageMaker starts them:

- the image's entrypoint with the argument ``serve``; the model's ``Environment`` plus
  ``SAGEMAKER_BIND_TO_PORT`` and ``SAGEMAKER_SAFE_PORT_RANGE``;
- each instance has a small "infra" container (as a Kubernetes pod's pause container) that
  holds what its containers share. ``network: instance`` (the default): one network namespace,
  so they reach each other on localhost as in SageMaker; the infra container publishes each
  container's port on the router's address (ports from the router's bind-port range, so the
  address stays the same when a container, or the infra container, is restarted, and two
  instances never collide). ``network: host``: the engine host's network, with ports handed out
  by the router;
- the variant's ``InstanceType`` (runtime/instances.py) bounds the CPU and memory the
  containers of one instance use *together*: the limits are set on the infra container, and
  the model containers are created in its cgroup (``HostConfig.CgroupParent``), so the kernel
  counts them against the instance's limits. That needs cgroup v1 and the cgroupfs driver,
  which the engine reports in ``GET /info``; podman's and Docker's cgroup paths differ and are
  known for both. Elsewhere (cgroup v2 forbids processes in a cgroup whose children have
  controllers; systemd's driver only takes slices as parents) each container gets the whole
  instance's limits, and the router says so at start;
- ``ModelDataUrl`` unpacked once (runtime/modeldata.py) and mounted read-only at
  ``/opt/ml/model``;
- stopped with SIGTERM, SIGKILL after the grace period (the engine's own ``stop``);
- labelled with the router, endpoint, variant, instance and container, so that a router that
  starts again after a crash removes what it left behind, and nothing it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiodocker
import aiohttp
from aiodocker.multiplexed import multiplexed_result_stream

from ..config import EngineSettings, ProcessSettings
from ..errors import ContainerEngineError, ServiceUnavailable, ValidationError
from . import instances
from .base import ContainerLaunch
from .modeldata import ModelDataCache
from .ports import PortBlocks, allocate_ports

log = logging.getLogger(__name__)
#: Container output goes to the router's log under this logger, one line per record.
container_log = logging.getLogger("mce_router.container")

BIND_LABEL = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"
LABEL_PREFIX = "io.github.mce-router."
ROUTER_LABEL = LABEL_PREFIX + "router"
ROLE_LABEL = LABEL_PREFIX + "role"
#: Inside an instance's network namespace: container i listens on BASE + i.
INSTANCE_BASE_PORT = 8080
INSTANCE_SAFE_RANGE_START = 20000
MODEL_DIR = "/opt/ml/model"
#: aiodocker's DockerError status for "cannot connect to the engine" (not an HTTP status).
_NO_CONNECTION = 900
#: Exceptions that mean "the engine did not answer" (socket gone, refused, reset, hung).
_UNREACHABLE = (OSError, aiohttp.ClientError, asyncio.TimeoutError)
#: The cgroup parent of infra containers, so the router knows their cgroup's path (the
#: model containers of the instance go below it).
CGROUP_PARENT = "/mce-router"


def accepts_bind_port(labels: Mapping[str, Any]) -> bool:
    """Whether an image's labels say it listens on SAGEMAKER_BIND_TO_PORT (SageMaker's rule)."""
    return str(labels.get(BIND_LABEL, "")).lower() == "true"


def router_id(state_dir: Path) -> str:
    """Names this router in labels: one router owns a state directory (it holds a lock)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def _name_part(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:60]


@dataclass(slots=True)
class _Instance:
    """One endpoint instance's shared parts: its network namespace and its ports."""

    key: str
    #: Host port (router side) per container name; fixed for the instance's lifetime.
    host_ports: dict[str, int]
    #: Port inside the namespace per container name.
    inner_ports: dict[str, int]
    infra: aiodocker.containers.DockerContainer | None = None
    #: The infra container's cgroup (shared limits), None when limits are per container.
    cgroup: str | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


@dataclass(slots=True, eq=False)
class EngineContainer:
    launch: ContainerLaunch
    host: str
    port: int
    container_id: str
    name: str
    instance_type: instances.InstanceType | None
    safe_range: tuple[int, int] | None
    handle: aiodocker.containers.DockerContainer = dataclasses.field(repr=False)
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    exit_code: int | None = None
    oom_killed: bool = False
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, repr=False)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list, repr=False)
    _last_cpu: tuple[float, int] | None = dataclasses.field(default=None, repr=False)

    def exit_status(self) -> int | None:
        return self.exit_code

    def pids(self) -> tuple[int, ...]:
        # Usage comes from the engine's stats (usage()), which also work for a remote engine.
        return ()

    @property
    def restartable(self) -> bool:
        return True

    async def wait(self) -> int:
        await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code

    def exit_detail(self) -> str:
        """Why it exited beyond its code, for FailureReason: a kill for memory said as such
        (its last log lines come from the log file, as for every runtime)."""
        if not (self.oom_killed or self.exit_code == 137):
            return ""
        memory = (
            f"the {self.instance_type.memory_bytes / instances.GIB:g} GiB of instance type "
            f"{self.instance_type.name}"
            if self.instance_type is not None
            else "its memory limit"
        )
        what = "OOMKilled" if self.oom_killed else "exit code 137 (SIGKILL)"
        return f"killed for running out of memory ({what}): it needed more than {memory}"

    async def usage(self) -> tuple[float, float] | None:
        """(CPUUtilization, MemoryUtilization) from the engine's stats.

        CPU is percent of one CPU (SageMaker's meaning: up to 100 x vCPUs), from the growth
        of the container's CPU time over wall-clock time between two samples (one-shot stats
        carry no usable previous sample on podman). Memory is percent of the instance's
        memory (the limit of the container), page cache excluded as ``docker stats`` does.
        """
        try:
            async with asyncio.timeout(10):
                stats = await self.handle.stats(stream=False)
        except (aiodocker.DockerError, *_UNREACHABLE):
            return None
        sample = stats[0] if isinstance(stats, list) and stats else stats
        if not isinstance(sample, Mapping):
            return None
        total = int(sample.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage") or 0)
        memory = sample.get("memory_stats", {}) or {}
        used = int(memory.get("usage") or 0)
        detail = memory.get("stats") or {}
        used -= int(detail.get("total_inactive_file") or detail.get("inactive_file") or 0)
        limit = (
            self.instance_type.memory_bytes
            if self.instance_type is not None
            else int(memory.get("limit") or 0)
        )
        now = time.monotonic()
        previous, self._last_cpu = self._last_cpu, (now, total)
        if previous is None or now <= previous[0] or total < previous[1]:
            return None  # a rate needs two samples of the same container
        cpu = (total - previous[1]) / 1e9 / (now - previous[0]) * 100.0
        return cpu, (max(used, 0) / limit * 100.0 if limit else 0.0)


class EngineRuntime:
    def __init__(
        self,
        docker: aiodocker.Docker,
        settings: EngineSettings,
        ports: tuple[PortBlocks, PortBlocks],
        process: ProcessSettings,
        state_dir: Path,
        cgroup_template: str | None = None,
    ) -> None:
        self._docker = docker
        self._settings = settings
        self._router_id = router_id(state_dir)
        # The process runtime's own allocators: host-network containers' ports and instances'
        # published ports come from the same ranges, so the two runtimes never collide.
        self._bind_ports, self._ranges = ports
        self._bind_host = process.bind_host
        #: The infra container's cgroup path with ``{id}`` for its id; None: per container.
        self._cgroup_template = cgroup_template
        engine_host = urlsplit(settings.url).hostname if settings.url.startswith("tcp") else None
        #: Where the router reaches published ports: the engine's host.
        self._reach_host = engine_host or process.bind_host
        self._instances: dict[str, _Instance] = {}
        self._images: dict[str, Mapping[str, Any]] = {}
        self._warned_types: set[str] = set()
        model_dir = settings.model_data_dir or str(state_dir / "model-data")
        self._model_data = ModelDataCache(
            Path(model_dir),
            max_bytes=settings.model_data_max_bytes,
            s3_endpoint_url=settings.s3_endpoint_url,
        )

    @classmethod
    async def connect(
        cls,
        settings: EngineSettings,
        ports: tuple[PortBlocks, PortBlocks],
        process: ProcessSettings,
        state_dir: Path,
    ) -> EngineRuntime:
        """Reach the engine (a clear start-up error naming the URL if it does not answer) and
        remove the containers a previous run of this router left behind."""
        docker = aiodocker.Docker(url=settings.url)
        try:
            # Each under its own deadline: podman's /info adds up storage and can take seconds.
            async with asyncio.timeout(settings.api_timeout_seconds):
                version = await docker.version()
            async with asyncio.timeout(settings.api_timeout_seconds):
                info = await docker.system.info()
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            await docker.close()
            raise ContainerEngineError(
                f"container_engine: no Docker Engine API answers at {settings.url} ({exc!r}). "
                "Start Docker, or podman's service (`podman system service --time=0 "
                "unix:///run/podman/podman.sock`), or point container_engine.url (or "
                "DOCKER_HOST) at it."
            ) from exc
        name = str((version.get("Components") or [{}])[0].get("Name", "engine"))
        template = shared_cgroup_template(name, info)
        runtime = cls(docker, settings, ports, process, state_dir, template)
        log.info(
            "container engine at %s: %s %s (API %s, cgroup v%s, %s driver)",
            settings.url,
            name,
            version.get("Version"),
            version.get("ApiVersion"),
            info.get("CgroupVersion"),
            info.get("CgroupDriver"),
        )
        if template is None:
            log.warning(
                "container engine at %s: an instance's containers cannot share one cgroup "
                "here (needs cgroup v1 and the cgroupfs driver); each container gets the whole "
                "InstanceType's CPU and memory instead",
                settings.url,
            )
        await runtime.remove_orphans()
        return runtime

    # --- images ----------------------------------------------------------------------------

    async def inspect_image(self, image: str, field: str) -> Mapping[str, Any]:
        """The image's config, pulled first as the pull policy says; ValidationError naming
        the image when it is absent and cannot be pulled."""
        policy = self._settings.pull
        try:
            if policy == "always":
                await self._pull(image, field)
            try:
                info = await self._call(self._docker.images.inspect(image))
            except aiodocker.DockerError as exc:
                if exc.status != 404 or policy == "never":
                    raise ValidationError(
                        f"Image '{image}' at '{field}' is not present on the container engine "
                        f"({exc.message}); pull policy is '{policy}'. Pull or build it, or set "
                        "container_engine.pull to 'missing'.",
                        field=field,
                        rule="the image must be present or pullable",
                    ) from exc
                await self._pull(image, field)
                info = await self._call(self._docker.images.inspect(image))
        except ContainerEngineError as exc:
            raise ServiceUnavailable(
                f"Cannot check image '{image}' at '{field}': {exc.message}"
            ) from exc
        self._images[image] = info
        return dict(info)

    async def _pull(self, image: str, field: str) -> None:
        try:
            # Pulls take as long as they take; the engine reports failures in the stream.
            await self._docker.images.pull(image, timeout=None)
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise self._unreachable(exc) from exc
            raise ValidationError(
                f"Image '{image}' at '{field}' cannot be pulled by the container engine: "
                f"{exc.message}",
                field=field,
                rule="the image must be present or pullable",
            ) from exc
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from exc

    async def check_model(self, images: Sequence[tuple[str, str]], container_count: int) -> None:
        """CreateModel's image rules for (image, field) pairs of one model: each present or
        pullable; with more than one container, each must accept a bind port (SageMaker)."""
        for image, field in images:
            info = await self.inspect_image(image, field)
            if container_count > 1:
                self._require_bind_label(image, info, field)

    @staticmethod
    def _require_bind_label(image: str, info: Mapping[str, Any], field: str) -> None:
        if not accepts_bind_port((info.get("Config") or {}).get("Labels") or {}):
            raise ValidationError(
                f"Your Ecr Image {image} does not contain required "
                f"{BIND_LABEL}=true Docker label(s).",
                field=field,
                rule=f"multi-container models need images labelled {BIND_LABEL}=true",
            )

    # --- start -------------------------------------------------------------------------------

    async def start(self, launch: ContainerLaunch, *, port: int | None = None) -> EngineContainer:
        instance_type = self._instance_type(launch)
        info = self._images.get(launch.image)
        if info is None:
            info = await self.inspect_image(launch.image, "Image")
        if len(launch.instance_containers) > 1:
            # CreateModel checks this; a model created through the embedding API without
            # check_model meets it here.
            self._require_bind_label(launch.image, info, "Image")
        model_dir = None
        if launch.model_data_url:
            model_dir = await asyncio.to_thread(self._model_data.path_for, launch.model_data_url)
        instance = await self._instance(launch, instance_type)
        infra = instance.infra
        assert infra is not None
        host_config: dict[str, Any] = {}
        if instance_type is not None:
            if instance.cgroup is not None:
                # In the infra container's cgroup, which has the instance's limits: what
                # the instance's containers use together is bounded, as in SageMaker.
                host_config["CgroupParent"] = instance.cgroup
            else:
                host_config.update(_limits(instance_type))
        if model_dir is not None:
            host_config["Binds"] = [f"{model_dir}:{MODEL_DIR}:ro"]
        safe_range: tuple[int, int] | None = None
        if self._settings.network == "host":
            host_config["NetworkMode"] = "host"
            inner_port, safe_range = allocate_ports(self._bind_ports, self._ranges, port)
            inner_range = safe_range
            host_port = inner_port
        else:
            host_config["NetworkMode"] = f"container:{infra.id}"
            inner_port = instance.inner_ports[launch.container_name]
            first = INSTANCE_SAFE_RANGE_START + (inner_port - INSTANCE_BASE_PORT) * 10
            inner_range = (first, first + 9)
            host_port = instance.host_ports[launch.container_name]
        environment = dict(launch.environment)
        environment["SAGEMAKER_BIND_TO_PORT"] = str(inner_port)
        environment["SAGEMAKER_SAFE_PORT_RANGE"] = f"{inner_range[0]}-{inner_range[1]}"
        config: dict[str, Any] = {
            "Image": launch.image,
            # SageMaker runs `docker run <image> serve`: the image's entrypoint, argument serve.
            "Cmd": ["serve"],
            "Env": [f"{k}={v}" for k, v in environment.items()],
            "Labels": self._labels(launch, "model"),
            "HostConfig": host_config,
        }
        name = self._container_name(launch, "c")
        try:
            handle = await self._create_and_start(config, name)
        except BaseException as exc:
            if safe_range is not None:
                self._ranges.release(safe_range[0])
                self._bind_ports.release(inner_port)
            if isinstance(exc, aiodocker.DockerError):
                raise ContainerEngineError(
                    f"the container engine refused to start {launch.label} ({launch.image}): "
                    f"{exc.message}"
                ) from exc
            raise
        container = EngineContainer(
            launch,
            self._reach_host,
            host_port,
            handle.id,
            name,
            instance_type,
            safe_range,
            handle,
        )
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        with launch.log_path.open("ab") as log_file:
            log_file.write(
                f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} started {launch.label} as container "
                f"{name} ({handle.id[:12]}) of {launch.image}, port {inner_port}\n".encode()
            )
        loop = asyncio.get_running_loop()
        container.tasks.append(loop.create_task(self._follow_logs(container), name=f"logs {name}"))
        container.tasks.append(loop.create_task(self._watch(container), name=f"watch {name}"))
        return container

    async def _create_and_start(
        self, config: Mapping[str, Any], name: str
    ) -> aiodocker.containers.DockerContainer:
        """Create and start one container; one that was created but did not start is removed."""
        handle = await self._call(self._docker.containers.create(config, name=name))
        try:
            await self._call(handle.start())
        except BaseException:
            with contextlib.suppress(aiodocker.DockerError, ContainerEngineError):
                await self._call(handle.delete(force=True))
            raise
        assert isinstance(handle, aiodocker.containers.DockerContainer)
        return handle

    def _instance_type(self, launch: ContainerLaunch) -> instances.InstanceType | None:
        if not launch.instance_type:
            return None
        instance_type = instances.lookup(launch.instance_type)
        if instance_type.name not in self._warned_types:
            self._warned_types.add(instance_type.name)
            instances.warn_if_larger_than_machine(instance_type)
        return instance_type

    async def _instance(
        self, launch: ContainerLaunch, instance_type: instances.InstanceType | None
    ) -> _Instance:
        key = f"{launch.endpoint_name}/{launch.variant_name}/{launch.instance_id}"
        instance = self._instances.get(key)
        if instance is None:
            names = launch.instance_containers or (launch.container_name,)
            instance = _Instance(
                key,
                host_ports={},
                inner_ports={n: INSTANCE_BASE_PORT + i for i, n in enumerate(names)},
            )
            self._instances[key] = instance
        async with instance.lock:
            if launch.container_name not in instance.inner_ports:
                instance.inner_ports[launch.container_name] = INSTANCE_BASE_PORT + len(
                    instance.inner_ports
                )
            if instance.infra is not None and not await self._running(instance.infra):
                # Gone with a crash or an engine restart: containers joining it would have no
                # network. A new one takes over the same published ports.
                await self._remove(instance.infra)
                instance.infra = None
            if instance.infra is None:
                instance.infra = await self._start_infra_on_free_ports(
                    launch, instance, instance_type
                )
                instance.cgroup = (
                    self._cgroup_template.format(id=instance.infra.id)
                    if self._cgroup_template is not None and instance_type is not None
                    else None
                )
        return instance

    async def _start_infra_on_free_ports(
        self,
        launch: ContainerLaunch,
        instance: _Instance,
        instance_type: instances.InstanceType | None,
    ) -> aiodocker.containers.DockerContainer:
        """The infra container, its published ports newly allocated for a new instance. A port
        found free can be taken by another program before the engine binds it: a new instance
        then tries other ports (twice more). A recreated infra container keeps its ports (the
        router's upstreams know them), so it fails instead and the supervisor retries."""
        if self._settings.network == "host":
            return await self._start_infra(launch, instance, instance_type)
        fresh = [name for name in instance.inner_ports if name not in instance.host_ports]
        for attempt in range(3):
            for name in fresh:
                instance.host_ports[name] = self._bind_ports.allocate()[0]
            try:
                return await self._start_infra(launch, instance, instance_type)
            except ContainerEngineError as exc:
                if not fresh or attempt == 2 or "address already in use" not in exc.message:
                    raise
                log.info(
                    "instance %s: a published port was taken (%s); trying others",
                    instance.key,
                    exc.message,
                )
                for name in fresh:
                    self._bind_ports.release(instance.host_ports.pop(name))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start_infra(
        self,
        launch: ContainerLaunch,
        instance: _Instance,
        instance_type: instances.InstanceType | None,
    ) -> aiodocker.containers.DockerContainer:
        image = self._settings.infra_image or launch.image
        host_config: dict[str, Any] = {"Init": True}
        config: dict[str, Any] = {
            "Image": image,
            # It only holds what the instance shares; any image with coreutils can.
            "Entrypoint": ["sleep"],
            "Cmd": ["infinity"],
            "Labels": self._labels(launch, "infra"),
            "HostConfig": host_config,
        }
        if self._settings.network == "host":
            host_config["NetworkMode"] = "host"
        else:
            publish_ip = "0.0.0.0" if self._reach_host != self._bind_host else self._bind_host
            ports = {
                f"{inner}/tcp": [{"HostIp": publish_ip, "HostPort": str(instance.host_ports[n])}]
                for n, inner in instance.inner_ports.items()
            }
            config["ExposedPorts"] = {port: {} for port in ports}
            host_config["PortBindings"] = ports
        if instance_type is not None and self._cgroup_template is not None:
            host_config["CgroupParent"] = CGROUP_PARENT
            host_config.update(_limits(instance_type))
        name = self._container_name(launch, "net")
        try:
            return await self._create_and_start(config, name)
        except aiodocker.DockerError as exc:
            raise ContainerEngineError(
                f"cannot create the infra container of instance {instance.key} (image "
                f"{image}, `sleep infinity`; set container_engine.infra_image to an image that "
                f"has `sleep`): {exc.message}"
            ) from exc

    async def _running(self, handle: aiodocker.containers.DockerContainer) -> bool:
        """Whether it runs; an unreachable engine is an error (nothing is known then)."""
        try:
            info = await self._call(handle.show())
        except aiodocker.DockerError:
            return False
        return bool(info.get("State", {}).get("Running"))

    def _labels(self, launch: ContainerLaunch, role: str) -> dict[str, str]:
        return {
            ROUTER_LABEL: self._router_id,
            ROLE_LABEL: role,
            LABEL_PREFIX + "endpoint": launch.endpoint_name,
            LABEL_PREFIX + "variant": launch.variant_name,
            LABEL_PREFIX + "instance": launch.instance_id,
            LABEL_PREFIX + "container": launch.container_name if role == "model" else "",
        }

    def _container_name(self, launch: ContainerLaunch, kind: str) -> str:
        # Readable in `docker ps`; the random tail keeps a restart from meeting a leftover.
        parts = (launch.endpoint_name, launch.variant_name, launch.instance_id)
        tail = launch.container_name if kind == "c" else "net"
        suffix = hashlib.sha256(f"{time.time_ns()}{id(launch)}".encode()).hexdigest()[:6]
        return "mce-" + "-".join(_name_part(p) for p in (*parts, tail)) + f"-{suffix}"

    # --- running -----------------------------------------------------------------------------

    async def _follow_logs(self, container: EngineContainer) -> None:
        label = container.launch.label
        try:
            with container.launch.log_path.open("ab", buffering=0) as log_file:
                logs = f"containers/{container.container_id}/logs"
                params = {"stdout": True, "stderr": True, "follow": True}
                async with self._stream(logs, "GET", params) as response:
                    # (aiodocker leaves it unannotated; it yields str chunks)
                    chunks = multiplexed_result_stream(response, is_tty=False)  # type: ignore[no-untyped-call]
                    async for chunk in chunks:
                        log_file.write(chunk.encode("utf-8", "replace"))
                        for line in chunk.splitlines():
                            container_log.info("[%s] %s", label, line)
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            log.debug("log stream of %s ended: %r", label, exc)

    async def _watch(self, container: EngineContainer) -> None:
        """Record the exit code (and OOM kill) once the container stops. A broken wait (the
        engine restarted) is re-established; while the engine is away the container's state
        is unknown and the ping health check decides whether it still serves."""
        handle = container.handle
        while True:
            try:
                async with self._stream(f"containers/{handle.id}/wait", "POST") as response:
                    result = await response.json(content_type=None)
                code = int(result.get("StatusCode", -1))
                break
            except (aiodocker.DockerError, *_UNREACHABLE):
                await asyncio.sleep(1.0)
            try:
                info = await self._call(handle.show())
            except aiodocker.DockerError:
                code = -1  # removed behind our back
                break
            except ContainerEngineError:
                continue
            state = info.get("State", {})
            if not state.get("Running"):
                code = int(state.get("ExitCode", -1))
                break
        with contextlib.suppress(aiodocker.DockerError, ContainerEngineError):
            info = await self._call(handle.show())
            container.oom_killed = bool(info.get("State", {}).get("OOMKilled"))
        # Let the log stream deliver the last lines before the exit is reported.
        logs = container.tasks[0] if container.tasks else None
        if logs is not None:
            await asyncio.wait([logs], timeout=1.0)
        container.exit_code = code
        container.done.set()
        log.warning(
            "%s exited with code %d%s",
            container.launch.label,
            code,
            " (OOMKilled)" if container.oom_killed else "",
        )

    # --- stop --------------------------------------------------------------------------------

    async def stop(self, container: EngineContainer, grace_seconds: float | None = None) -> None:
        grace = self._settings.stop_grace_seconds if grace_seconds is None else grace_seconds
        handle = container.handle
        try:
            if container.exit_code is None:
                # The engine sends the image's stop signal (SIGTERM), then SIGKILL after t.
                async with asyncio.timeout(grace + self._settings.api_timeout_seconds):
                    await handle.stop(t=math.ceil(grace), timeout=None)
        except aiodocker.DockerError as exc:
            if exc.status not in (304, 404):
                log.warning("stopping %s: %s", container.launch.label, exc.message)
        except _UNREACHABLE as exc:
            log.warning("cannot stop %s: the engine does not answer (%r)", container.name, exc)
        for task in container.tasks:
            task.cancel()
        await asyncio.gather(*container.tasks, return_exceptions=True)
        await self._remove(handle)
        if container.safe_range is not None:  # host network: its own ports
            self._ranges.release(container.safe_range[0])
            self._bind_ports.release(container.port)

    async def stop_instance(self, instance_id: str) -> None:
        """The instance's containers are stopped: remove what they shared (network)."""
        for key in [k for k in self._instances if k.endswith("/" + instance_id)]:
            await self._release(self._instances.pop(key))

    async def _release(self, instance: _Instance) -> None:
        if instance.infra is not None:
            await self._remove(instance.infra)
        for port in instance.host_ports.values():
            self._bind_ports.release(port)

    async def _remove(self, handle: aiodocker.containers.DockerContainer) -> None:
        try:
            await self._call(handle.delete(force=True))
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                log.warning("cannot remove container %s: %s", handle.id[:12], exc.message)
        except ContainerEngineError as exc:
            log.warning(
                "cannot remove container %s (%s); the next start removes it",
                handle.id[:12],
                exc.message,
            )

    async def remove_orphans(self) -> int:
        """Remove every container labelled with this router (left by a crash), and only those."""
        found = await self._call(
            self._docker.containers.list(
                all=True, filters={"label": [f"{ROUTER_LABEL}={self._router_id}"]}
            )
        )
        # Model containers first: the engine refuses to remove a network namespace's holder
        # while containers that joined it exist.
        found.sort(key=lambda c: c["Labels"].get(ROLE_LABEL) == "infra")
        for handle in found:
            await self._remove(handle)
        if found:
            log.warning("removed %d containers left over by a previous router", len(found))
        return len(found)

    async def aclose(self) -> None:
        for instance in list(self._instances.values()):
            await self._release(instance)
        self._instances.clear()
        await self._docker.close()

    # --- helpers -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _stream(
        self, path: str, method: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A long-lived engine response (a log stream, a wait), closed when left. aiodocker's
        own ``log(follow=True)`` and ``wait()`` leave the response open when the stream is
        abandoned (the task cancelled at stop, the engine gone mid-stream), so aiohttp finds
        the connection only at garbage collection (ResourceWarning "Unclosed connection")."""
        async with self._docker._query(
            path, method=method, params=dict(params or {}), timeout=None
        ) as response:
            try:
                yield response
            finally:
                response.close()

    async def _call(self, call: Any) -> Any:
        """One engine API call under the API deadline; an unreachable engine is an error."""
        try:
            async with asyncio.timeout(self._settings.api_timeout_seconds):
                return await call
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise self._unreachable(exc) from exc
            raise
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> ContainerEngineError:
        return ContainerEngineError(
            f"the container engine at {self._settings.url} does not answer ({exc!r})"
        )


def _limits(instance_type: instances.InstanceType) -> dict[str, int]:
    """HostConfig limits of one instance type: its vCPUs and memory, no swap beyond it."""
    return {
        "Memory": instance_type.memory_bytes,
        "MemorySwap": instance_type.memory_bytes,
        "NanoCpus": instance_type.vcpu * 1_000_000_000,
    }


def shared_cgroup_template(engine_name: str, info: Mapping[str, Any]) -> str | None:
    """The cgroup path of an infra container created under :data:`CGROUP_PARENT`, with
    ``{id}`` for its id, when the instance's containers can be nested below it (cgroup v1 with
    the cgroupfs driver); None otherwise. podman names a container's cgroup ``libpod-<id>``,
    Docker ``<id>``."""
    if str(info.get("CgroupVersion", "1")) != "1" or info.get("CgroupDriver") != "cgroupfs":
        return None
    if "podman" in engine_name.lower():
        return CGROUP_PARENT + "/libpod-{id}"
    if engine_name == "Engine":  # Docker's own Components[0].Name
        return CGROUP_PARENT + "/{id}"
    return None
