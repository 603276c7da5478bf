"""The README's examples work as written: `mce-router serve --config examples/quickstart.yaml`
(the first README command, on its own ports and state directory), then the boto3 snippets of
"Try it" and "Control plane" copied out of README.md and run unchanged but for the ports."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
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


def _python_block_after(heading: str) -> str:
    """The first ```python block in the README section called ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block under '## {heading}'"
    return match.group(1)


async def test_quickstart_then_the_readme_boto3_snippets(tmp_path: Path) -> None:
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

        try_it = _python_block_after("Try it")
        streaming = _python_block_after("Response streaming")
        control = _python_block_after("Control plane")
        script = (try_it + "\n" + streaming + "\n" + control).replace(":8080", f":{runtime_port}")
        script = script.replace(":8081", f":{admin_port}")
        # Print what the control-plane snippet created, to check it below.
        script += "\nprint(sm.describe_endpoint(EndpointName='e1')['EndpointStatus'])\n"
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        # The outputs the README's comments promise.
        assert lines[0] == "b'{\"predictions\":[1.375]}'"
        assert "uses Direct invocation" in lines[1] and "TargetContainerHostname" in lines[1]
        # The streaming snippet: the Content-Type, then the parts as the comments show.
        assert lines[2:5] == ["text/csv", "1.375,positive", "4.0,positive"], lines
        assert lines[-1] == "InService"
    finally:
        if cli.returncode is None:
            cli.terminate()
        async with asyncio.timeout(60):
            await cli.communicate()
    assert cli.returncode == 0
