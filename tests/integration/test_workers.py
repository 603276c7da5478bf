"""``listen.workers``: data-plane worker processes on one port. Every routing change reaches
every worker before the control plane goes on, metrics sum the workers' calls exactly, a killed
worker is replaced, and stopping leaves no process behind."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from conftest import (
    call_raising,
    child_processes,
    container_stats,
    deploy,
    direct_model,
    endpoint_config,
    http_exchange,
    images_for_tests,
    invoke,
    labels,
    make_config,
    prometheus_samples,
    runtime_client,
    tls_client,
    until_invoked,
    wait_until,
    write_test_pki,
)

from mce_router import Router
from mce_router.cli import _build_parser, load_serve_config
from mce_router.config import Listener, ProcessImage, RouterConfig, usable_cpus
from mce_router.errors import ConfigError
from mce_router.workers.pool import TCP_MIGRATE_REQ, WorkerPool

STREAM_CONTAINER = Path(__file__).parent.parent / "containers" / "stream_container.py"
#: Enough fresh connections that both workers get some (the kernel hashes each connection's
#: addresses to one of the SO_REUSEPORT listeners).
CONNECTIONS = 60


def _with_workers(config: RouterConfig, workers: int) -> RouterConfig:
    return config.replace(listener=dataclasses.replace(config.listener, workers=workers))


def _pool(router: Router) -> WorkerPool:
    pool = router.workers
    assert pool is not None
    return pool


def _worker_pids(router: Router) -> set[int]:
    return set(_pool(router).pids())


async def _post(port: int, endpoint: str, target: str | None, attributes: str = "") -> Any:
    """One InvokeEndpoint on a connection of its own: (status, headers, body)."""
    lines = [
        f"POST /endpoints/{endpoint}/invocations HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: text/plain",
        "Content-Length: 2",
        "Connection: close",
    ]
    if target is not None:
        lines.append(f"X-Amzn-SageMaker-Target-Container-Hostname: {target}")
    if attributes:
        lines.append(f"X-Amzn-SageMaker-Custom-Attributes: {attributes}")
    return await http_exchange(port, ("\r\n".join(lines) + "\r\n\r\nhi").encode())


def _serving_workers(headers: list[dict[str, str]]) -> Counter[str]:
    """Request ids start with a prefix each worker draws at random: one per worker."""
    return Counter(h["x-amzn-requestid"][:8] for h in headers)


async def _prometheus(router: Router) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, _, body = await http_exchange(
        router.admin_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    return prometheus_samples(body)


async def test_metrics_sum_every_worker_exactly(config_factory: Any) -> None:
    async with Router(_with_workers(config_factory(), 2)) as router:
        endpoint = await deploy(router, direct_model("mix", ["good", "bad"]))
        port = router.runtime_port
        answers = await asyncio.gather(
            *(_post(port, endpoint, "good") for _ in range(CONNECTIONS)),
            *(_post(port, endpoint, "bad", "action=status:400") for _ in range(10)),
            *(_post(port, endpoint, "nobody") for _ in range(5)),
            *(_post(port, "no-such-endpoint", None) for _ in range(3)),
        )
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == {200: CONNECTIONS, 424: 10, 400: 8}, statuses
        served_by = _serving_workers([headers for _, headers, _ in answers])
        assert len(served_by) == 2, f"one worker served everything: {served_by}"

        # The scrape asks every worker for its calls first: no wait, nothing missing or doubled.
        samples = await _prometheus(router)
        good, bad = labels(endpoint, "good"), labels(endpoint, "bad")
        assert samples[("sagemaker_container_invocations_total", good)] == CONNECTIONS
        assert samples[("sagemaker_container_latency_seconds_count", good)] == CONNECTIONS
        assert samples[("sagemaker_container_invocations_total", bad)] == 10
        assert samples[("sagemaker_container_invocation_4xx_errors_total", bad)] == 10
        assert samples[("sagemaker_invocations_total", labels(endpoint))] == CONNECTIONS + 10
        refused = {
            labels: value
            for (name, labels), value in samples.items()
            if name == "mce_router_rejected_requests_total"
        }
        assert sum(refused.values()) == 10 + 5 + 3, refused

        _, _, body = await http_exchange(
            router.admin_port,
            b"GET /metrics/cloudwatch?include_current=true HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n",
        )
        datums = orjson.loads(body)["MetricData"]
        invocations = {
            tuple(d["Value"] for d in datum["Dimensions"]): datum["StatisticValues"]["Sum"]
            for datum in datums
            if datum["MetricName"] == "Invocations" and datum["Namespace"] == "AWS/SageMaker"
        }
        assert invocations[(endpoint, "AllTraffic", "good")] == CONNECTIONS
        assert invocations[(endpoint, "AllTraffic")] == CONNECTIONS + 10

        # A second scrape adds nothing that was not served.
        again = await _prometheus(router)
        assert again[("sagemaker_container_invocations_total", good)] == CONNECTIONS


async def test_every_routing_change_reaches_every_worker(config_factory: Any) -> None:
    async with Router(_with_workers(config_factory(), 2)) as router:
        port = router.runtime_port
        model = direct_model("first", ["a"], environment={"TEST_WHO": "first fleet"})
        endpoint = await deploy(router, model, name="ep")
        # Created: every connection, whichever worker takes it, routes to it at once.
        created = await asyncio.gather(
            *(_post(port, endpoint, "a", "action=env") for _ in range(CONNECTIONS))
        )
        assert {status for status, _, _ in created} == {200}
        assert len(_serving_workers([h for _, h, _ in created])) == 2
        first_pids = {orjson.loads(body)["TEST_WHO"] for _, _, body in created}
        assert first_pids == {"first fleet"}

        # Updated: once UpdateEndpoint returns, no worker routes to the old fleet (stopped).
        router.create_model(direct_model("second", ["a"], environment={"TEST_WHO": "second"}))
        router.create_endpoint_config(endpoint_config("ep-2", "second"))
        await router.update_endpoint({"EndpointName": endpoint, "EndpointConfigName": "ep-2"})
        updated = await asyncio.gather(
            *(_post(port, endpoint, "a", "action=env") for _ in range(CONNECTIONS))
        )
        assert {status for status, _, _ in updated} == {200}, Counter(s for s, _, _ in updated)
        assert {orjson.loads(body)["TEST_WHO"] for _, _, body in updated} == {"second"}

        # Deleted: every worker answers as SageMaker does for an unknown endpoint.
        await router.delete_endpoint(endpoint)
        deleted = await asyncio.gather(*(_post(port, endpoint, "a") for _ in range(CONNECTIONS)))
        assert {status for status, _, _ in deleted} == {400}
        assert all(
            b"Endpoint ep of account 000000000000 not found." in body for _, _, body in deleted
        ), deleted[0]


async def test_an_update_drains_the_requests_in_flight_in_every_worker(
    config_factory: Any,
) -> None:
    async with Router(_with_workers(config_factory(), 2)) as router:
        port = router.runtime_port
        endpoint = await deploy(router, direct_model("old", ["a"]), name="busy")
        slow = [
            asyncio.ensure_future(_post(port, endpoint, "a", "action=sleep:1.5"))
            for _ in range(CONNECTIONS // 4)
        ]
        await asyncio.sleep(0.5)  # they are in the container now, spread over both workers
        router.create_model(direct_model("new", ["a"]))
        router.create_endpoint_config(endpoint_config("busy-2", "new"))
        await router.update_endpoint({"EndpointName": endpoint, "EndpointConfigName": "busy-2"})
        answers = await asyncio.gather(*slow)
        assert {status for status, _, _ in answers} == {200}, [a[2] for a in answers]
        assert len(_serving_workers([h for _, h, _ in answers])) == 2


async def test_a_killed_worker_is_replaced_and_loses_no_count(
    config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic report within the test: what the killed worker served before its death can
    # only reach the metrics through its call journal.
    monkeypatch.setattr(WorkerPool, "report_seconds", 60.0)
    async with Router(_with_workers(config_factory(), 2)) as router:
        endpoint = await deploy(router, direct_model("kill", ["a"]))
        port = router.runtime_port
        pool = _pool(router)
        before = await asyncio.gather(
            *(_post(port, endpoint, "a") for _ in range(CONNECTIONS)),
            *(_post(port, endpoint, "nobody") for _ in range(6)),  # answered by the router
        )
        assert Counter(status for status, _, _ in before) == {200: CONNECTIONS, 400: 6}
        assert len(_serving_workers([h for _, h, _ in before])) == 2
        victim = sorted(_worker_pids(router))[0]
        os.kill(victim, signal.SIGKILL)

        async def gone() -> bool:
            return victim not in _worker_pids(router)

        # (Connections the kernel queued on the dying worker's socket die with it, as its
        # requests in flight do; from its exit on, the other worker gets every connection.)
        await wait_until(gone, 10.0, "the killed worker's exit")
        # The other worker serves every new connection meanwhile, and then both do.
        during = await asyncio.gather(*(_post(port, endpoint, "a") for _ in range(20)))
        assert {status for status, _, _ in during} == {200}

        async def replaced() -> bool:
            pids = _worker_pids(router)
            return pool.restarts == 1 and len(pids) == 2 and victim not in pids

        await wait_until(replaced, 20.0, "a new worker in place of the killed one")
        after = await asyncio.gather(*(_post(port, endpoint, "a") for _ in range(CONNECTIONS)))
        assert {status for status, _, _ in after} == {200}
        assert len(_serving_workers([h for _, h, _ in after])) == 2
        # The victim's share of the first round came from its journal, the rest from reports.
        assert pool.replayed > 0
        samples = await _prometheus(router)
        served = CONNECTIONS + 20 + CONNECTIONS
        assert samples[("sagemaker_container_invocations_total", labels(endpoint, "a"))] == served
        assert samples[("sagemaker_invocations_total", labels(endpoint))] == served
        refused = sum(
            value
            for (name, _), value in samples.items()
            if name == "mce_router_rejected_requests_total"
        )
        assert refused == 6
        with closing(runtime_client(router)) as fresh:
            answer = await invoke(
                fresh, EndpointName=endpoint, TargetContainerHostname="a", Body=b""
            )
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.fixture
def request_migration() -> Iterator[Callable[[str], None]]:
    """Sets net.ipv4.tcp_migrate_req for the test (this network namespace), then restores it."""
    path = TCP_MIGRATE_REQ
    try:
        original = path.read_text(encoding="ascii")
        path.write_text(original, encoding="ascii")
    except OSError as exc:
        pytest.skip(f"cannot set {path} here ({exc.strerror}): needs Linux 5.14+ and root")

    def set_to(value: str) -> None:
        path.write_text(value, encoding="ascii")

    try:
        yield set_to
    finally:
        path.write_text(original, encoding="ascii")


@pytest.mark.parametrize("migrate", ["1", "0"])
async def test_connections_queued_on_a_dying_worker_go_to_the_other_with_tcp_migrate_req(
    config_factory: Any, request_migration: Callable[[str], None], migrate: str
) -> None:
    """What README's workers section says of a worker that dies with connections the kernel
    already queued for it: with net.ipv4.tcp_migrate_req=1 the other worker serves them, with 0
    they are reset."""
    request_migration(migrate)
    async with Router(_with_workers(config_factory(), 2)) as router:
        endpoint = await deploy(router, direct_model("migrate", ["a"]))
        port = router.runtime_port
        victim = _worker_pids(router).pop()
        # Stopped, it accepts nothing: the connections hashed to it wait in its queue.
        os.kill(victim, signal.SIGSTOP)
        try:
            calls = [asyncio.ensure_future(_post(port, endpoint, "a")) for _ in range(CONNECTIONS)]

            async def others_served() -> bool:
                stats = await container_stats(router, endpoint, "a")
                return stats["invocations"] == sum(c.done() for c in calls) > 0

            await wait_until(others_served, 10.0, "the other worker to serve its share")
            await asyncio.sleep(0.2)  # nothing more arrives: the rest waits for the victim
            queued = sum(not c.done() for c in calls)
            assert queued, "every connection went to the running worker"
        finally:
            os.kill(victim, signal.SIGKILL)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        served = sum(1 for o in outcomes if not isinstance(o, BaseException) and o[0] == 200)
        if migrate == "1":
            assert served == CONNECTIONS, outcomes
        else:
            assert served == CONNECTIONS - queued, outcomes
            assert all(
                isinstance(o, ConnectionError) for o in outcomes if isinstance(o, BaseException)
            )


async def test_stopping_drains_the_workers_and_leaves_no_process(config_factory: Any) -> None:
    before = child_processes()
    router = Router(_with_workers(config_factory(), 2))
    await router.start()
    try:
        endpoint = await deploy(router, direct_model("drain", ["slow"]))
        workers = _worker_pids(router)
        port = router.runtime_port
        slow = asyncio.ensure_future(_post(port, endpoint, "slow", "action=sleep:1"))
        await until_invoked(router, endpoint, "slow", 1)
    finally:
        await router.stop(drain_seconds=10)
    status, _, _ = await slow
    assert status == 200, "the in-flight request was cut instead of drained"
    assert not {p for p in workers if psutil.pid_exists(p) and _alive(p)}
    assert child_processes() - before == set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_auth_errors_come_from_every_worker_as_from_one(config_factory: Any) -> None:
    """SigV4 stays on in the workers: an unsigned call is refused by whichever serves it."""
    from mce_router.security.config import AuthConfig

    auth = AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "credentials": [
                {
                    "access_key_id": "AKIDEXAMPLE",
                    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                    "policies": [
                        {
                            "Version": "2012-10-17",
                            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                        }
                    ],
                }
            ],
        }
    )
    async with Router(_with_workers(config_factory(auth=auth), 2)) as router:
        endpoint = await deploy(router, direct_model("signed", ["a"]))
        unsigned = await asyncio.gather(
            *(_post(router.runtime_port, endpoint, "a") for _ in range(20))
        )
        assert {status for status, _, _ in unsigned} == {403}
        with closing(runtime_client(router)) as client:
            answer = await invoke(
                client, EndpointName=endpoint, TargetContainerHostname="a", Body=b"x"
            )
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
            wrong = await call_raising(
                client, EndpointName=endpoint, TargetContainerHostname="nobody", Body=b"x"
            )
            assert "nobody" in str(wrong)


def test_workers_setting(tmp_path: Any) -> None:
    config = RouterConfig.from_mapping({"listen": {"workers": "auto"}, "state_dir": str(tmp_path)})
    assert config.listener.workers == usable_cpus()
    assert RouterConfig.from_mapping({"listen": {"workers": 3}}).listener.workers == 3
    for bad in (0, -1, "many", True, 1000):
        with pytest.raises(ConfigError, match=r"listen\.workers: must be auto or a whole number"):
            RouterConfig.from_mapping({"listen": {"workers": bad}})
    with pytest.raises(ConfigError, match="hop log is kept in the memory"):
        RouterConfig.from_mapping({"listen": {"workers": 2}, "tracing": {"hop_log_enabled": True}})
    path = tmp_path / "router.yaml"
    path.write_text("listen: {workers: 1}\n")
    args = _build_parser().parse_args(["serve", "--config", str(path), "--workers", "2"])
    assert load_serve_config(args).listener.workers == 2
    args = _build_parser().parse_args(["serve", "--config", str(path), "--workers", "two"])
    with pytest.raises(ConfigError, match="--workers: must be auto or a whole number"):
        load_serve_config(args)


async def test_tls_and_response_streams_in_the_workers(tmp_path: Path) -> None:
    """A worker serves TLS and InvokeEndpointWithResponseStream as one process does, and its
    stream counts reach the exported metrics."""
    paths = write_test_pki(tmp_path)
    stream_image = "test/stream:latest"
    config = make_config(
        tmp_path / "state",
        images=images_for_tests(
            **{stream_image: ProcessImage(command=(sys.executable, str(STREAM_CONTAINER)))}
        ),
        listener=Listener(
            port=0,
            admin_port=0,
            workers=2,
            tls_cert_file=str(paths["cert"]),
            tls_key_file=str(paths["key"]),
        ),
    )
    async with Router(config) as router:
        assert router.runtime_url.startswith("https://")
        model = {
            "ModelName": "streams",
            "InferenceExecutionConfig": {"Mode": "Direct"},
            "Containers": [{"ContainerHostname": "alpha", "Image": stream_image}],
        }
        endpoint = await deploy(router, model)
        client = tls_client("sagemaker-runtime", router.runtime_url, paths["ca"])

        def read_stream() -> bytes:
            response = client.invoke_endpoint_with_response_stream(
                EndpointName=endpoint,
                TargetContainerHostname="alpha",
                Body=b"",
                CustomAttributes="action=stream;parts=3",
            )
            with closing(response["Body"]):
                return b"".join(event["PayloadPart"]["Bytes"] for event in response["Body"])

        with closing(client):
            for _ in range(3):
                body = await asyncio.to_thread(read_stream)
                assert body == b"part 0\npart 1\npart 2\n"
        metrics = await router.metrics.refreshed() if router.metrics else None
        assert metrics is not None
        assert metrics.streams[(endpoint, "AllTraffic", "alpha")].count == 3
