"""The README's examples work as written: `mce-router serve --config examples/quickstart.yaml`
(the first README command, on its own ports and state directory), then the boto3 snippets of
"Try it" and "Control plane" copied out of README.md and run unchanged but for the ports, and
"Load testing"'s `mce-router loadtest` command against it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import free_port

import mce_router

pytestmark = pytest.mark.timeout(180)

CHECKOUT = Path(mce_router.__file__).resolve().parent.parent
README = CHECKOUT / "README.md"
QUICKSTART = CHECKOUT / "examples" / "quickstart.yaml"
if not README.is_file() or not QUICKSTART.is_file():
    pytest.skip("not run from a checkout", allow_module_level=True)


def _block_after(heading: str, language: str) -> str:
    """The first ```language block in the README section called ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match is not None, f"no {language} block under '## {heading}'"
    return match.group(1)


def _python_block_after(heading: str) -> str:
    return _block_after(heading, "python")


@asynccontextmanager
async def _quickstart(tmp_path: Path) -> AsyncIterator[tuple[int, int, dict[str, str]]]:
    """`mce-router serve --config examples/quickstart.yaml` on its own ports and state directory;
    yields the runtime and admin ports and the environment to run clients in."""
    runtime_port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MALLOC_"))}
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mce_router",
        "serve",
        "--config",
        str(QUICKSTART),
        "--port",
        str(runtime_port),
        "--admin-port",
        str(admin_port),
        "--state-dir",
        str(tmp_path / "state"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert cli.stdout is not None
    try:
        async with asyncio.timeout(60):
            ready = await cli.stdout.readline()
        assert ready.startswith(b"mce-router ready"), ready
        yield runtime_port, admin_port, env
    finally:
        if cli.returncode is None:
            cli.terminate()
        async with asyncio.timeout(60):
            await cli.communicate()
    assert cli.returncode == 0


async def _run(command: list[str] | str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
        cwd=CHECKOUT,
    )


async def test_quickstart_then_the_readme_boto3_snippets(tmp_path: Path) -> None:
    async with _quickstart(tmp_path) as (runtime_port, admin_port, env):
        try_it = _python_block_after("Try it")
        streaming = _python_block_after("Response streaming")
        control = _python_block_after("Control plane")
        autoscaling = _python_block_after("Autoscaling")
        script = "\n".join((try_it, streaming, control, autoscaling))
        script = script.replace(":8080", f":{runtime_port}")
        script = script.replace(":8081", f":{admin_port}")
        # Print what the control-plane and autoscaling snippets did, to check it below.
        script += (
            "\nprint(sagemaker.describe_endpoint(EndpointName='quickstart-direct')"
            "['ProductionVariants'][0]['DesiredInstanceCount'])"
            "\nprint(sm.describe_endpoint(EndpointName='e1')['EndpointStatus'])\n"
        )
        result = await _run([sys.executable, "-c", script], env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        # The outputs the README's comments promise.
        assert lines[0] == "b'{\"predictions\":[1.375]}'"
        assert "uses Direct invocation" in lines[1] and "TargetContainerHostname" in lines[1]
        # The streaming snippet: the Content-Type, then the parts as the comments show.
        assert lines[2:5] == ["text/csv", "1.375,positive", "4.0,positive"], lines
        assert lines[-2:] == ["2", "InService"]


async def test_the_readme_load_test_command_against_the_quickstart(tmp_path: Path) -> None:
    """ "Load testing"'s one command, as written but for the port and, appended (argparse keeps
    the last), a lower --max-rate and shorter steps so the test stays short: it finds a limit per
    container and writes both reports."""
    command = _block_after("Load testing", "bash").replace("\\\n", " ")
    assert command.startswith("mce-router loadtest "), command
    async with _quickstart(tmp_path) as (runtime_port, admin_port, env):
        argv = shlex.split(command.replace(":8080", f":{runtime_port}"))
        argv[0] = str(Path(sys.executable).parent / "mce-router")
        argv += ["--max-rate", "2000", "--step-duration", "1", "--quiet"]
        # The README's ports are adjacent, where the harness looks for the admin port by
        # itself; the test's free ports are not.
        argv += ["--admin-url", f"http://127.0.0.1:{admin_port}"]
        argv = [str(tmp_path / a) if a in ("report.json", "report.html") else a for a in argv]
        result = await _run(argv, env)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["valid"], data["invalid_reasons"]
    limit = data["limit"]
    assert set(limit["containers"]) == {"model", "preprocess", "postprocess"}
    for entry in [limit["endpoint"], *limit["containers"].values()]:
        assert entry["max_rps"] is not None and entry["max_rps"] >= 1000, entry
    for name in ("model", "preprocess", "postprocess", "overall"):
        entry = data["overall"] if name == "overall" else data["containers"][name]
        assert entry["requests"] > 0 and set(entry["latency_ms"]) >= {"p50", "p99", "p999"}
    # Against the router, its own per-container metrics sit beside the client's.
    assert data["router"]["containers"]["model"]["invocations"] > 0
    page = (tmp_path / "report.html").read_text()
    assert "Find the limit" in page and page.count("<svg") >= 4
