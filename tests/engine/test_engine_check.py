"""`mce-router check --image`: real images through podman's Docker-compatible API."""

from __future__ import annotations

import json
import subprocess
import sys

import aiodocker
import pytest
from enginelib import (  # the fixtures, too: a conftest.py here would shadow tests/conftest.py
    QUICKSTART_IMAGE,
    REPO,
    UNLABELLED_IMAGE,
    Engine,
    engine,
    no_container_left_behind,
)

from mce_router.check import CheckOptions, ImageSubject, check_container
from mce_router.check.subjects import CHECK_LABEL
from mce_router.runtime.instances import lookup

pytestmark = pytest.mark.engine
__all__ = ["engine", "no_container_left_behind"]


async def _check_containers(url: str) -> list[object]:
    async with aiodocker.Docker(url=url) as docker:
        found: list[object] = await docker.containers.list(
            all=True, filters=json.dumps({"label": [CHECK_LABEL]})
        )
        return found


def test_the_quickstart_image_passes_every_rule(engine: Engine) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "mce_router", "check", "--image", QUICKSTART_IMAGE,
            "--engine-url", engine.url, "--env", "EXAMPLE_ROLE=model",
            "--payload", str(REPO / "examples" / "model-request.json"), "--grace", "10", "--json",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rules = {rule["rule"]: rule for rule in report["rules"]}
    assert rules["accept-bind-to-port-label"]["passed"]
    assert "predictions" in rules["invocations"]["detail"]
    assert report["passed"] is True


async def test_an_image_without_the_label_fails_that_rule(engine: Engine) -> None:
    # The base image has no server: every rule but the label fails too, so look at the label.
    subject = ImageSubject(UNLABELLED_IMAGE, engine_url=engine.url, environment={})
    options = CheckOptions(instance=lookup("ml.m5.large"), startup_timeout=5, grace_seconds=2)
    report = await check_container(subject, options)
    rules = {rule.rule: rule for rule in report.rules}
    assert not rules["accept-bind-to-port-label"].passed
    assert "has no com.amazonaws.sagemaker.capabilities.accept-bind-to-port label" in (
        rules["accept-bind-to-port-label"].detail
    )
    assert not report.passed
    assert await _check_containers(engine.url) == []  # removed, whatever happened


def test_an_absent_image_is_one_clear_line(engine: Engine) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "mce_router", "check", "--image", "localhost/no-such:1",
            "--engine-url", engine.url,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "image localhost/no-such:1 is not present" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_engine_is_one_clear_line(tmp_path: object) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "mce_router", "check", "--image", QUICKSTART_IMAGE,
            "--engine-url", "unix:///nonexistent/docker.sock",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no Docker Engine API answers at unix:///nonexistent/docker.sock" in result.stderr
