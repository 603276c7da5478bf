"""Per-container metrics: exact counts and dimensions in both exports, CPU sampling, timing."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import orjson
import psutil
import pytest
from botocore.validate import validate_parameters
from conftest import (
    FAULT_IMAGE,
    call_raising,
    deploy,
    direct_model,
    images_for_tests,
    invoke,
    labels,
    prometheus_samples,
    running_router,
    runtime_client,
)

from mce_router.config import Limits, MetricsSettings, ProcessImage
from mce_router.dataplane.stats import MAX_UNKNOWN_ENDPOINTS, OTHER_ENDPOINTS, RouterAnswers

BUSY_IMAGE = "test/busy:latest"
BUSY_CONTAINER = Path(__file__).parents[1] / "containers" / "busy_container.py"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


async def fetch(url: str) -> bytes:
    return await asyncio.to_thread(_get, url)


def cloudwatch_index(datums: list[dict[str, Any]]) -> dict[tuple[str, str, tuple[str, ...]], Any]:
    """(namespace, metric, dimension values) -> StatisticValues, summed over minutes."""
    index: dict[tuple[str, str, tuple[str, ...]], Any] = {}
    for datum in datums:
        key = (
            datum["Namespace"],
            datum["MetricName"],
            tuple(d["Value"] for d in datum["Dimensions"]),
        )
        stats = datum["StatisticValues"]
        old = index.get(key)
        if old is None:
            index[key] = dict(stats)
        else:  # a test that straddles a minute boundary sees two datums
            old["SampleCount"] += stats["SampleCount"]
            old["Sum"] += stats["Sum"]
            old["Minimum"] = min(old["Minimum"], stats["Minimum"])
            old["Maximum"] = max(old["Maximum"], stats["Maximum"])
    return index


async def test_known_mix_gives_exact_counts_in_both_exports(config_factory: Any) -> None:
    async with running_router(config_factory()) as router:
        direct = await deploy(router, direct_model("mix", ["good", "bad-request", "broken"]))
        serial = await deploy(
            router,
            {
                "ModelName": "pipe",
                "Containers": [{"Image": FAULT_IMAGE}, {"Image": FAULT_IMAGE}],
            },
        )
        client = runtime_client(router)
        for _ in range(7):
            await invoke(client, EndpointName=direct, TargetContainerHostname="good", Body=b"x")
        for _ in range(3):
            await call_raising(
                client,
                EndpointName=direct,
                TargetContainerHostname="bad-request",
                Body=b"x",
                CustomAttributes="action=status:400",
            )
        for _ in range(2):
            await call_raising(
                client,
                EndpointName=direct,
                TargetContainerHostname="broken",
                Body=b"x",
                CustomAttributes="action=status:500",
            )
        for _ in range(4):
            await invoke(client, EndpointName=serial, Body=b"y")

        samples = prometheus_samples(await fetch(f"{router.admin_url}/metrics"))
        expected_containers = {
            ("mix", "good"): (7, 0, 0),
            ("mix", "bad-request"): (3, 3, 0),
            ("mix", "broken"): (2, 0, 2),
            ("pipe", "container-1"): (4, 0, 0),
            ("pipe", "container-2"): (4, 0, 0),
        }
        for (endpoint, container), (calls, e4, e5) in expected_containers.items():
            key = labels(endpoint, container)
            assert samples[("sagemaker_container_invocations_total", key)] == calls
            assert samples[("sagemaker_container_invocation_4xx_errors_total", key)] == e4
            assert samples[("sagemaker_container_invocation_5xx_errors_total", key)] == e5
            assert samples[("sagemaker_container_latency_seconds_count", key)] == calls
            assert samples[("sagemaker_container_overhead_latency_seconds_count", key)] == calls
        assert samples[("sagemaker_invocations_total", labels("mix"))] == 12
        assert samples[("sagemaker_invocation_4xx_errors_total", labels("mix"))] == 3
        assert samples[("sagemaker_invocation_5xx_errors_total", labels("mix"))] == 2
        assert samples[("sagemaker_invocations_total", labels("pipe"))] == 4
        assert samples[("sagemaker_model_latency_seconds_count", labels("pipe"))] == 4

        body = await fetch(f"{router.admin_url}/metrics/cloudwatch?include_current=true")
        datums = orjson.loads(body)["MetricData"]
        index = cloudwatch_index(datums)
        ns = "AWS/SageMaker"
        for (endpoint, container), (calls, e4, e5) in expected_containers.items():
            dims = (endpoint, "AllTraffic", container)
            assert index[(ns, "Invocations", dims)]["Sum"] == calls
            assert index[(ns, "Invocation4XXErrors", dims)]["Sum"] == e4
            assert index[(ns, "Invocation4XXErrors", dims)]["SampleCount"] == calls
            assert index[(ns, "Invocation5XXErrors", dims)]["Sum"] == e5
            assert index[(ns, "ContainerLatency", dims)]["SampleCount"] == calls
            assert index[(ns, "OverheadLatency", dims)]["SampleCount"] == calls
        assert index[(ns, "Invocations", ("mix", "AllTraffic"))]["Sum"] == 12
        assert index[(ns, "Invocation5XXErrors", ("mix", "AllTraffic"))]["Sum"] == 2
        assert index[(ns, "ModelLatency", ("pipe", "AllTraffic"))]["SampleCount"] == 4
        # Variants have no ContainerLatency; containers have no ModelLatency.
        assert not any(k[1] == "ContainerLatency" and len(k[2]) == 2 for k in index)
        assert not any(k[1] == "ModelLatency" and len(k[2]) == 3 for k in index)
        # The router's own answers: each container error became a ModelError (424) it wrote.
        assert (
            index[("MceRouter", "RejectedRequests", ("mix", "AllTraffic", "424", "ModelError"))][
                "Sum"
            ]
            == 5
        )
        assert {d["Namespace"] for d in datums} == {ns, "MceRouter"}
        for datum in (d for d in datums if d["Namespace"] == ns):
            names = [d["Name"] for d in datum["Dimensions"]]
            assert names in (
                ["EndpointName", "VariantName"],
                ["EndpointName", "VariantName", "ContainerName"],
            )
            assert datum["Unit"] in ("None", "Microseconds", "Percent")
            assert set(datum["StatisticValues"]) == {"SampleCount", "Sum", "Minimum", "Maximum"}

        # The ready-to-send form passes botocore's own validation of PutMetricData.
        ready = orjson.loads(
            await fetch(
                f"{router.admin_url}/metrics/cloudwatch?include_current=true&format=put-metric-data"
            )
        )["PutMetricDataRequests"]
        cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
        input_shape = cloudwatch.meta.service_model.operation_model("PutMetricData").input_shape
        assert {r["Namespace"] for r in ready} == {"MceRouter/SageMaker", "MceRouter"}
        for request in ready:
            validate_parameters(request, input_shape)
        assert sum(len(r["MetricData"]) for r in ready if r["Namespace"] != "MceRouter") == len(
            [d for d in datums if d["Namespace"] == ns]
        )


async def test_requests_the_router_answers_itself_are_counted_with_endpoint_and_reason(
    config_factory: Any,
) -> None:
    limits = Limits(max_request_body_bytes=1024)
    async with running_router(config_factory(limits=limits)) as router:
        direct = await deploy(router, direct_model("rej", ["a"]))
        client = runtime_client(router)
        for _ in range(2):  # Direct without a target container: 400 before any container
            await call_raising(client, EndpointName=direct, Body=b"x")
        await call_raising(client, EndpointName="no-such-endpoint", Body=b"x")  # 404
        await call_raising(
            client, EndpointName=direct, TargetContainerHostname="a", Body=b"z" * 2048
        )
        await call_raising(  # the container answers 500: the router answers ModelError
            client,
            EndpointName=direct,
            TargetContainerHostname="a",
            Body=b"x",
            CustomAttributes="action=status:500",
        )
        await invoke(client, EndpointName=direct, TargetContainerHostname="a", Body=b"fine")
        samples = prometheus_samples(await fetch(f"{router.admin_url}/metrics"))
        rejected = {
            tuple(v for _, v in key): value
            for (name, key), value in samples.items()
            if name == "mce_router_rejected_requests_total"
        }
        # Labels sorted by name: endpoint_name, reason, status, variant_name.
        assert rejected == {
            ("rej", "ValidationError", "400", ""): 2,
            ("no-such-endpoint", "ValidationError", "400", ""): 1,
            ("rej", "ValidationError", "413", ""): 1,
            ("rej", "ModelError", "424", "AllTraffic"): 1,
        }
        # The documented per-container metrics count only what reached the container.
        key = labels("rej", "a")
        assert samples[("sagemaker_container_invocations_total", key)] == 2

        body = await fetch(f"{router.admin_url}/metrics/cloudwatch?include_current=true")
        index = cloudwatch_index(orjson.loads(body)["MetricData"])
        ours = {
            k[2]: v["Sum"] for k, v in index.items() if k[:2] == ("MceRouter", "RejectedRequests")
        }
        assert ours == {
            ("rej", "400", "ValidationError"): 2,
            ("no-such-endpoint", "400", "ValidationError"): 1,
            ("rej", "413", "ValidationError"): 1,
            ("rej", "AllTraffic", "424", "ModelError"): 1,
        }


def test_unknown_endpoint_names_are_bounded_in_the_labels() -> None:
    answers = RouterAnswers()
    for index in range(MAX_UNKNOWN_ENDPOINTS + 20):
        answers.record(f"made-up-{index}", False, "", 404, "ValidationError")
    answers.record("real", True, "v", 400, "ValidationError")
    endpoints = {key[0] for key in answers.totals}
    assert len(endpoints) == MAX_UNKNOWN_ENDPOINTS + 2  # the first 100, "(other)" and "real"
    assert answers.totals[(OTHER_ENDPOINTS, "", 404, "ValidationError")] == 20
    assert answers.totals[("real", "v", 400, "ValidationError")] == 1


def test_the_cap_holds_over_the_reports_of_several_workers() -> None:
    """Each worker caps its own guesses; the process adding their reports caps them together."""
    workers = [RouterAnswers(), RouterAnswers()]
    for index in range(MAX_UNKNOWN_ENDPOINTS):
        for number, worker in enumerate(workers):
            worker.record(f"guess-{number}-{index}", False, "", 400, "ValidationError")
    workers[0].record("real", True, "v", 400, "ValidationError")
    exported = RouterAnswers()
    for worker in workers:
        delta = worker.take()
        assert delta is not None
        exported.merge(delta, known=lambda name: name == "real")
    endpoints = {key[0] for key in exported.totals}
    assert len(endpoints) == MAX_UNKNOWN_ENDPOINTS + 2  # 100 guesses, "(other)" and "real"
    assert sum(exported.totals.values()) == 2 * MAX_UNKNOWN_ENDPOINTS + 1
    assert exported.totals[(OTHER_ENDPOINTS, "", 400, "ValidationError")] == MAX_UNKNOWN_ENDPOINTS
    for minute_counts in exported.minutes.values():
        assert {key[0] for key in minute_counts} <= endpoints


async def test_busy_container_reads_high_cpu_and_idle_reads_near_zero(
    config_factory: Any,
) -> None:
    images = images_for_tests(
        **{BUSY_IMAGE: ProcessImage(command=(sys.executable, str(BUSY_CONTAINER)))}
    )
    config = config_factory(images=images, metrics=MetricsSettings(usage_sample_seconds=0.5))
    async with running_router(config) as router:
        await deploy(
            router,
            {
                "ModelName": "usage",
                "InferenceExecutionConfig": {"Mode": "Direct"},
                "Containers": [
                    {"ContainerHostname": "busy", "Image": BUSY_IMAGE},
                    {"ContainerHostname": "idle", "Image": FAULT_IMAGE},
                ],
            },
        )
        assert router.metrics is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            usage = router.metrics.usage
            busy = usage.get(("usage", "AllTraffic", "busy"))
            idle = usage.get(("usage", "AllTraffic", "idle"))
            if busy is not None and idle is not None and busy.cpu.count >= 3:
                break
            await asyncio.sleep(0.25)
        samples = prometheus_samples(await fetch(f"{router.admin_url}/metrics"))
        busy_cpu = samples[("sagemaker_container_cpu_utilization_percent", labels("usage", "busy"))]
        idle_cpu = samples[("sagemaker_container_cpu_utilization_percent", labels("usage", "idle"))]
        # Two spinning processes in the tree: up to 200 %, well over 50 % even when the 2 cores
        # are shared with the rest of the suite.
        assert busy_cpu > 50, busy_cpu
        assert idle_cpu < 10, idle_cpu
        memory = samples[
            ("sagemaker_container_memory_utilization_percent", labels("usage", "idle"))
        ]
        # a percentage of the host's memory: an idle stdlib container holds tens of MiB
        idle_bytes = memory / 100 * psutil.virtual_memory().total
        assert 0 < idle_bytes < 200 * 2**20, (memory, idle_bytes)
        datums = orjson.loads(
            await fetch(f"{router.admin_url}/metrics/cloudwatch?include_current=1")
        )["MetricData"]
        index = cloudwatch_index(datums)
        busy_datum = index[
            ("/aws/sagemaker/Endpoints", "CPUUtilization", ("usage", "AllTraffic", "busy"))
        ]
        assert busy_datum["Maximum"] > 50
        assert (
            "/aws/sagemaker/Endpoints",
            "MemoryUtilization",
            ("usage", "AllTraffic", "idle"),
        ) in index


async def test_latencies_add_up_to_the_time_the_router_held_requests(
    config_factory: Any,
) -> None:
    """Per request, summed over Serial stages, ContainerLatency + OverheadLatency is the time the
    router held it; the client, which also pays for boto3 and loopback, must see at least that."""
    async with running_router(config_factory()) as router:
        serial = await deploy(
            router,
            {
                "ModelName": "timed",
                "Containers": [
                    {"Image": FAULT_IMAGE, "Environment": {"FAULT_DEFAULT_ACTION": "sleep:0.02"}},
                    {"Image": FAULT_IMAGE, "Environment": {"FAULT_DEFAULT_ACTION": "sleep:0.03"}},
                ],
            },
        )
        client = runtime_client(router)
        await invoke(client, EndpointName=serial, Body=b"warm-up")
        assert router.metrics is not None
        stats = [router.metrics.container("timed", "AllTraffic", f"container-{i}") for i in (1, 2)]
        variant = router.metrics.variants[("timed", "AllTraffic")]
        before = [(s.latency_sum, s.overhead_sum) for s in stats]
        before_model = variant.latency_sum
        requests = 10
        client_seconds = 0.0
        #: per request: what the client waited minus what the router says it held the request
        unaccounted: list[float] = []
        for _ in range(requests):
            held_before = sum(s.latency_sum + s.overhead_sum for s in stats)
            started = time.perf_counter()
            await invoke(client, EndpointName=serial, Body=b"z")
            waited = time.perf_counter() - started
            client_seconds += waited
            unaccounted.append(
                waited - (sum(s.latency_sum + s.overhead_sum for s in stats) - held_before)
            )
        container_latency = sum(s.latency_sum - b[0] for s, b in zip(stats, before, strict=True))
        overhead = sum(s.overhead_sum - b[1] for s, b in zip(stats, before, strict=True))
        held = container_latency + overhead
        # The variant's ModelLatency is exactly the sum of its containers' ContainerLatency.
        assert variant.latency_sum - before_model == pytest.approx(container_latency, rel=1e-9)
        # Each container slept: its latency can't be below the sleep.
        assert stats[0].latency_sum - before[0][0] >= 0.02 * requests
        assert stats[1].latency_sum - before[1][0] >= 0.03 * requests
        # The router held each request for less than the client waited for it ...
        assert held <= client_seconds
        assert min(unaccounted) >= 0.0, unaccounted
        # ... and the difference is the client's own cost (boto3 request building, signing,
        # parsing, two loopback hops): a few milliseconds per request. The median is bounded at
        # 25 ms so that a router that under-reports the time it held requests (e.g. drops a
        # 20 ms stage or the response write) fails, while one stall of the test process (a GC
        # pass, a busy CI machine) does not.
        assert statistics.median(unaccounted) < 0.025, unaccounted


async def test_metrics_can_be_turned_off(config_factory: Any) -> None:
    async with running_router(config_factory(metrics=MetricsSettings(enabled=False))) as router:
        endpoint = await deploy(router, direct_model("quiet", ["a"]))
        await invoke(
            runtime_client(router), EndpointName=endpoint, TargetContainerHostname="a", Body=b"x"
        )
        assert router.metrics is None
        with pytest.raises(urllib.error.HTTPError) as raised:
            await fetch(f"{router.admin_url}/metrics")
        assert raised.value.code == 404
        raised.value.close()
