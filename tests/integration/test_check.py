"""`mce-router check`: real container processes that break one contract rule each on purpose.

The subject is tests/containers/fault_container.py, whose knobs break the rules (FAULT_* in its
docstring). Every run starts real processes on real ports; the report is read as a user reads
it (rule names, pass/fail, evidence), and afterwards no process of the run is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest

from mce_router.check import CheckOptions, CheckReport, CommandSubject, check_container
from mce_router.runtime.instances import InstanceType, lookup

REPO = Path(__file__).resolve().parents[2]
FAULT = [sys.executable, str(REPO / "tests" / "containers" / "fault_container.py")]
M5_LARGE = lookup("ml.m5.large")


def _no_leftover() -> None:
    mine = [
        p
        for p in psutil.Process().children(recursive=True)
        if "fault_container.py" in " ".join(p.cmdline())
    ]
    assert not mine, f"left running: {mine}"


async def _check(
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    payload: bytes | None = b'{"x": 1}',
    instance: InstanceType = M5_LARGE,
    startup_timeout: float = 10.0,
    grace: float = 2.0,
) -> CheckReport:
    subject = CommandSubject(FAULT, environment=dict(env or {}), log_dir=tmp_path / "logs")
    options = CheckOptions(
        instance=instance,
        payload=payload,
        startup_timeout=startup_timeout,
        grace_seconds=grace,
        ping_repeats=2,
        accept_samples=2,
    )
    try:
        return await check_container(subject, options)
    finally:
        _no_leftover()


def _by_rule(report: CheckReport) -> dict[str, tuple[bool, str]]:
    return {rule.rule: (rule.passed, rule.detail) for rule in report.rules}


def _failed(report: CheckReport) -> set[str]:
    return {rule.rule for rule in report.rules if not rule.passed}


async def test_a_good_container_passes_every_rule(tmp_path: Path) -> None:
    report = await _check(tmp_path)
    rules = _by_rule(report)
    assert report.passed, report.as_text()
    assert list(rules) == [
        "listens-on-bind-port",
        "not-on-port-8080",
        "accepts-within-250ms",
        "ping-200-within-2s",
        "invocations",
        "ports-in-safe-range",
        "bind-port-above-32767",
        "stops-on-sigterm",
        "resources",
    ]
    assert "answered 200" in rules["invocations"][1]
    assert "first 200" in rules["ping-200-within-2s"][1]
    assert "ml.m5.large: 2 vCPU" in rules["resources"][1]


@pytest.mark.parametrize(
    ("env", "broken", "evidence"),
    [
        ({"FAULT_EXTRA_LISTEN": "8080"}, {"not-on-port-8080", "ports-in-safe-range"}, "8080"),
        ({"FAULT_EXTRA_LISTEN": "31999"}, {"ports-in-safe-range"}, "outside both: [31999]"),
        ({"FAULT_ACCEPT_DELAY": "0.6"}, {"accepts-within-250ms"}, "limit 250 ms"),
        ({"FAULT_MAX_BIND_PORT": "32767"}, {"bind-port-above-32767"}, "exited with status 1"),
        ({"FAULT_IGNORE_SIGTERM": "1"}, {"stops-on-sigterm"}, "still running 2 s after SIGTERM"),
        ({"FAULT_DEFAULT_ACTION": "status:500"}, {"invocations"}, "answered 500"),
        ({"FAULT_PING": "fail-after:1"}, {"ping-200-within-2s"}, "500"),
    ],
    ids=["8080", "stray-port", "slow-accept", "low-ports-only", "no-sigterm", "500", "flaky-ping"],
)
async def test_each_broken_rule_fails_alone_with_its_evidence(
    tmp_path: Path, env: dict[str, str], broken: set[str], evidence: str
) -> None:
    if env.get("FAULT_EXTRA_LISTEN") == "8080":
        from mce_router.runtime.ports import port_is_free

        if not port_is_free("127.0.0.1", 8080):
            pytest.skip("port 8080 is in use on this machine")
    report = await _check(tmp_path, env)
    assert _failed(report) == broken, report.as_text()
    details = " ".join(_by_rule(report)[rule][1] for rule in broken)
    assert evidence in details, report.as_text()


async def test_a_ping_that_never_answers_fails_within_the_startup_window(tmp_path: Path) -> None:
    report = await _check(tmp_path, {"FAULT_PING": "hang"}, startup_timeout=3.0)
    rules = _by_rule(report)
    assert not rules["ping-200-within-2s"][0]
    assert "no answer within 2 s" in rules["ping-200-within-2s"][1]
    assert rules["listens-on-bind-port"][0]
    assert not report.passed


async def test_a_container_that_exits_at_start_shows_its_status_and_output(
    tmp_path: Path,
) -> None:
    report = await _check(tmp_path, {"FAULT_STARTUP": "exit:7"})
    rules = _by_rule(report)
    assert not rules["listens-on-bind-port"][0]
    assert "exited with status 7" in rules["listens-on-bind-port"][1]
    assert "FAULT_STARTUP=exit:7" in rules["listens-on-bind-port"][1]  # its own last line
    assert all(not passed for passed, _ in rules.values())


async def test_memory_beyond_the_instance_type_fails_resources(tmp_path: Path) -> None:
    # A made-up 64 MiB instance type (the seam CheckOptions offers), so the test holds 96 MiB
    # rather than the gigabytes of a real type.
    tiny = InstanceType("ml.test.tiny", 1, 64 * 2**20)
    report = await _check(tmp_path, {"FAULT_ALLOCATE_MB": "96"}, instance=tiny)
    assert _failed(report) == {"resources"}, report.as_text()
    assert "ml.test.tiny: 1 vCPU" in _by_rule(report)["resources"][1]


async def test_without_a_payload_the_invocation_is_reported_as_skipped(tmp_path: Path) -> None:
    report = await _check(tmp_path, payload=None)
    skipped = [rule for rule in report.rules if rule.skipped]
    assert [rule.rule for rule in skipped] == ["invocations"]
    assert "--payload" in skipped[0].detail
    assert report.passed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mce_router", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_json_as_documented_and_exit_status(tmp_path: Path) -> None:
    payload = tmp_path / "payload.csv"
    payload.write_text("1,2\n")
    good = _cli(
        "--command", *FAULT, "--payload", str(payload), "--content-type", "text/csv", "--json"
    )
    assert good.returncode == 0, good.stdout + good.stderr
    document = json.loads(good.stdout)
    assert document["passed"] is True
    assert {"rule", "passed", "detail"} <= set(document["rules"][0])
    assert all(isinstance(rule["passed"], bool) for rule in document["rules"])

    # `--` ends the container's command line; --env reaches the container.
    bad = _cli(
        "--env",
        "FAULT_DEFAULT_ACTION=status:503",
        "--payload",
        str(payload),
        "--command",
        *FAULT,
        "--",
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL  invocations" in bad.stdout
    assert "1 rule(s) failed" in bad.stdout
    _no_leftover()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--command", "python", "--instance-type", "ml.nope"], "ml.m5.large"),
        (["--command", "python", "--payload", "/nonexistent/x"], "--payload /nonexistent/x"),
        (["--command", "/nonexistent/server"], "cannot start /nonexistent/server"),
        (["--command", "python", "--env", "NOEQUALS"], "expected KEY=VALUE"),
    ],
    ids=["instance-type", "payload", "program", "env"],
)
def test_cli_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = _cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_the_readme_command_works_as_written() -> None:
    """The first command of the README's check section, copied out and run unchanged."""
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Checking a container before you deploy it\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    first = block.group(1).split("\n")[0:2]
    argv = shlex.split(" ".join(line.rstrip("\\") for line in first))
    assert argv[:2] == ["mce-router", "check"]
    result = subprocess.run(
        [sys.executable, "-m", "mce_router", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  invocations" in result.stdout and "predictions" in result.stdout
    _no_leftover()
