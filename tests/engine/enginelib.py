"""Real containers for the engine tests: podman's Docker-compatible service, started here.

Session set-up (once): ``.ci/podman-setup.sh --images`` installs podman when missing (apt),
writes the containers.conf this host needs, builds the local base image once per machine and
the example model images of docker/; then ``podman system service`` listens on a socket in a
temporary directory and is killed (by its pid) at the end. ``MCE_ENGINE_URL`` points the tests
at an engine that is already running instead (e.g. Docker's socket).

Every test checks that no container labelled by a router of these tests is left behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from conftest import invoke, make_config

from mce_router import Router, RouterConfig
from mce_router.config import EngineSettings
from mce_router.runtime.engine import ROUTER_LABEL

REPO = Path(__file__).resolve().parents[2]
QUICKSTART_IMAGE = "localhost/mce-quickstart-model:latest"
DIR_IMAGE = "localhost/mce-dir-model:latest"
#: The base image without the SageMaker label (a model image made without it).
UNLABELLED_IMAGE = "localhost/mce-base:latest"

pytestmark = pytest.mark.engine


@dataclass(frozen=True)
class Engine:
    url: str
    env: dict[str, str]
    service: subprocess.Popen[bytes] | None
    socket_dir: Path | None

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The podman CLI (test set-up and fault injection only; the router uses the API)."""
        return subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, check=check
        )


def start_service(env: dict[str, str], socket_dir: Path | None = None) -> Engine:
    """``podman system service`` on a socket in ``socket_dir`` (a new temporary one if None)."""
    socket_dir = socket_dir or Path(tempfile.mkdtemp(prefix="mce-engine-"))
    sock = socket_dir / "podman.sock"
    sock.unlink(missing_ok=True)
    url = f"unix://{sock}"
    with (socket_dir / "service.log").open("ab") as log:
        process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_service(process)
            raise RuntimeError(f"podman system service did not start: see {socket_dir}")
        time.sleep(0.05)
    return Engine(url, env, process, socket_dir)


def stop_service(process: subprocess.Popen[bytes]) -> None:
    """Stop the service by its pid: SIGTERM, SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    given = os.environ.get("MCE_ENGINE_URL")
    if given:
        yield Engine(given, dict(os.environ), None, None)
        return
    if os.geteuid() != 0 or (shutil.which("apt-get") is None and shutil.which("podman") is None):
        pytest.skip("the engine tests need root and podman (or apt-get to install it)")
    setup = subprocess.run(
        [str(REPO / ".ci" / "podman-setup.sh"), "--images"],
        env={**os.environ, "PYTHON": sys.executable},  # pip of this venv fills the wheelhouse
        capture_output=True,
        text=True,
        timeout=900,
    )
    if setup.returncode != 0:
        raise RuntimeError(f".ci/podman-setup.sh failed:\n{setup.stderr[-4000:]}")
    env = dict(os.environ)
    for line in setup.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "CONTAINERS_CONF":
            env[key] = value
    started = start_service(env)
    try:
        yield started
    finally:
        assert started.service is not None and started.socket_dir is not None
        stop_service(started.service)
        shutil.rmtree(started.socket_dir, ignore_errors=True)


async def labelled_containers(url: str) -> list[dict[str, Any]]:
    docker = aiodocker.Docker(url=url)
    try:
        found = await docker.containers.list(all=True, filters={"label": [ROUTER_LABEL]})
        return [dict(c._container) for c in found]
    finally:
        await docker.close()


@pytest.fixture(autouse=True)
async def no_container_left_behind(engine: Engine) -> AsyncIterator[None]:
    yield
    left = await labelled_containers(engine.url)
    if left:
        names = [c.get("Names") for c in left]
        engine.podman("rm", "-f", *[c["Id"] for c in left], check=False)
        raise AssertionError(f"containers left behind: {names}")


def engine_config(engine: Engine, state_dir: Path, **engine_settings: Any) -> RouterConfig:
    settings = EngineSettings(
        url=engine.url,
        stop_grace_seconds=engine_settings.pop("stop_grace_seconds", 3.0),
        **engine_settings,
    )
    return make_config(state_dir, container_engine=settings)


@asynccontextmanager
async def engine_router(config: RouterConfig) -> AsyncIterator[Router]:
    async with Router(config) as router:
        yield router


async def invoke_target(
    client: Any, endpoint: str, target: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    """InvokeEndpoint on one container of a Direct endpoint; the answer's body."""
    answer = await invoke(
        client,
        EndpointName=endpoint,
        TargetContainerHostname=target,
        ContentType=content_type,
        Body=body,
    )
    return bytes(answer["Body"])


async def exec_in(engine: Engine, container_id: str, *argv: str) -> str:
    """Run a command inside a running container (to look at it from the inside)."""
    result = await asyncio.to_thread(engine.podman, "exec", container_id, *argv)
    return result.stdout
