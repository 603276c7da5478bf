"""RequestHeaders: the allowlist that builds upstream requests, and the checks on client headers."""

from __future__ import annotations

import pytest

from mce_router.dataplane.headers import CODES, IGNORED, RequestHeaders, classify


def parse(*pairs: tuple[bytes, bytes]) -> tuple[RequestHeaders, str | None]:
    headers = RequestHeaders()
    for name, value in pairs:
        problem = headers.add(name, value)
        if problem is not None:
            return headers, problem
    return headers, headers.finish()


def test_allowlisted_headers_are_forwarded_with_canonical_names() -> None:
    headers, problem = parse(
        (b"content-type", b"text/csv; charset=utf-8"),
        (b"ACCEPT", b"application/json"),
        (b"x-amzn-sagemaker-custom-attributes", b"a=1;b=2"),
        (b"X-Amzn-SageMaker-Inference-Id", b"id-1"),
        (b"x-amzn-sagemaker-enable-explanations", b"`true`"),
        (b"x-amzn-sagemaker-target-model", b"model.tar.gz"),
        (b"x-amzn-sagemaker-session-id", b"s-1"),
        (b"X-Amzn-SageMaker-Target-Container-Hostname", b"alpha"),
        (b"X-Amzn-SageMaker-Target-Variant", b"Blue"),
        (b"Content-Length", b"12"),
    )
    assert problem is None
    assert headers.content_type == b"text/csv; charset=utf-8"
    assert headers.accept_block == b"Accept: application/json\r\n"
    assert headers.forward_block == (
        b"X-Amzn-SageMaker-Custom-Attributes: a=1;b=2\r\n"
        b"X-Amzn-SageMaker-Inference-Id: id-1\r\n"
        b"X-Amzn-SageMaker-Enable-Explanations: `true`\r\n"
        b"X-Amzn-SageMaker-Target-Model: model.tar.gz\r\n"
        b"X-Amzn-SageMaker-Session-Id: s-1\r\n"
    )
    assert headers.target_container == "alpha"
    assert headers.target_variant == "Blue"
    assert headers.content_length == 12


def test_everything_else_is_dropped() -> None:
    headers, problem = parse(
        (b"Authorization", b"AWS4-HMAC-SHA256 Credential=..."),
        (b"X-Amz-Date", b"20240101T000000Z"),
        (b"X-Amz-Security-Token", b"token"),
        (b"X-Amz-Content-SHA256", b"UNSIGNED-PAYLOAD"),
        (b"amz-sdk-invocation-id", b"1"),
        (b"Cookie", b"a=b"),
        (b"Proxy-Authorization", b"x"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Connection", b"keep-alive"),
    )
    assert problem is None
    assert headers.forward_block == b""
    assert headers.accept_block == b""
    assert headers.content_type is None


def test_connection_listed_headers_are_hop_by_hop() -> None:
    headers, problem = parse(
        (b"Connection", b"keep-alive, X-Amzn-SageMaker-Session-Id"),
        (b"Connection", b"Accept"),
        (b"X-Amzn-SageMaker-Session-Id", b"s-1"),
        (b"X-Amzn-SageMaker-Inference-Id", b"kept"),
        (b"Accept", b"text/csv"),
        (b"Content-Type", b"text/csv"),
    )
    assert problem is None
    assert headers.forward_block == b"X-Amzn-SageMaker-Inference-Id: kept\r\n"
    assert headers.accept_block == b""
    assert headers.content_type == b"text/csv"


@pytest.mark.parametrize(
    "name",
    [
        b"Content-Type",
        b"accept",
        b"X-Amzn-SageMaker-Target-Container-Hostname",
        b"x-amzn-sagemaker-custom-attributes",
        b"Host",
        b"Content-Length",
    ],
)
def test_duplicate_singletons_are_refused(name: bytes) -> None:
    _, problem = parse((name, b"1"), (name.upper(), b"1"))
    assert problem is not None
    assert "appears more than once" in problem


def test_custom_attributes_limits() -> None:
    assert parse((b"X-Amzn-SageMaker-Custom-Attributes", b"x" * 1024))[1] is None
    _, problem = parse((b"X-Amzn-SageMaker-Custom-Attributes", b"x" * 1025))
    assert problem is not None and "CustomAttributes" in problem and "1025" in problem
    _, problem = parse((b"X-Amzn-SageMaker-Custom-Attributes", b"caf\xc3\xa9"))
    assert problem is not None and "printable ASCII" in problem


def test_inference_id_length() -> None:
    assert parse((b"X-Amzn-SageMaker-Inference-Id", b"i" * 64))[1] is None
    _, problem = parse((b"X-Amzn-SageMaker-Inference-Id", b"i" * 65))
    assert problem == "InferenceId must be 1 to 64 characters long."
    _, problem = parse((b"X-Amzn-SageMaker-Inference-Id", b""))
    assert problem == "InferenceId must be 1 to 64 characters long."


def test_expect() -> None:
    headers, problem = parse((b"Expect", b"100-Continue"))
    assert problem is None and headers.expect_continue
    _, problem = parse((b"Expect", b"something-else"))
    assert problem is not None and "Expect" in problem


_SPELLINGS = [
    *CODES,
    *(name.upper() for name in CODES),
    *(name.title() for name in CODES),
    *(bytes(c ^ 0x20 if i % 3 == 0 and chr(c).isalpha() else c for i, c in enumerate(name))
      for name in CODES),
    b"User-Agent", b"user-agent", b"X-Amz-Date", b"Authorization", b"Keep-Alive",
    b"X-Unknown-Header", b"Hosts", b"Hos", b"Content-Lengthy", b"Accept-", b"Conection",
    b"X-Amzn-SageMaker-Target-Container-Hostnames", b"", b"X" * 500,
]  # fmt: skip


@pytest.mark.parametrize("name", _SPELLINGS)
def test_classify_matches_the_case_insensitive_table(name: bytes) -> None:
    assert classify(name) == CODES.get(name.lower(), IGNORED)
