"""CloudWatch Embedded Metric Format lines (metrics.emf_enabled): every line is a valid EMF
document (checked against the specification's rules) and carries the metric names, dimensions,
units, namespaces and minutes of the PutMetricData datums the router exports."""

from __future__ import annotations

import json
import re
from contextlib import closing
from pathlib import Path
from typing import Any

from conftest import call_raising, deploy, direct_model, invoke, running_router, runtime_client

from mce_router.config import MetricsSettings
from mce_router.metrics import emf_lines, put_metric_data_requests

#: CloudWatch's StandardUnit values (the EMF specification's list).
UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",
    "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second",
    "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


def check_emf(line: str) -> dict[str, Any]:
    """Assert ``line`` follows the EMF specification; returns the document."""
    assert "\n" not in line
    root = json.loads(line)
    assert isinstance(root, dict)
    aws = root["_aws"]
    assert set(aws) <= {"Timestamp", "CloudWatchMetrics"}
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_500_000_000_000  # ms
    directives = aws["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
        namespace = directive["Namespace"]
        assert isinstance(namespace, str) and 1 <= len(namespace) <= 1024
        assert re.fullmatch(r"[.\-_/#:A-Za-z0-9 ]+", namespace), namespace
        assert not namespace.startswith("AWS/")  # reserved for AWS itself
        assert isinstance(directive["Dimensions"], list)
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(name, str) and 1 <= len(name) <= 250
                value = root[name]  # a target member of the root
                assert isinstance(value, str) and 1 <= len(value) <= 1024
        metrics = directive["Metrics"]
        assert isinstance(metrics, list) and 1 <= len(metrics) <= 100
        names = [m["Name"] for m in metrics]
        assert len(names) == len(set(names))
        for metric in metrics:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert isinstance(metric["Name"], str) and 1 <= len(metric["Name"]) <= 1024
            assert metric.get("Unit", "None") in UNITS
            assert metric.get("StorageResolution", 60) in (1, 60)
            value = root[metric["Name"]]
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return root


async def test_emf_lines_match_the_cloudwatch_datums(config_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "emf.log"
    metrics = MetricsSettings(emf_enabled=True, emf_path=str(path), emf_interval_seconds=0.2)
    config = config_factory(metrics=metrics)
    async with running_router(config) as router:
        endpoint = await deploy(router, direct_model("emf", ["alpha", "beta"]))
        with closing(runtime_client(router)) as client:
            for _ in range(3):
                await invoke(
                    client, EndpointName=endpoint, TargetContainerHostname="alpha", Body=b"x"
                )
            await call_raising(client, EndpointName=endpoint, Body=b"no target")
            error = await call_raising(
                client,
                EndpointName=endpoint,
                TargetContainerHostname="beta",
                CustomAttributes="action=status:404",
                Body=b"x",
            )
            assert isinstance(error, client.exceptions.ModelError)
        assert router.metrics is not None
        datums = router.metrics.cloudwatch_datums(include_current=True)
    # Stopping wrote the unfinished minute.
    lines = path.read_text().splitlines()
    assert lines
    documents = [check_emf(line) for line in lines]

    namespaces = {"AWS/SageMaker": config.metrics.cloudwatch_sagemaker_namespace}
    expected = {
        (request["Namespace"], datum["MetricName"], tuple(
            (d["Name"], d["Value"]) for d in datum["Dimensions"]
        ), datum["Unit"])
        for request in put_metric_data_requests(datums, namespaces)
        for datum in request["MetricData"]
        if datum["MetricName"] not in ("CPUUtilization", "MemoryUtilization")
    }  # fmt: skip
    found = set()
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        (names,) = directive["Dimensions"]
        dims = tuple((name, document[name]) for name in names)
        for metric in directive["Metrics"]:
            found.add((directive["Namespace"], metric["Name"], dims, metric["Unit"]))
    found = {item for item in found if item[1] not in ("CPUUtilization", "MemoryUtilization")}
    assert found == expected

    def values(name: str, **dims: str) -> list[Any]:
        # One document per dimension set and minute: calls that straddle a minute's end are
        # in two of them.
        found = []
        for document in documents:
            if all(document.get(k) == v for k, v in dims.items()) and name in document:
                (directive,) = document["_aws"]["CloudWatchMetrics"]
                if set(directive["Dimensions"][0]) == set(dims):
                    found.append(document[name])
        if not found:
            raise AssertionError(f"no {name} for {dims}")
        return found

    def value(name: str, **dims: str) -> Any:
        return sum(values(name, **dims))

    alpha = {"EndpointName": endpoint, "VariantName": "AllTraffic", "ContainerName": "alpha"}
    beta = {**alpha, "ContainerName": "beta"}
    assert value("Invocations", **alpha) == 3
    assert value("Invocation4XXErrors", **beta) == 1
    assert min(values("ContainerLatency", **alpha)) > 0
    assert value("ContainerLatency.SampleCount", **alpha) == 3
    rejected = [d for d in documents if "RejectedRequests" in d and d["StatusCode"] == "400"]
    assert rejected and rejected[0]["ErrorCode"] == "ValidationError"


def test_emf_lines_of_no_datums_are_none() -> None:
    assert emf_lines([], {}) == []
