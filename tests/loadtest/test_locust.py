"""The Locust user class in Locust's own distributed mode: a headless master and one worker, on
loopback, against a real router. Locust runs in subprocesses only: it monkey-patches the
standard library with gevent when imported, which must never happen inside pytest's process
(or a router's)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from harness import mix_document, paced_router

from mce_router.loadtest.routermetrics import fetch, parse

# Found, not imported: importing Locust here would monkey-patch pytest's own process.
pytestmark = [
    pytest.mark.locust,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs Locust"),
]

LOCUSTFILE = Path(__file__).parents[2] / "examples" / "loadtest" / "locustfile.py"
USERS = 4


async def test_locust_master_and_worker_send_the_mix(tmp_path: Path) -> None:
    endpoint = "locust"
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump(mix_document(tmp_path, {"a": 3, "b": 1})))
    port = free_port()
    common = [
        "-f", str(LOCUSTFILE), "--mce-mix", str(mix), "--mce-endpoint", endpoint,
        "--mce-sign", "off",
    ]  # fmt: skip
    # Locust would otherwise look for a locust.conf in the working directory and home.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    async with paced_router(tmp_path / "state", {endpoint: {"a": {}, "b": {}}}) as router:
        master = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", *common, "--master", "--headless",
            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--expect-workers", "1", "--expect-workers-max-wait", "30",
            "-u", str(USERS), "-r", str(USERS), "-t", "4s", "--host", router.runtime_url,
            "--json-file", str(tmp_path / "locust"), "--only-summary",
            cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", *common, "--worker",
            "--master-host", "127.0.0.1", "--master-port", str(port),
            cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(master.communicate(), timeout=60)
            await asyncio.wait_for(worker.wait(), timeout=20)
        finally:
            for process in (master, worker):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        scrape = parse(await asyncio.to_thread(fetch, f"{router.admin_url}/metrics"), endpoint)
    assert master.returncode == 0, output.decode(errors="replace")[-2000:]
    # The final statistics (the CSV files are written periodically and may lag behind).
    rows = {row["name"]: row for row in json.loads((tmp_path / "locust.json").read_text())}
    counts = {name: int(rows[name]["num_requests"]) for name in ("a", "b")}
    assert sum(int(row["num_failures"]) for row in rows.values()) == 0
    assert counts["a"] > 100
    assert counts["a"] / counts["b"] == pytest.approx(3, rel=0.15)
    for name, count in counts.items():
        served = scrape.counters[(name, "invocations")]
        # Requests still in flight when the run stopped reached the router, not the stats:
        # at most one per user.
        assert count <= served <= count + USERS
