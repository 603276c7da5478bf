"""A real Prometheus server (Debian's ``prometheus`` package) scrapes a real router's admin
``/metrics``; the per-container series come back through Prometheus' HTTP API, and every
PromQL expression of ``deploy/grafana/mce-router-dashboard.json`` is asked of it.

The package is installed with apt-get when the binary is missing (once per session; root
needed); without root or with apt unreachable the tests skip, saying why. Prometheus listens on
loopback on a free port, keeps its storage in the test's tmp dir, scrapes every second, and is
stopped at the end of each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    direct_model,
    endpoint_config,
    free_port,
    http_get,
    invoke,
    running_router,
    runtime_client,
    wait_until,
)

from mce_router import Router
from mce_router.config import MetricsSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "mce-router-dashboard.json"
APT_TIMEOUT = 480.0
#: Values Grafana would put in for the dashboard's variables: all endpoints, variants and
#: containers, and its built-in intervals.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$endpoint": ".*",
    "$variant": ".*",
    "$container": ".*",
}
_METRIC_NAME = re.compile(r"\b(?:sagemaker|mce_router)_[a-z0-9_]+\b")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The ``prometheus`` binary, installed from the distribution's package if missing."""
    found = shutil.which("prometheus")
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("prometheus is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("prometheus is not installed and installing it with apt-get needs root")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + APT_TIMEOUT
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        try:
            result = subprocess.run(
                command,
                env=environment,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(command)} did not finish within {APT_TIMEOUT:g} s")
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            pytest.skip(
                f"{' '.join(command)} failed (exit {result.returncode}): is apt reachable? "
                + " | ".join(tail)
            )
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("apt-get installed the prometheus package but no prometheus binary is on PATH")
    return found


@contextlib.contextmanager
def prometheus(binary: str, target_port: int, workdir: Path) -> Iterator[str]:
    """A Prometheus scraping ``127.0.0.1:target_port/metrics`` every second; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: mce-router\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


async def query(session: aiohttp.ClientSession, url: str, expr: str) -> dict[str, Any]:
    async with session.get(f"{url}/api/v1/query", params={"query": expr}) as response:
        answer: dict[str, Any] = await response.json()
    return answer


async def series(session: aiohttp.ClientSession, url: str, expr: str) -> dict[str, float]:
    """An instant vector as {container_name or reason/status: value}."""
    answer = await query(session, url, expr)
    assert answer["status"] == "success", (expr, answer)
    return {
        "/".join(
            item["metric"].get(label, "")
            for label in ("container_name", "status", "reason")
            if label in item["metric"]
        ): float(item["value"][1])
        for item in answer["data"]["result"]
    }


@contextlib.asynccontextmanager
async def scraped_router(
    config_factory: Any, binary: str, tmp_path: Path
) -> AsyncIterator[tuple[Router, str, aiohttp.ClientSession]]:
    """A router with a Direct endpoint ``scraped`` (containers a, b) that served ok, 4xx, 5xx
    and rejected requests, and a Prometheus that has scraped it at least twice."""
    config = config_factory(metrics=MetricsSettings(usage_sample_seconds=0.2))
    async with running_router(config) as router:
        router.create_model(direct_model("scraped", ["a", "b"]))
        router.create_endpoint_config(endpoint_config("scraped", "scraped"))
        await router.create_endpoint({"EndpointName": "scraped", "EndpointConfigName": "scraped"})
        runtime = runtime_client(router)
        for target, action in (
            ("a", "echo"),
            ("a", "echo"),
            ("a", "status:400"),
            ("b", "status:500"),
        ):
            with contextlib.suppress(Exception):  # the errors are the point
                await invoke(
                    runtime,
                    EndpointName="scraped",
                    TargetContainerHostname=target,
                    CustomAttributes=f"action={action}",
                    Body=b"x",
                )
        with contextlib.suppress(Exception):  # no target on a Direct endpoint: rejected
            await invoke(runtime, EndpointName="scraped", Body=b"x")
        admin_port = int(router.admin_url.rsplit(":", 1)[1])
        with prometheus(binary, admin_port, tmp_path / "prometheus") as url:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

                async def scraped_twice() -> bool:
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        answer = await query(
                            session, url, 'count_over_time(up{job="mce-router"}[1m])'
                        )
                        result = answer.get("data", {}).get("result", [])
                        return bool(result) and float(result[0]["value"][1]) >= 2
                    return False

                await wait_until(scraped_twice, 30, "Prometheus to scrape the router twice", 0.2)
                yield router, url, session


async def test_prometheus_scrapes_the_per_container_series(
    config_factory: Any, prometheus_binary: str, tmp_path: Path
) -> None:
    async with scraped_router(config_factory, prometheus_binary, tmp_path) as (_, url, session):
        assert await series(session, url, 'up{job="mce-router"}') == {"": 1.0}
        selector = '{endpoint_name="scraped", variant_name="AllTraffic"}'
        assert await series(session, url, f"sagemaker_container_invocations_total{selector}") == {
            "a": 3.0,
            "b": 1.0,
        }
        assert await series(
            session, url, f"sagemaker_container_invocation_4xx_errors_total{selector}"
        ) == {"a": 1.0, "b": 0.0}
        assert await series(
            session, url, f"sagemaker_container_invocation_5xx_errors_total{selector}"
        ) == {"a": 0.0, "b": 1.0}
        assert await series(
            session, url, f"sagemaker_container_latency_seconds_count{selector}"
        ) == {"a": 3.0, "b": 1.0}
        memory = await series(
            session, url, f"sagemaker_container_memory_utilization_percent{selector}"
        )
        assert set(memory) == {"a", "b"} and all(0 < value < 100 for value in memory.values())
        # The router's own answers: the container errors it answered as ModelError, and the
        # request it refused before any container.
        rejected = await series(
            session, url, 'mce_router_rejected_requests_total{endpoint_name="scraped"}'
        )
        assert rejected == {"424/ModelError": 2.0, "400/ValidationError": 1.0}


async def test_every_dashboard_query_is_valid_promql_on_exported_series(
    config_factory: Any, prometheus_binary: str, tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _dashboard_expressions(dashboard)
    assert len(expressions) >= 15
    async with scraped_router(config_factory, prometheus_binary, tmp_path) as (
        router,
        url,
        session,
    ):
        status, text = await http_get(int(router.admin_url.rsplit(":", 1)[1]), "/metrics")
        assert status == 200
        exported = _exported_names(text.decode())
        used: set[str] = set()
        for where, expression in expressions:
            names = set(_METRIC_NAME.findall(expression))
            assert names, f"{where}: {expression} names no router metric"
            assert names <= exported, f"{where}: {sorted(names - exported)} are not exported"
            used |= names
            promql = _substitute(expression)
            answer = await query(session, url, promql)
            assert answer["status"] == "success", (where, promql, answer)
            # Every series it names exists in Prometheus now, so the panel shows data.
            assert answer["data"]["result"], (where, promql, "returned nothing")
        # The documented per-container metrics and the rejections all have a panel.
        documented = {
            "sagemaker_container_invocations_total",
            "sagemaker_container_invocation_4xx_errors_total",
            "sagemaker_container_invocation_5xx_errors_total",
            "sagemaker_container_latency_seconds_bucket",
            "sagemaker_container_overhead_latency_seconds_bucket",
            "sagemaker_container_cpu_utilization_percent",
            "sagemaker_container_memory_utilization_percent",
            "mce_router_rejected_requests_total",
        }
        assert documented <= used, sorted(documented - used)


def _dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every variable's ``label_values`` selector."""
    found: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        definition = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+), *([a-z_]+)\)", definition)
        assert match is not None, definition
        found.append((f"variable {variable['name']}", match.group(1)))
    return found


def _substitute(expression: str) -> str:
    # Longest first: $__rate_interval before $__range.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expression = expression.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expression, expression
    return expression


def _exported_names(text: str) -> set[str]:
    """The series names of a Prometheus text exposition (a histogram's _bucket, _sum, _count)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names.update(name + suffix for suffix in suffixes)
    return names
