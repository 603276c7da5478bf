"""Helpers of the load-test harness's tests: real routers on loopback in front of the paced test
container (tests/containers/paced_container.py), whose capacity and stalls are known."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conftest import deploy, images_for_tests, make_config, running_router

from mce_router import Router
from mce_router.config import MetricsSettings, ProcessImage
from mce_router.loadtest import Report, config_from_document, run_load

PACED = Path(__file__).parents[1] / "containers" / "paced_container.py"
PACED_IMAGE = "test/paced:latest"


@asynccontextmanager
async def paced_router(
    state_dir: Path,
    endpoints: Mapping[str, Mapping[str, Mapping[str, str]] | list[Mapping[str, str]]],
    **changes: Any,
) -> AsyncIterator[Router]:
    """A router serving ``endpoints``: name -> {hostname: environment} (Direct) or a list of
    environments (Serial), every container a paced container."""
    config = make_config(
        state_dir,
        images=images_for_tests(
            **{PACED_IMAGE: ProcessImage(command=(sys.executable, str(PACED)))}
        ),
        metrics=MetricsSettings(usage_sample_seconds=0.5),
        **changes,
    )
    async with running_router(config) as router:
        for name, containers in endpoints.items():
            if isinstance(containers, list):
                entries = [{"Image": PACED_IMAGE, "Environment": dict(e)} for e in containers]
                mode = "Serial"
            else:
                entries = [
                    {"ContainerHostname": host, "Image": PACED_IMAGE, "Environment": dict(env)}
                    for host, env in containers.items()
                ]
                mode = "Direct"
            model = {
                "ModelName": name,
                "InferenceExecutionConfig": {"Mode": mode},
                "Containers": entries,
            }
            await deploy(router, model)
        yield router


def mix_document(tmp_path: Path, weights: Mapping[str | None, float]) -> dict[str, Any]:
    payload = tmp_path / "payload.json"
    payload.write_bytes(b'{"instances": [[1, 2, 3]]}')
    targets = []
    for container, weight in weights.items():
        entry: dict[str, Any] = {
            "weight": weight,
            "payload": payload.name,
            "content_type": "application/json",
        }
        if container is not None:
            entry["container"] = container
        targets.append(entry)
    return {"targets": targets}


async def load(
    router: Router, endpoint: str, document: Mapping[str, Any], base: Path, **settings: Any
) -> Report:
    """Run the harness against ``router`` in a thread (the router keeps this event loop)."""
    overrides = {
        "url": router.runtime_url,
        "endpoint": endpoint,
        "admin_url": router.admin_url,
        "progress": False,
        # The router and its containers share this process's GIL and the machine's cores with
        # the generator: allow 50 ms of lag (default 10) before calling the generator saturated
        # (a CI machine busy with other work stalls this process for tens of ms at times; the
        # starvation test's stalls are 200 ms).
        "max_lag_ms": 50,
        **settings,
    }
    config = config_from_document(document, base, overrides)
    return await asyncio.to_thread(run_load, config)
