"""Shared fixtures: real routers on ephemeral ports, real container processes, boto3 clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from botocore.config import Config
from botocore.validate import validate_parameters
from prometheus_client.parser import text_string_to_metric_families

from mce_router import Router, RouterConfig
from mce_router.config import HealthSettings, Limits, Listener, ProcessImage, ProcessSettings
from mce_router.endpoints.deployment import ContainerSlot

FAULT_CONTAINER = Path(__file__).parent / "containers" / "fault_container.py"

#: Image URIs the tests use; each maps to a real process.
FAULT_IMAGE = "test/fault:latest"
ECHO_IMAGE = "test/echo:latest"
EXAMPLE_IMAGES = {
    f"example/{role}:latest": ProcessImage(
        command=(sys.executable, "-m", "mce_router.examples.container", "--role", role)
    )
    for role in ("preprocess", "model", "postprocess", "echo")
}


def images_for_tests(**extra: Any) -> dict[str, Any]:
    images: dict[str, Any] = {
        FAULT_IMAGE: ProcessImage(command=(sys.executable, str(FAULT_CONTAINER))),
        ECHO_IMAGE: ProcessImage(command=(sys.executable, str(FAULT_CONTAINER))),
        **EXAMPLE_IMAGES,
    }
    images.update(extra)
    return images


def make_config(state_dir: Path, *, limits: Limits | None = None, **changes: Any) -> RouterConfig:
    """A router config on ephemeral ports with fast health settings, suited to tests."""
    base = RouterConfig(
        images=images_for_tests(),
        listener=Listener(host="127.0.0.1", port=0, admin_port=0),
        limits=limits or Limits(),
        health=HealthSettings(
            startup_timeout_seconds=20.0,
            startup_ping_interval_seconds=0.05,
            ping_interval_seconds=0.5,
            unhealthy_threshold=2,
            restart_backoff_initial_seconds=0.1,
        ),
        process=ProcessSettings(stop_grace_seconds=3.0),
        state_dir=state_dir,
    )
    return base.replace(**changes) if changes else base


def direct_model(
    name: str,
    hostnames: list[str],
    image: str = FAULT_IMAGE,
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    containers: list[dict[str, Any]] = []
    for host in hostnames:
        container: dict[str, Any] = {"ContainerHostname": host, "Image": image}
        if environment:
            container["Environment"] = dict(environment)
        containers.append(container)
    return {
        "ModelName": name,
        "InferenceExecutionConfig": {"Mode": "Direct"},
        "Containers": containers,
    }


def endpoint_config(name: str, model: str, **variant: Any) -> dict[str, Any]:
    return {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1, **variant}
        ],
    }


async def deploy(
    router: Router, model: Mapping[str, Any], name: str | None = None, **variant: Any
) -> str:
    """Create model, config and endpoint named after the model; wait until InService."""
    endpoint = name or str(model["ModelName"])
    router.create_model(model)
    router.create_endpoint_config(endpoint_config(endpoint, str(model["ModelName"]), **variant))
    await router.create_endpoint({"EndpointName": endpoint, "EndpointConfigName": endpoint})
    return endpoint


@asynccontextmanager
async def running_router(config: RouterConfig) -> AsyncIterator[Router]:
    async with Router(config) as router:
        yield router


def runtime_client(router: Router, **config: Any) -> Any:
    """An unmodified boto3 sagemaker-runtime client pointed at the router (no retries, so each
    call is exactly one HTTP request)."""
    return client_for_url(router.runtime_url, **config)


def client_for_url(url: str, **config: Any) -> Any:
    """Like :func:`runtime_client`, for a router this process did not start (the CLI)."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config),
    )


def control_client(url: str, **config: Any) -> Any:
    """An unmodified boto3 ``sagemaker`` (control-plane) client pointed at a router's admin port
    (no retries: each call is exactly one HTTP request)."""
    return boto3.client(
        "sagemaker",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config),
    )


def signed_client(service: str, url: str | None, key: tuple[str, str]) -> Any:
    """A boto3 client for ``service`` signing with ``key`` (access key id, secret), no
    retries; ``url`` None leaves the endpoint to boto3 (e.g. ``AWS_ENDPOINT_URL_<SERVICE>``)."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def validate_output(client: Any, operation: str, response: dict[str, Any]) -> None:
    """Every member is one botocore's output shape has, with the right types and ranges."""
    shape = client.meta.service_model.operation_model(operation).output_shape
    output = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    validate_parameters(output, shape)
    missing = set(shape.required_members) - set(output)
    assert not missing, f"{operation} output lacks required members {missing}"


#: boto3 waiters poll every 30 s by default; tests poll fast and give up after 30 s.
FAST_WAITER = {"Delay": 0.1, "MaxAttempts": 300}


def send_extra_headers(client: Any, extra: Mapping[str, str]) -> None:
    """Send ``extra`` with every InvokeEndpoint of ``client`` (boto3 has no parameter for
    headers such as W3C's traceparent)."""

    def add(request: Any, **_: Any) -> None:
        for name, value in extra.items():
            request.headers[name] = value

    client.meta.events.register("before-sign.sagemaker-runtime.InvokeEndpoint", add)


async def call(function: Callable[..., Any], **kwargs: Any) -> Any:
    """One blocking boto3 call, in a thread so the router keeps running in this loop."""
    return await asyncio.to_thread(function, **kwargs)


async def wait_in_service(client: Any, name: str) -> None:
    waiter = client.get_waiter("endpoint_in_service")
    await call(waiter.wait, EndpointName=name, WaiterConfig=FAST_WAITER)


async def invoke(client: Any, **kwargs: Any) -> dict[str, Any]:
    """boto3 is blocking: call it in a thread so the router keeps running in this loop. The body
    is read in that thread too: a large response does not fit the socket buffers, and reading it
    on the loop's thread would block the router that still has to send the rest."""

    def call() -> dict[str, Any]:
        response: dict[str, Any] = client.invoke_endpoint(**kwargs)
        response["Body"] = response["Body"].read()
        return response

    return await asyncio.to_thread(call)


async def call_raising(client: Any, **kwargs: Any) -> Exception:
    try:
        await invoke(client, **kwargs)
    except Exception as exc:  # the caller asserts the exact type
        return exc
    raise AssertionError("the invocation succeeded but an error was expected")


def child_processes() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., RouterConfig]:
    def factory(**changes: Any) -> RouterConfig:
        return make_config(tmp_path / "state", **changes)

    return factory


# --- helpers for the core integration tests ---------------------------------------------------


def container(hostname: str | None, image: str = FAULT_IMAGE, **environment: str) -> dict[str, Any]:
    """One CreateModel container entry; keyword arguments become its Environment."""
    entry: dict[str, Any] = {"Image": image}
    if hostname is not None:
        entry["ContainerHostname"] = hostname
    if environment:
        entry["Environment"] = dict(environment)
    return entry


def multi_model(name: str, containers: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """A CreateModel body with the given containers and InferenceExecutionConfig.Mode."""
    return {
        "ModelName": name,
        "InferenceExecutionConfig": {"Mode": mode},
        "Containers": containers,
    }


def slot_of(router: Router, endpoint: str, hostname: str) -> ContainerSlot:
    """The (first instance's) container slot of ``hostname`` in a running endpoint."""
    deployment = router.endpoints[endpoint].deployment
    assert deployment is not None, f"endpoint {endpoint} has no running deployment"
    for slot in deployment.slots:
        if slot.launch.container_name == hostname:
            return slot
    raise AssertionError(f"endpoint {endpoint} has no container {hostname}")


def container_port(router: Router, endpoint: str, hostname: str) -> int:
    running = slot_of(router, endpoint, hostname).container
    assert running is not None
    return running.port


async def http_exchange(
    port: int, request: bytes, host: str = "127.0.0.1", timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send one raw HTTP request (it should say ``Connection: close``) and read the answer up to
    EOF: (status, headers with lower-case names, body). Bounded by ``timeout``."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(timeout):
            writer.write(request)
            await writer.drain()
            raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    status, _, body = await http_exchange(
        port, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    return status, body


async def container_stats(router: Router, endpoint: str, hostname: str) -> dict[str, int]:
    """The fault container's ``GET /stats`` counters, asked directly (not through the router)."""
    return await stats_at(container_port(router, endpoint, hostname))


async def stats_at(port: int) -> dict[str, int]:
    """``GET /stats`` of the fault container listening on ``port``."""
    status, body = await http_get(port, "/stats")
    assert status == 200, body
    stats: dict[str, int] = json.loads(body)
    return stats


async def until_invoked(
    router: Router, endpoint: str, hostname: str, count: int, timeout: float = 10.0
) -> None:
    """Wait until the fault container has received ``count`` invocations in all (it counts one
    as it arrives, before acting on it): "the request reached the container" without a guess
    at how long that takes on a loaded machine."""

    async def arrived() -> bool:
        return (await container_stats(router, endpoint, hostname))["invocations"] >= count

    await wait_until(arrived, timeout, f"{count} invocation(s) to reach {hostname!r}", 0.02)


def listening_ports(pids: set[int]) -> set[int]:
    """The TCP ports the processes ``pids`` listen on (containers of a router in another
    process, whose ports the test does not know)."""
    ports = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    ports.add(conn.laddr.port)
    return ports


async def invocations_received(pids: set[int]) -> int:
    """The invocations the fault containers ``pids`` have received in all (``GET /stats``)."""
    return sum([(await stats_at(port))["invocations"] for port in listening_ports(pids)])


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until it returns True; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def live_processes(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies waiting to be reaped do not count)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


async def wait_no_live_processes(pids: set[int], timeout: float = 5.0) -> None:
    async def gone() -> bool:
        return not live_processes(pids)

    await wait_until(gone, timeout, f"processes {sorted(live_processes(pids))} to exit")


@contextmanager
def recording_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A real listener on loopback standing in for an HTTP proxy: it records the first line of
    every request sent to it (``CONNECT host:443 ...``) and closes, so nothing goes further."""
    seen: list[bytes] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(self.rfile.readline(4096).strip())

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", seen
        finally:
            server.shutdown()
            thread.join(timeout=5)


@contextmanager
def nothing_leaves_the_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """An environment without the caller's AWS settings in which any AWS client built without
    an explicit endpoint (STS, S3, ...) gets a loopback port that refuses, and every client that
    honours the proxy variables goes to :func:`recording_proxy`. Yields what reached the proxy;
    fails on leaving if anything did."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with recording_proxy() as (proxy_url, outside):
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, proxy_url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "127.0.0.1,localhost")
        yield outside
    assert outside == [], f"the SDK tried to reach {outside}"


async def headers_report(client: Any, **kwargs: Any) -> dict[str, Any]:
    """What a fault container received for one InvokeEndpoint (its ``action=headers`` report)."""
    response = await invoke(client, CustomAttributes="action=headers", Body=b"x", **kwargs)
    report: dict[str, Any] = json.loads(response["Body"])
    return report


def prometheus_samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def labels(endpoint: str, container: str | None = None) -> tuple[tuple[str, str], ...]:
    pairs = {"endpoint_name": endpoint, "variant_name": "AllTraffic"}
    if container is not None:
        pairs["container_name"] = container
    return tuple(sorted(pairs.items()))


def write_test_pki(folder: Path) -> dict[str, Path]:
    """A test CA (trustme) and a server certificate for 127.0.0.1 and localhost, as PEM files:
    ``ca``, ``cert`` (the chain), ``key``."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for index, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=index > 0)
    server.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def tls_client(service: str, url: str, ca: Path) -> Any:
    """Plain boto3 (no retries); only ``verify`` points it at the test CA."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        verify=str(ca),
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
