"""Process runtime: each container is a local process group, the embedded default.

Containers get ``SAGEMAKER_BIND_TO_PORT`` and ``SAGEMAKER_SAFE_PORT_RANGE`` (a block reserved
for that container alone), both from the configured ranges below 32768 (``ports.py``), run in
their own process group with their output in a per-container log file, and are stopped as a group:
SIGTERM, then SIGKILL after the grace period. Every group is recorded in ``state_dir`` so that
groups orphaned by a router that was killed outright are reaped when the next router starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson
import psutil

from ..config import ProcessImage, ProcessSettings
from .base import ContainerLaunch
from .ports import PortBlocks, allocate_ports

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Variables of the router's own environment that containers must not inherit.
_PRIVATE_ENV_PREFIXES = ("AWS_", "MCE_ROUTER_")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the router is killed outright, the kernel sends the container SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def inherited_environment() -> dict[str, str]:
    """The router's environment without what containers must not inherit."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}


async def spawn_in_own_group(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | Path | None, log_file: BinaryIO
) -> asyncio.subprocess.Process:
    """Start ``argv`` as the leader of a new process group (stopped as a group), its output in
    ``log_file``, killed by the kernel should the router die outright."""
    return await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


@dataclass(slots=True)
class ProcessContainer:
    launch: ContainerLaunch
    host: str
    port: int
    safe_range: tuple[int, int]
    process: asyncio.subprocess.Process
    pgid: int
    started_at: float
    _waiter: asyncio.Task[int] = field(repr=False)

    def exit_status(self) -> int | None:
        return self.process.returncode

    def pids(self) -> tuple[int, ...]:
        return (self.process.pid,)

    @property
    def restartable(self) -> bool:
        return True

    async def wait(self) -> int:
        return await asyncio.shield(self._waiter)


class ProcessRuntime:
    def __init__(self, settings: ProcessSettings, state_dir: Path) -> None:
        self._settings = settings
        self._bind_ports = PortBlocks(
            host=settings.bind_host,
            start=settings.bind_port_range_start,
            size=1,
            count=settings.bind_port_range_size,
            what="SAGEMAKER_BIND_TO_PORT",
        )
        self._ranges = PortBlocks(
            host=settings.bind_host,
            start=settings.safe_port_range_start,
            size=settings.safe_port_range_size,
            count=settings.safe_port_range_blocks,
            what="SAGEMAKER_SAFE_PORT_RANGE block",
        )
        #: The bind ports and safe port ranges, shared with the container-engine runtime so
        #: that the two never hand out the same port.
        self.port_blocks = (self._bind_ports, self._ranges)
        self._registry = state_dir / "run" / "process-groups.json"
        self._groups: dict[int, float] = {}  # pgid -> leader create_time, mirrored to disk
        reap_orphans(self._registry)

    async def start(
        self, launch: ContainerLaunch, image: ProcessImage, *, port: int | None = None
    ) -> ProcessContainer:
        host = self._settings.bind_host
        bind_port, safe_range = allocate_ports(self._bind_ports, self._ranges, port)
        env = inherited_environment()
        env.update(image.environment)
        env.update(launch.environment)
        env["SAGEMAKER_BIND_TO_PORT"] = str(bind_port)
        env["SAGEMAKER_SAFE_PORT_RANGE"] = f"{safe_range[0]}-{safe_range[1]}"
        argv = list(image.command)
        if argv[0] in ("python", "python3"):
            # "python" means the router's own interpreter, so a venv install just works.
            argv[0] = sys.executable
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        with launch.log_path.open("ab") as log_file:
            log_file.write(
                f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {launch.label} on port "
                f"{bind_port}: {' '.join(argv)}\n".encode()
            )
            log_file.flush()
            try:
                process = await spawn_in_own_group(argv, env, image.working_dir, log_file)
            except OSError as exc:
                self._ranges.release(safe_range[0])
                self._bind_ports.release(bind_port)
                raise OSError(f"cannot start {launch.label} ({argv[0]}): {exc.strerror}") from exc
        pgid = process.pid  # start_new_session makes the child its group's leader
        self._remember(pgid)
        waiter = asyncio.get_running_loop().create_task(process.wait())
        return ProcessContainer(
            launch, host, bind_port, safe_range, process, pgid, time.monotonic(), waiter
        )

    async def stop(self, container: ProcessContainer, grace_seconds: float) -> None:
        pgid = container.pgid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        # Wait for the whole group (forked children included), not just the leader.
        while time.monotonic() < deadline and _group_alive(pgid, container):
            await asyncio.sleep(0.02)
        if _group_alive(pgid, container):
            log.warning(
                "%s did not stop within %.1f s; sending SIGKILL",
                container.launch.label,
                grace_seconds,
            )
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(asyncio.CancelledError):
            await container.wait()
        # Children that outlived their leader may remain in the group.
        _signal_group(pgid, signal.SIGKILL)
        self._ranges.release(container.safe_range[0])
        self._bind_ports.release(container.port)
        self._forget(pgid)

    def _remember(self, pgid: int) -> None:
        try:
            self._groups[pgid] = psutil.Process(pgid).create_time()
        except psutil.Error:
            self._groups[pgid] = time.time()
        self._write_registry()

    def _forget(self, pgid: int) -> None:
        self._groups.pop(pgid, None)
        self._write_registry()

    def _write_registry(self) -> None:
        self._registry.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._registry.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({str(k): v for k, v in self._groups.items()}))
        tmp.replace(self._registry)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int, container: ProcessContainer) -> bool:
    if container.process.returncode is None:
        return True
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # Zombies still count for killpg; only live members matter here.
    return any(_pgid_of(p) == pgid and p.status() != psutil.STATUS_ZOMBIE for p in _safe_iter())


def _pgid_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def _safe_iter() -> list[psutil.Process]:
    result = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            process.status()
            result.append(process)
    return result


def reap_orphans(registry: Path) -> int:
    """Kill process groups a previous router recorded and did not stop (it was SIGKILLed)."""
    try:
        groups = orjson.loads(registry.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return 0
    killed = 0
    for pgid_text, created in groups.items():
        pgid = int(pgid_text)
        for process in _safe_iter():
            try:
                # Same group and not older than the recorded leader: ours, not a reused id.
                if _pgid_of(process) == pgid and process.create_time() >= float(created) - 1:
                    process.kill()
                    killed += 1
            except psutil.Error:
                continue
    if killed:
        log.warning("killed %d container processes left over by a previous router", killed)
    with contextlib.suppress(OSError):
        registry.unlink()
    return killed
