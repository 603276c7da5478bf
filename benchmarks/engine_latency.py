"""Engine runtime vs process runtime: added latency, and container start time per image.

The same container code both ways: mce_router/examples/container.py (role "model") as a local
process (``images:`` entry) and as the image docker/quickstart-model; docker/dir-model's start
time too. One router serves both endpoints; requests are sequential on one keep-alive
connection through the router, so the difference is what the engine's networking adds (the
published port of the instance's network namespace) to the same proxy path.

    python benchmarks/engine_latency.py [--requests 2000] [--starts 5]

Needs podman (``.ci/podman-setup.sh --images``) or DOCKER_HOST; starts its own podman service
when MCE_ENGINE_URL is not set. Writes benchmarks/results/engine.json and engine.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mce_router import Router, RouterConfig  # noqa: E402
from mce_router.config import (  # noqa: E402
    EngineSettings,
    HealthSettings,
    Listener,
    MetricsSettings,
    ProcessImage,
    ProcessSettings,
)
from mce_router.runtime.base import ContainerLaunch  # noqa: E402
from mce_router.runtime.images import ImageRuntime  # noqa: E402

IMAGES = {
    "quickstart-model (image)": "localhost/mce-quickstart-model:latest",
    "dir-model (image)": "localhost/mce-dir-model:latest",
}
PROCESS_IMAGE = "bench/model-process:latest"
BODY = b'{"instances": [[1, 2, 3]]}'


def _engine_url() -> tuple[str, subprocess.Popen[bytes] | None]:
    given = os.environ.get("MCE_ENGINE_URL")
    if given:
        return given, None
    setup = subprocess.run(
        [str(REPO / ".ci" / "podman-setup.sh"), "--images"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
    )
    env = dict(os.environ)
    for line in setup.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "CONTAINERS_CONF":
            env[key] = value
    sock = Path(tempfile.mkdtemp(prefix="mce-bench-")) / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        if sock.exists():
            break
        time.sleep(0.05)
    return f"unix://{sock}", service


def _latencies(port: int, endpoint: str, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {
        "Content-Type": "application/json",
        "X-Amzn-SageMaker-Target-Container-Hostname": "m",
    }
    path = f"/endpoints/{endpoint}/invocations"
    samples = []
    for index in range(count + 200):
        started = time.perf_counter()
        connection.request("POST", path, body=BODY, headers=headers)
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{endpoint}: HTTP {response.status}")
        if index >= 200:  # warm-up first
            samples.append(elapsed * 1e6)
    connection.close()
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {
        "p50_us": round(pct(50), 1),
        "p90_us": round(pct(90), 1),
        "p99_us": round(pct(99), 1),
        "mean_us": round(statistics.fmean(ordered), 1),
        "count": len(ordered),
    }


async def _start_times(runtime: ImageRuntime, state: Path, starts: int) -> dict[str, Any]:
    """Seconds from start() to the first 200 on /ping, per image (and for the process)."""
    from mce_router.endpoints.health import wait_until_healthy

    health = HealthSettings(startup_ping_interval_seconds=0.01)
    results: dict[str, Any] = {}
    cases = {**IMAGES, "quickstart-model (process)": PROCESS_IMAGE}
    for label, image in cases.items():
        times = []
        for attempt in range(starts):
            launch = ContainerLaunch(
                endpoint_name="bench",
                variant_name="v",
                instance_id=f"i-start{attempt}",
                container_name="m",
                image=image,
                environment={"EXAMPLE_ROLE": "model"},
                log_path=state / "logs" / f"{attempt}.log",
                model_data_url=f"file://{state / 'dir-model'}" if "dir-model" in label else None,
            )
            started = time.perf_counter()
            container = await runtime.start(launch)
            failure = await wait_until_healthy(container, 60, health)
            elapsed = time.perf_counter() - started
            await runtime.stop(container, 5)
            await runtime.stop_instance(launch.instance_id)
            if failure is not None:
                results[label] = {"error": failure}
                break
            times.append(elapsed)
        else:
            results[label] = {
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
                "starts": len(times),
            }
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    url, service = _engine_url()
    state = Path(tempfile.mkdtemp(prefix="mce-bench-state-"))
    model_dir = state / "dir-model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps({"weights": [0.5], "name": "bench"}))
    config = RouterConfig(
        images={
            PROCESS_IMAGE: ProcessImage(
                command=(sys.executable, "-m", "mce_router.examples.container", "--role", "model")
            )
        },
        listener=Listener(port=0, admin_port=0),
        # Away from the default bind ports that test runs on the same machine start from.
        process=ProcessSettings(bind_port_range_start=17000, bind_port_range_size=1000),
        metrics=MetricsSettings(enabled=False),
        container_engine=EngineSettings(url=url, stop_grace_seconds=5),
        state_dir=state,
    )
    try:
        async with Router(config) as router:
            for name, image in (
                ("proc", PROCESS_IMAGE),
                ("engine", IMAGES["quickstart-model (image)"]),
            ):
                router.create_model(
                    {
                        "ModelName": name,
                        "InferenceExecutionConfig": {"Mode": "Direct"},
                        "Containers": [{"ContainerHostname": "m", "Image": image}],
                    }
                )
                router.create_endpoint_config(
                    {
                        "EndpointConfigName": name,
                        "ProductionVariants": [{"VariantName": "v", "ModelName": name}],
                    }
                )
                await router.create_endpoint({"EndpointName": name, "EndpointConfigName": name})
            port = router.runtime_port
            latency = {}
            for name in ("proc", "engine", "proc", "engine"):  # interleaved: fairer on a busy box
                samples = await asyncio.to_thread(_latencies, port, name, args.requests // 2)
                latency.setdefault(name, []).extend(samples)
            summary = {name: _summary(samples) for name, samples in latency.items()}
            runtime = router._parts().runtime
            assert isinstance(runtime, ImageRuntime)
            starts = await _start_times(runtime, state, args.starts)
    finally:
        if service is not None:
            service.terminate()
            service.wait(10)
    added = {
        key: round(summary["engine"][key] - summary["proc"][key], 1)
        for key in ("p50_us", "p90_us", "p99_us", "mean_us")
    }
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, shared",
        "engine": url.split("://")[0],
        "requests_per_runtime": args.requests,
        "latency_through_router": summary,
        "engine_minus_process": added,
        "start_to_healthy": starts,
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Engine runtime vs process runtime",
        "",
        "Same container code (examples/container.py, role model) as a process and as the image",
        "docker/quickstart-model, behind one router; sequential requests on one keep-alive",
        f"connection, {args.requests} per runtime after warm-up, interleaved. podman 4.3 (runc,",
        "rootful, per-instance network namespace with the port published on 127.0.0.1).",
        "",
        "| runtime | p50 µs | p90 µs | p99 µs | mean µs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("proc", "engine"):
        s = summary[name]
        lines.append(f"| {name} | {s['p50_us']} | {s['p90_us']} | {s['p99_us']} | {s['mean_us']} |")
    lines.append(
        f"| engine − process | {added['p50_us']} | {added['p90_us']} | {added['p99_us']} | "
        f"{added['mean_us']} |"
    )
    lines += ["", "Start to first 200 on /ping (s):", "", "| image | median | min | max |"]
    lines.append("| --- | --- | --- | --- |")
    for label, s in starts.items():
        if "error" in s:
            lines.append(f"| {label} | error: {s['error']} | | |")
        else:
            lines.append(f"| {label} | {s['median_s']} | {s['min_s']} | {s['max_s']} |")
    (out / "engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
