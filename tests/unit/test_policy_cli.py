"""``mce-router policy simulate`` on policy files in a temp folder: exit statuses through a real
subprocess (``python -m mce_router.cli``), output details through ``main()`` in-process (each
subprocess pays the package's import time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mce_router.cli import main

ENDPOINT = "arn:aws:sagemaker:us-east-1:000000000000:endpoint/endpoint_name"

ALLOW_LISTED = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Allow",
            "Resource": ENDPOINT,
            "Condition": {
                "StringLike": {"sagemaker:TargetContainerHostname": ["customIps*", "common*"]}
            },
        }
    ],
}
DENY_SPECIAL = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "NoSpecial",
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Deny",
            "Resource": ENDPOINT,
            "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["special*"]}},
        }
    ],
}


def simulate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mce_router.cli", "policy", "simulate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def simulate_here(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    status = main(["policy", "simulate", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def policies(tmp_path: Path) -> tuple[Path, Path]:
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps(ALLOW_LISTED))
    deny = tmp_path / "deny.json"
    deny.write_text(json.dumps(DENY_SPECIAL))
    return allow, deny


def test_allow_prints_the_deciding_statement_and_exits_0(policies: tuple[Path, Path]) -> None:
    allow, deny = policies
    result = simulate(
        "--policy", allow, "--policy", deny,
        "--action", "sagemaker:InvokeEndpoint", "--resource", ENDPOINT,
        "--target-container", "customIps1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "decision: allow",
        f"statement: {allow} Statement[0]",
        f"request: sagemaker:InvokeEndpoint on {ENDPOINT}",
        "context: sagemaker:TargetContainerHostname='customIps1'",
    ]


def test_explicit_deny_names_the_other_policy_and_exits_1(policies: tuple[Path, Path]) -> None:
    allow, deny = policies
    result = simulate(
        "--policy", allow, "--policy", deny,
        "--action", "sagemaker:InvokeEndpoint", "--resource", ENDPOINT,
        "--target-container", "special1",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.splitlines()[:2] == [
        "decision: explicit-deny",
        f'statement: {deny} Statement[0] (Sid "NoSpecial")',
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "implicit-deny"),  # no header: StringLike on an absent key is false
        (["--target-container", "other"], "implicit-deny"),
        (["--target-container", "common"], "allow"),
    ],
)
def test_json_output(
    capsys: pytest.CaptureFixture[str],
    policies: tuple[Path, Path],
    extra: list[str],
    expected: str,
) -> None:
    allow, _ = policies
    status, out, _ = simulate_here(
        capsys,
        "--policy", allow, "--action", "sagemaker:InvokeEndpoint", "--resource", ENDPOINT,
        "--json", *extra,
    )  # fmt: skip
    assert status == (0 if expected == "allow" else 1)
    output: dict[str, Any] = json.loads(out)
    assert output["decision"] == expected
    assert output["allowed"] is (expected == "allow")
    if expected == "allow":
        assert output["statement"] == {
            "policy": str(allow),
            "policy_index": 0,
            "statement_index": 0,
            "sid": None,
        }
    else:
        assert output["statement"] is None


def test_implicit_deny_says_no_statement_allows(
    capsys: pytest.CaptureFixture[str], policies: tuple[Path, Path]
) -> None:
    allow, _ = policies
    status, out, _ = simulate_here(
        capsys, "--policy", allow, "--action", "sagemaker:InvokeEndpoint", "--resource", ENDPOINT
    )
    assert status == 1
    assert out.splitlines() == [
        "decision: implicit-deny",
        "statement: none (no statement allows the request)",
        f"request: sagemaker:InvokeEndpoint on {ENDPOINT}",
        "context: none",
    ]


def test_context_keys_and_yaml_policies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "Version: 2012-10-17\n"
        "Statement:\n"
        "  - Effect: Allow\n"
        "    Action: 'sagemaker:*'\n"
        "    Resource: '*'\n"
        "    Condition: {StringEquals: {'test:Team': blue}}\n"
    )
    base = ["--policy", str(policy), "--action", "sagemaker:ListEndpoints", "--resource", "*"]
    assert simulate_here(capsys, *base, "--context", "test:Team=blue")[0] == 0
    assert simulate_here(capsys, *base, "--context", "test:Team=red")[0] == 1
    status, _, err = simulate_here(capsys, *base, "--context", "no-equals-sign")
    assert status == 2 and "expected service:Key=value" in err


def test_invalid_policy_exits_2_with_the_field_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "allow"}]}))
    result = simulate("--policy", bad, "--action", "sagemaker:InvokeEndpoint", "--resource", "*")
    assert result.returncode == 2
    assert f"{bad}.Statement[0].Effect: must be 'Allow' or 'Deny'" in result.stderr


def test_unreadable_policy_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = simulate_here(
        capsys, "--policy", tmp_path / "nope.json", "--action", "a:b", "--resource", "*"
    )
    assert status == 2
    assert "cannot read" in err


def test_mixed_case_sagemaker_arn_gets_a_note(
    capsys: pytest.CaptureFixture[str], policies: tuple[Path, Path]
) -> None:
    allow, _ = policies
    status, _, err = simulate_here(
        capsys,
        "--policy", allow, "--action", "sagemaker:InvokeEndpoint",
        "--resource", ENDPOINT.replace("endpoint_name", "Endpoint_Name"),
        "--target-container", "common",
    )  # fmt: skip
    assert status == 1
    assert "lower case" in err


def test_missing_arguments_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], policies: tuple[Path, Path]
) -> None:
    with pytest.raises(SystemExit) as info:
        simulate_here(capsys, "--policy", policies[0], "--action", "sagemaker:InvokeEndpoint")
    assert info.value.code == 2
    assert "--resource" in capsys.readouterr().err
