"""The harness against real routers and container processes on loopback: rate accuracy, a stall
in the open-loop percentiles, find-the-limit on a container of known capacity, the generator's
self-check, the router's metrics, processes, SigV4."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
from harness import load, mix_document, paced_router

from mce_router.loadtest import PIPELINE, SCHEMA, config_from_document, run_load
from mce_router.security import AuthConfig

pytestmark = pytest.mark.slow

ACCESS_KEY = "AKIDLOADTEST"
SECRET_KEY = "loadtest-secret-key-0123456789"


async def test_open_loop_meets_the_rate_and_keeps_the_mix(tmp_path: Path) -> None:
    endpoint = "rate"
    async with paced_router(tmp_path / "state", {endpoint: {"a": {}, "b": {}}}) as router:
        report = await load(
            router, endpoint, mix_document(tmp_path, {"a": 3, "b": 1}), tmp_path,
            rate=300, duration=4,
        )  # fmt: skip
    data = report.data
    overall = data["overall"]
    assert overall["requests"] == 1200  # the schedule is exact: 300/s for 4 s
    assert overall["errors"] == 0, overall["errors_by_code"]
    assert overall["achieved_rps"] == pytest.approx(300, rel=0.05)
    # Smooth weighted round-robin: the split is exact, not statistical.
    assert data["containers"]["a"]["requests"] == 900
    assert data["containers"]["b"]["requests"] == 300
    for name in ("a", "b"):
        latency = data["containers"][name]["latency_ms"]
        assert set(latency) >= {"p50", "p90", "p99", "p999", "max"}
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"]
        assert latency["p999"] <= latency["max"]
    assert report.valid, data["invalid_reasons"]
    # The router's own view of the same run, read from its /metrics.
    router_view = data["router"]["containers"]
    assert router_view["a"]["invocations"] == 900
    assert router_view["b"]["invocations"] == 300
    assert router_view["a"]["container_latency_ms"]["mean"] > 0
    assert router_view["a"]["overhead_latency_ms"]["mean"] > 0
    assert router_view["a"]["cpu_percent"]["samples"]
    assert router_view["a"]["memory_percent"]["mean"] > 0
    # The server-side latency is part of what the client measured.
    assert (
        router_view["a"]["container_latency_ms"]["p50"]
        <= data["containers"]["a"]["latency_ms"]["p99"]
    )
    assert data["schema"] == SCHEMA
    assert len(data["timeline"]) >= 4
    json_path, html_path = tmp_path / "r.json", tmp_path / "r.html"
    report.write_json(json_path)
    report.write_html(html_path)
    assert json.loads(json_path.read_text())["overall"]["requests"] == 1200
    page = html_path.read_text()
    assert page.count("<svg") >= 4  # rate, latency, percentile curves, container CPU
    assert not re.search(r"""(src|href)=["']?https?://""", page)  # self-contained


async def test_phases_run_in_order_with_live_progress(tmp_path: Path) -> None:
    endpoint = "phases"
    document = mix_document(tmp_path, {"a": 1, "b": 1})
    document["phases"] = [
        {"rate": 50, "duration": 2, "name": "warm"},
        {"rate": 100, "duration": 2, "name": "step"},
        {"users": 2, "spawn_rate": 4, "duration": 2, "name": "users"},
    ]
    out = io.StringIO()
    async with paced_router(tmp_path / "state", {endpoint: {"a": {}, "b": {}}}) as router:
        config = config_from_document(
            document, tmp_path, {"url": router.runtime_url, "endpoint": endpoint,
                                 "admin_url": "none"},
        )  # fmt: skip
        report = await asyncio.to_thread(run_load, config, out=out)
    phases = report.data["phases"]
    assert [p["name"] for p in phases] == ["warm", "step", "users"]
    assert [p["overall"]["requests"] for p in phases[:2]] == [100, 200]
    assert phases[2]["mode"] == "closed"
    assert phases[2]["overall"]["requests"] > 100
    assert report.data["router"] is None
    # One progress line per second (not a terminal): phase, bar, rate vs target, split.
    lines = out.getvalue().splitlines()
    assert len(lines) >= 5
    assert any(line.startswith("load 2/3 [") and "/100 req/s" in line for line in lines)
    assert any("(2 users)" in line for line in lines)
    for line in lines:
        if line.startswith("load 1/3"):
            split = re.search(r"a (\d+)% b (\d+)%", line)
            assert split is not None, line
            # Completions straddle second boundaries, so a second may split 52/48.
            assert 40 <= int(split.group(1)) <= 60


async def test_a_stall_shows_in_the_open_loop_p99_and_max_but_hides_in_the_closed_loop(
    tmp_path: Path,
) -> None:
    stall = {"PACED_STALL_AFTER": "1.0", "PACED_STALL_SECONDS": "1.0"}
    endpoints = {"open": {"m": stall}, "closed": {"m": stall}}
    document = mix_document(tmp_path, {"m": 1})
    async with paced_router(tmp_path / "state", endpoints) as router:
        open_loop = await load(router, "open", document, tmp_path, rate=100, duration=4)
        closed_loop = await load(router, "closed", document, tmp_path, users=1, duration=4)
    latency = open_loop.overall["latency_ms"]
    # Requests scheduled during the 1 s stall are timed from their scheduled send: ~100 of 400
    # waited between 0 and 1 s, so the top percent waited almost the whole second.
    assert latency["max"] >= 900
    assert latency["p99"] >= 800
    assert open_loop.overall["errors"] == 0
    assert open_loop.valid, open_loop.data["invalid_reasons"]
    # One user sees the stall once: its max shows it, its p99 does not (coordinated omission,
    # which is why the open loop is the default).
    closed = closed_loop.overall["latency_ms"]
    assert closed["max"] >= 900
    assert closed["p99"] < 100
    assert closed_loop.overall["requests"] > 400


async def test_find_the_limit_finds_a_container_that_serves_at_most_100_per_second(
    tmp_path: Path,
) -> None:
    endpoints = {"limits": {"slow": {"PACED_MAX_RPS": "100"}, "fast": {}}}
    document = mix_document(tmp_path, {"slow": 1, "fast": 1})
    document["find_limit"] = {
        "start": 60, "step": 60, "max_rate": 240, "step_duration": 1.5, "p99_ms": 100,
    }  # fmt: skip
    async with paced_router(tmp_path / "state", endpoints) as router:
        report = await load(router, "limits", document, tmp_path)
    limit = report.limit
    assert limit is not None
    # Alone, the slow container passes 60/s and breaks at 120/s (> 100/s: the queue grows by
    # 20 per second, 1.5 s of it is far over 100 ms).
    slow = limit["containers"]["slow"]
    assert slow["max_rps"] == 60, slow
    assert "p99" in slow["stopped_by"]
    # The fast one meets the threshold up to the last step.
    assert limit["containers"]["fast"]["max_rps"] == 240
    assert limit["containers"]["fast"]["stopped_by"] == "max_rate reached"
    # Half of the mix goes to the slow container: 180/s (90 to it) passes, 240/s (120) breaks.
    assert limit["endpoint"]["max_rps"] == 180, limit["endpoint"]
    assert report.valid
    assert "highest rate meeting them: 60 req/s" in report.summary()


async def test_a_generator_starved_of_cpu_marks_the_result_invalid(tmp_path: Path) -> None:
    endpoint = "starved"
    stop = threading.Event()

    def hog() -> None:
        # A catastrophic regex holds the GIL for its whole match: the generator's event loop
        # cannot run for ~0.2 s at a time, as on a machine whose CPU is taken by others.
        pattern = re.compile(r"(a+)+$")
        while not stop.is_set():
            pattern.match("a" * 21 + "b")
            time.sleep(0.05)

    async with paced_router(tmp_path / "state", {endpoint: {"m": {}}}) as router:
        thread = threading.Thread(target=hog, daemon=True)
        thread.start()
        try:
            report = await load(
                router, endpoint, mix_document(tmp_path, {"m": 1}), tmp_path, rate=200, duration=3
            )
        finally:
            stop.set()
            thread.join(timeout=10)
    assert not report.valid
    assert any("scheduling lag" in r for r in report.data["invalid_reasons"])
    assert "INVALID" in report.summary()


async def test_processes_share_the_rate(tmp_path: Path) -> None:
    endpoint = "procs"
    async with paced_router(tmp_path / "state", {endpoint: {"a": {}, "b": {}}}) as router:
        report = await load(
            router, endpoint, mix_document(tmp_path, {"a": 1, "b": 1}), tmp_path,
            rate=200, duration=3, processes=2,
        )  # fmt: skip
    assert report.overall["requests"] == 600
    assert report.overall["errors"] == 0
    assert report.overall["achieved_rps"] == pytest.approx(200, rel=0.06)
    assert report.containers["a"]["requests"] == 300
    assert report.data["router"]["containers"]["a"]["invocations"] == 300


async def test_serial_pipeline_and_the_autoscaling_warning(tmp_path: Path) -> None:
    endpoints = {
        "pipeline": [{}, {}],
        # 20 ms of CPU per request against ~0.2 ms: the seed's case.
        "mixed": {"cheap": {}, "costly": {"PACED_CPU_MS": "20"}},
    }
    async with paced_router(tmp_path / "state", endpoints) as router:
        serial = await load(
            router, "pipeline", mix_document(tmp_path, {None: 1}), tmp_path, rate=50, duration=1
        )
        mixed = await load(
            router, "mixed", mix_document(tmp_path, {"cheap": 9, "costly": 1}), tmp_path,
            rate=100, duration=4, instance_cores=1, cpu_target=0.8,
        )  # fmt: skip
    assert serial.containers[PIPELINE]["requests"] == 50
    assert serial.overall["errors"] == 0
    auto = mixed.data["autoscaling"]
    assert auto is not None
    assert auto["costliest"] == "costly"
    assert 10 <= auto["cpu_ms_per_request"]["costly"] <= 40
    # 0.8 cores / 20 ms = 40/s is safe for any mix; the run's 100/s is not.
    assert 20 <= auto["safe_invocations_per_instance"] <= 80
    assert 0.1 < auto["breaking_share_of_costliest"] < 1.0
    assert "InvocationsPerInstance" in auto["warning"]


async def test_sigv4_signed_requests_pass_a_router_that_requires_them(tmp_path: Path) -> None:
    endpoint = "signed"
    auth = AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "credentials": [
                {
                    "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY,
                    "principal": "arn:aws:iam::000000000000:user/loadtest",
                    "policies": [
                        {
                            "Version": "2012-10-17",
                            "Statement": [
                                {"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}
                            ],
                        }
                    ],
                }
            ],
        },
        tmp_path,
    )
    document = mix_document(tmp_path, {"m": 1})
    async with paced_router(tmp_path / "state", {endpoint: {"m": {}}}, auth=auth) as router:
        from mce_router.loadtest import Credentials

        good = Credentials(ACCESS_KEY, SECRET_KEY)
        bad = Credentials(ACCESS_KEY, "not-the-secret")
        signed = await load(
            router, endpoint, document, tmp_path, rate=50, duration=2, sign="on",
            credentials=good,
        )  # fmt: skip
        wrong = await load(
            router, endpoint, document, tmp_path, rate=20, duration=1, sign="on",
            credentials=bad,
        )  # fmt: skip
        unsigned = await load(router, endpoint, document, tmp_path, rate=20, duration=1, sign="off")
    assert signed.overall["errors"] == 0, signed.overall["errors_by_code"]
    assert signed.overall["requests"] == 100
    assert signed.data["signed"]
    assert wrong.overall["errors_by_code"] == {"InvalidSignatureException": 20}
    assert wrong.overall["errors_by_status"] == {"403": 20}
    assert unsigned.overall["errors_by_code"] == {"MissingAuthenticationTokenException": 20}
