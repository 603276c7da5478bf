"""The harness's pieces without load: config validation (one line per mistake), the CLI's exit
statuses, the target sequence, error codes, Prometheus bucket percentiles, the autoscaling
arithmetic."""

from __future__ import annotations

import collections
import random
import re
from array import array
from pathlib import Path

import pytest
from conftest import free_port

from mce_router import cli
from mce_router.loadtest import LoadTestError, config_from_document, read_document
from mce_router.loadtest.autoscale import analyse
from mce_router.loadtest.config import parse_mix
from mce_router.loadtest.engine import (
    HIST_LOWEST_US,
    PLAN_LENGTH,
    error_code,
    fold,
    new_histogram,
    new_second_histogram,
    plan,
)
from mce_router.loadtest.routermetrics import bucket_percentile


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    return write(tmp_path, "body.json", '{"instances": [[1]]}')


BAD_MIXES = {
    "no targets": ("x: 1\n", "'targets' must be a non-empty list"),
    "not a mapping": ("- 1\n", "expected a mapping with 'targets'"),
    "broken yaml": ("targets: [\n", "not valid YAML/JSON"),
    "unknown field": (
        "targets: [{container: a, payload: body.json, wieght: 2}]\n",
        "unknown field 'wieght'",
    ),
    "missing payload file": (
        "targets: [{container: a, payload: nope.json}]\n",
        "payload nope.json: No such file or directory",
    ),
    "no payload": ("targets: [{container: a}]\n", "'payload' (a file) or 'payloads'"),
    "bad weight": ("targets: [{container: a, payload: body.json, weight: -1}]\n", "weight"),
    "serial among others": (
        "targets: [{payload: body.json}, {container: a, payload: body.json}]\n",
        "must be the only target",
    ),
    "twice": (
        "targets: [{container: a, payload: body.json}, {container: a, payload: body.json}]\n",
        "listed twice",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MIXES))
def test_a_bad_mix_file_gives_one_clear_line(
    case: str, tmp_path: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD_MIXES[case]
    mix = write(tmp_path, "mix.yaml", text)
    status = cli.main(
        ["loadtest", "--url", "http://127.0.0.1:9", "--endpoint", "e", "--mix", str(mix),
         "--rate", "10", "--duration", "1"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mce-router loadtest: ")
    assert expected in lines[0]


def test_an_unreachable_target_gives_one_clear_line(
    tmp_path: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mix = write(tmp_path, "mix.yaml", "targets: [{container: a, payload: body.json}]\n")
    port = free_port()
    status = cli.main(
        ["loadtest", "--url", f"http://127.0.0.1:{port}", "--endpoint", "e", "--mix", str(mix),
         "--rate", "10", "--duration", "1", "--quiet"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.splitlines() == [
        f"mce-router loadtest: cannot connect to http://127.0.0.1:{port}: Connection refused"
    ]


def test_help_explains_every_mix_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["loadtest", "--help"])
    text = capsys.readouterr().out
    for field in ("targets[].container", "targets[].weight", "targets[].payloads", "pick",
                  "seed", "phases", "find_limit", "--report-json", "--report-html",
                  "--processes", "--find-limit", "--p99-ms", "exit status"):  # fmt: skip
        assert field in text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"rate": 10, "users": 2}, "exactly one of rate"),
        ({"url": "ftp://x", "rate": 1}, "--url"),
        ({"rate": 1, "processes": 0}, "--processes"),
        ({}, "give --rate/--users"),
        ({"rate": 1, "phases": [{"rate": 1, "duration": 1}]}, None),
        ({"find_limit": {"start": 10, "max_rate": 5}}, "below start"),
        ({"find_limit": {"start": 10, "p99_ms": -1}}, "p99_ms"),
        ({"rate": 1, "colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_config_validation(
    tmp_path: Path, payload: Path, overrides: dict[str, object], expected: str | None
) -> None:
    document = {"targets": [{"container": "a", "payload": "body.json"}]}
    base = {"url": "http://127.0.0.1:8080", "endpoint": "e", **overrides}
    if expected is None:
        config = config_from_document(document, tmp_path, base)
        assert config.phases[0].rate == 1  # flags win over the file's phases
        return
    with pytest.raises(LoadTestError, match=re.escape(expected)):
        config_from_document(document, tmp_path, base)


def test_phases_and_find_limit_from_the_file(tmp_path: Path, payload: Path) -> None:
    mix = write(
        tmp_path,
        "mix.yaml",
        "url: http://127.0.0.1:8080\nendpoint: e\n"
        "targets: [{container: a, payload: body.json}]\n"
        "phases: [{rate: 10, duration: 2}, {users: 4, spawn_rate: 2, duration: 3, name: ramp}]\n",
    )
    config = config_from_document(read_document(mix), tmp_path)
    assert [(p.mode, p.rate, p.users, p.name) for p in config.phases] == [
        ("open", 10.0, None, "phase 1"),
        ("closed", None, 4, "ramp"),
    ]
    limit = config_from_document(
        read_document(mix), tmp_path, {"find_limit": {"start": 50, "step": 25, "max_rate": 150}}
    ).find_limit
    assert limit is not None
    assert limit.rates() == [50, 75, 100, 125, 150]


def test_the_target_sequence_keeps_weights_exactly_and_random_is_seeded(
    tmp_path: Path, payload: Path
) -> None:
    other = write(tmp_path, "other.json", "{}")
    document = {
        "targets": [
            {"container": "a", "weight": 3, "payloads": [payload.name, other.name]},
            {"container": "b", "weight": 1, "payload": payload.name},
        ]
    }
    mix = parse_mix(document, tmp_path)
    picks = plan(mix, 0)
    counts = collections.Counter(t for t, _ in picks)
    assert counts[0] == PLAN_LENGTH * 3 // 4
    # Round-robin payloads of target a alternate.
    a_payloads = [p for t, p in picks if t == 0][:6]
    assert a_payloads == [0, 1, 0, 1, 0, 1]
    seeded = parse_mix({**document, "pick": "random", "seed": 7}, tmp_path)
    assert plan(seeded, 0) == plan(seeded, 0)
    assert plan(seeded, 0) != plan(parse_mix({**document, "pick": "random"}, tmp_path), 0)
    share = collections.Counter(t for t, _ in plan(seeded, 0))[0] / PLAN_LENGTH
    assert share == pytest.approx(0.75, abs=0.03)


def test_the_inlined_fold_records_what_hdrh_records() -> None:
    """The hot path's fold does hdrh's bucket arithmetic itself: same counters, count, min
    and max (so the same encoding) as record_value, out-of-range values clamped."""
    rng = random.Random(7)
    values = [0, -3, 1, 2, 10**13] + [int(10 ** rng.uniform(0, 10)) for _ in range(20_000)]
    for make in (new_histogram, new_second_histogram):
        fast, reference = make(), make()
        fold(array("q", values), fast)
        highest = reference.highest_trackable_value
        for value, count in collections.Counter(values).items():
            reference.record_value(min(max(value, HIST_LOWEST_US), highest), count)
        assert list(fast.counts) == list(reference.counts)
        assert fast.get_total_count() == reference.get_total_count() == len(values)
        assert (fast.min_value, fast.max_value) == (reference.min_value, reference.max_value)
        assert fast.encode() == reference.encode()


def test_error_codes_come_from_the_header_or_the_body() -> None:
    header = b"ModelError:http://internal.amazon.com/coral/com.amazon.sagemaker/"
    assert error_code(header, None) == "ModelError"
    assert error_code(b"", [b'{"__type": "com.amazon#ValidationError", "message": "x"}']) == (
        "ValidationError"
    )
    assert error_code(b"", [b"plain text"]) == ""


def test_bucket_percentiles_interpolate_like_histogram_quantile() -> None:
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert bucket_percentile(buckets, 0.5) == pytest.approx(0.001)
    assert bucket_percentile(buckets, 0.7) == pytest.approx(0.0015)
    assert bucket_percentile(buckets, 0.99) == pytest.approx(0.0047)
    assert bucket_percentile({float("inf"): 0.0}, 0.5) is None


def test_the_autoscaling_analysis_finds_the_breaking_mix() -> None:
    # 4 cores at 80 %: 3.2 core-seconds per second. cheap 1 ms, costly 10 ms per request.
    result = analyse(
        {"cheap": 900, "costly": 100},
        {"cheap": 0.001, "costly": 0.010},
        invocations_per_instance=1000,
        cores=4,
        cpu_target=0.8,
    )
    assert result is not None
    # The measured mix costs 1.9 ms per request: 1000/s use 1.9 cores, under 3.2.
    assert result["instance_rps_at_measured_mix"] == pytest.approx(3.2 / 0.0019)
    assert result["safe_invocations_per_instance"] == pytest.approx(320)
    # 1000/s * (f*10 ms + (1-f)*1 ms) = 3.2 cores  =>  f = (3.2 ms - 1 ms) / 9 ms
    assert result["breaking_share_of_costliest"] == pytest.approx(2.2 / 9)
    assert "320/s" in result["warning"]
    similar = analyse(
        {"a": 1, "b": 1}, {"a": 0.001, "b": 0.0011}, invocations_per_instance=1000, cores=4,
        cpu_target=0.8,
    )  # fmt: skip
    assert similar is not None
    assert similar["warning"] is None
    assert (
        analyse({"a": 1}, {"a": 0.001}, invocations_per_instance=1, cores=1, cpu_target=1) is None
    )
