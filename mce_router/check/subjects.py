"""What the checker runs: a command line (as the process runtime runs it) or an image (through
the container engine, as SageMaker runs it: the image's entrypoint with ``serve``).

Both are started with the two variables SageMaker sets, on ports the checker chooses (one run
below 32768, one above), and both run where the checker can read their sockets and CPU from
``/proc``: an image runs on the engine host's network so that its listening sockets are its own
and nothing else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..endpoints.health import log_tail
from ..errors import ContainerEngineError
from ..runtime.instances import InstanceType
from ..runtime.process import inherited_environment, spawn_in_own_group

#: Marks the checker's own containers, so that a checker killed outright leaves findable ones.
CHECK_LABEL = "io.github.mce-router.check"


class StartFailed(Exception):
    """The engine could not start the container (e.g. no entrypoint that takes ``serve``): a
    finding about the container, reported against every rule, not an error of the check."""


class Started(Protocol):
    host: str

    @property
    def root_pid(self) -> int | None:
        """The container's first process as this host sees it; None when it cannot be seen."""

    async def exit_code(self) -> int | None:
        """The exit status once it has stopped, None while it runs."""

    async def terminate(self) -> None:
        """Send SIGTERM, as SageMaker does at scale-in and update."""

    async def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for it to exit; its status, or None if still running."""

    async def kill(self) -> None:
        """SIGKILL and clean up (idempotent)."""

    async def log_tail(self, lines: int = 8) -> str:
        """Its last output lines, for evidence."""


class Subject(Protocol):
    description: str

    async def labels(self) -> Mapping[str, str] | None:
        """The image's labels; None for a command line (there are none to check)."""

    async def start(
        self, bind_port: int, safe_range: tuple[int, int], instance: InstanceType
    ) -> Started:
        """Start it with SAGEMAKER_BIND_TO_PORT and SAGEMAKER_SAFE_PORT_RANGE set."""

    async def aclose(self) -> None:
        """Release clients; every started container has been killed already."""


def contract_environment(bind_port: int, safe_range: tuple[int, int]) -> dict[str, str]:
    return {
        "SAGEMAKER_BIND_TO_PORT": str(bind_port),
        "SAGEMAKER_SAFE_PORT_RANGE": f"{safe_range[0]}-{safe_range[1]}",
    }


# --- command lines ---------------------------------------------------------------------------


@dataclass(slots=True)
class _StartedProcess:
    host: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def root_pid(self) -> int | None:
        return self.process.pid

    async def exit_code(self) -> int | None:
        return self.process.returncode

    async def terminate(self) -> None:
        # The leader only, as a container's PID 1 gets it; its children are its business.
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int | None:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), timeout)
        return None

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def log_tail(self, lines: int = 8) -> str:
        return log_tail(self.log_path)  # the health checks' reading of a container log


class CommandSubject:
    """A command line run as a local process in its own process group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        environment: Mapping[str, str],
        log_dir: Path,
        working_dir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if not argv:
            raise ValueError("--command needs a program to run")
        self._argv = [sys.executable if argv[0] in ("python", "python3") else argv[0], *argv[1:]]
        self._environment = dict(environment)
        self._log_dir = log_dir
        self._working_dir = working_dir
        self._host = host
        self.description = "command " + " ".join(argv)

    async def labels(self) -> Mapping[str, str] | None:
        return None

    async def start(
        self, bind_port: int, safe_range: tuple[int, int], instance: InstanceType
    ) -> Started:
        env = inherited_environment()
        env.update(self._environment)
        env.update(contract_environment(bind_port, safe_range))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"container-{bind_port}.log"
        with log_path.open("ab") as log_file:
            try:
                process = await spawn_in_own_group(self._argv, env, self._working_dir, log_file)
            except OSError as exc:
                raise OSError(f"cannot start {self._argv[0]}: {exc.strerror}") from exc
        return _StartedProcess(self._host, process, log_path)

    async def aclose(self) -> None:
        return None


# --- images ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _StartedContainer:
    host: str
    container: Any  # aiodocker's DockerContainer (untyped)
    pid: int | None
    removed: bool = False

    @property
    def root_pid(self) -> int | None:
        return self.pid

    async def exit_code(self) -> int | None:
        info = await self.container.show()
        state = info.get("State") or {}
        return None if state.get("Running") else int(state.get("ExitCode") or 0)

    async def terminate(self) -> None:
        with contextlib.suppress(Exception):
            await self.container.kill(signal="SIGTERM")

    async def wait(self, timeout: float) -> int | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            code = await self.exit_code()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        return None

    async def kill(self) -> None:
        if self.removed:
            return
        self.removed = True
        with contextlib.suppress(Exception):
            await self.container.delete(force=True)

    async def log_tail(self, lines: int = 8) -> str:
        try:
            chunks = await self.container.log(stdout=True, stderr=True, tail=lines)
        except Exception:
            return ""
        return "".join(chunks).rstrip()


class ImageSubject:
    """An OCI image run through the Docker Engine API (Docker, or podman's service)."""

    def __init__(
        self,
        image: str,
        *,
        engine_url: str,
        environment: Mapping[str, str],
        host: str = "127.0.0.1",
    ) -> None:
        self._image = image
        self._engine_url = engine_url
        self._environment = dict(environment)
        self._host = host
        self._docker: Any = None
        self.description = f"image {image}"

    async def _client(self) -> Any:
        if self._docker is None:
            import aiodocker

            docker = aiodocker.Docker(url=self._engine_url)
            try:
                async with asyncio.timeout(10):
                    await docker.version()
            except Exception as exc:
                await docker.close()
                raise ContainerEngineError(
                    f"no Docker Engine API answers at {self._engine_url} ({exc}); start Docker "
                    "or podman's service, or pass --engine-url (default: DOCKER_HOST, else "
                    "unix:///var/run/docker.sock)"
                ) from exc
            self._docker = docker
        return self._docker

    async def labels(self) -> Mapping[str, str] | None:
        import aiodocker

        docker = await self._client()
        try:
            info = await docker.images.inspect(self._image)
        except aiodocker.DockerError as exc:
            raise ContainerEngineError(
                f"image {self._image} is not present on the engine at {self._engine_url} "
                f"({exc.message}); build or pull it first"
            ) from exc
        return dict((info.get("Config") or {}).get("Labels") or {})

    async def start(
        self, bind_port: int, safe_range: tuple[int, int], instance: InstanceType
    ) -> Started:
        docker = await self._client()
        env = {**self._environment, **contract_environment(bind_port, safe_range)}
        config = {
            "Image": self._image,
            "Cmd": ["serve"],  # after the image's own entrypoint, as SageMaker runs it
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {CHECK_LABEL: "true"},
            "HostConfig": {
                "NetworkMode": "host",
                "Memory": instance.memory_bytes,
                "NanoCpus": instance.vcpu * 1_000_000_000,
            },
        }
        import aiodocker

        name = f"mce-check-{uuid.uuid4().hex[:8]}"
        try:
            container = await docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            raise StartFailed(f"the engine refused to create it: {exc.message}") from exc
        try:
            await container.start()
            info = await container.show()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await container.delete(force=True)
            if isinstance(exc, aiodocker.DockerError):
                raise StartFailed(f"the engine could not start it: {exc.message}") from exc
            raise
        pid = int((info.get("State") or {}).get("Pid") or 0) or None
        return _StartedContainer(self._host, container, pid)

    async def aclose(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
