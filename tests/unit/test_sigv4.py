"""SigV4 verification: the AWS test suite, botocore-signed requests, and what real boto3 clients
send over real sockets (a tiny recording server on port 0; no mocks).

Also: the wire form of authentication errors as boto3 parses it, and the ``auth:`` config
section (credentials, secret sources).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from mce_router.errors import AuthError, ConfigError, wire_error
from mce_router.security import (
    AuthConfig,
    AuthenticationError,
    Credential,
    Guard,
    PolicyDocument,
    SigV4Verifier,
)
from mce_router.security.canonical import (
    canonical_query,
    canonical_request,
    canonical_uri,
    split_request_target,
    string_to_sign,
)
from mce_router.security.sigv4 import TARGET_CONTAINER_HEADER

KEY = "AKIDROUTERTEST"
SECRET = "router/test+secret/KEY0123456789abcdefghij"
REGION = "us-east-1"
ACCOUNT = "000000000000"
PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:user/tester"

Headers = list[tuple[bytes, bytes]]


@dataclass
class RawRequest:
    """A request as it arrived on the socket: everything the verifier takes."""

    method: bytes
    path: bytes
    query: bytes
    headers: Headers
    body: bytes

    def header(self, name: str) -> bytes:
        values = [v for n, v in self.headers if n.lower() == name.lower().encode()]
        assert len(values) == 1, (name, values)
        return values[0]

    def with_header(self, name: str, value: bytes | None) -> RawRequest:
        """A copy with header ``name`` replaced (None: removed), other headers kept in place."""
        headers = [(n, v) for n, v in self.headers if n.lower() != name.lower().encode()]
        if value is not None:
            headers.append((name.encode(), value))
        return RawRequest(self.method, self.path, self.query, headers, self.body)

    def with_authorization(self, edit: Callable[[str], str]) -> RawRequest:
        return self.with_header(
            "Authorization", edit(self.header("Authorization").decode()).encode()
        )


def parse_raw_request(raw: bytes) -> RawRequest:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    method, target, _version = request_line.split(b" ")
    path, query = split_request_target(target)
    headers: Headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return RawRequest(method, path, query, headers, body)


def verifier(
    credentials: list[Credential] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    region: str = REGION,
    **kwargs: Any,
) -> SigV4Verifier:
    return SigV4Verifier(
        credentials or [Credential(KEY, SECRET, PRINCIPAL)], region, clock=clock, **kwargs
    )


def verify(request: RawRequest, v: SigV4Verifier | None = None) -> Credential:
    return (v or verifier()).verify(
        request.method, request.path, request.query, request.headers, request.body
    )


def refused(request: RawRequest, v: SigV4Verifier | None = None) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verify(request, v)
    assert SECRET not in info.value.message
    return info.value


# ---------------------------------------------------------------------------------------------
# A recording HTTP server on a real socket
# ---------------------------------------------------------------------------------------------

Responder = Callable[[RawRequest], tuple[int, list[tuple[str, str]], bytes]]


def _ok(_: RawRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    return 200, [("Content-Type", "application/json")], b"{}"


@dataclass
class RecordingServer:
    """Accepts connections, records each request whole, answers with ``responder``."""

    responder: Responder = _ok
    requests: list[RawRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stopping = False
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            connection, _ = self._socket.accept()
            with connection:
                if self._stopping:
                    return
                self._handle(connection)

    def _handle(self, connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        head = data.partition(b"\r\n\r\n")[0]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) - len(head) - 4 < length:
            data += connection.recv(65536)
        request = parse_raw_request(data)
        self.requests.append(request)
        status, headers, body = self.responder(request)
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def close(self) -> None:
        # Closing a listening socket does not wake a thread blocked in accept(): connect once.
        self._stopping = True
        socket.create_connection(self._socket.getsockname()).close()
        self._thread.join(timeout=5)
        self._socket.close()

    def last(self) -> RawRequest:
        return self.requests[-1]


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


def client(service: str, url: str, **credentials: Any) -> Any:
    credentials.setdefault("aws_access_key_id", KEY)
    credentials.setdefault("aws_secret_access_key", SECRET)
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        **credentials,
    )


@pytest.fixture(scope="module")
def runtime(recorder: RecordingServer) -> Any:
    return client("sagemaker-runtime", recorder.url)


@pytest.fixture(scope="module")
def invocation(runtime: Any, recorder: RecordingServer) -> RawRequest:
    """One real boto3 InvokeEndpoint with a target container, as received."""
    runtime.invoke_endpoint(
        EndpointName="my-endpoint",
        TargetContainerHostname="customIps1",
        ContentType="text/csv",
        Body=b"1,2,3\n",
    )
    return recorder.last()


# ---------------------------------------------------------------------------------------------
# Real boto3 requests
# ---------------------------------------------------------------------------------------------


def test_boto3_invocation_with_the_right_key_is_verified(invocation: RawRequest) -> None:
    signed = re.search(r"SignedHeaders=([^,]+)", invocation.header("Authorization").decode())
    assert signed is not None
    assert TARGET_CONTAINER_HEADER in signed.group(1).split(";")
    assert invocation.path == b"/endpoints/my-endpoint/invocations"
    assert verify(invocation).principal == PRINCIPAL


def test_body_may_be_given_in_chunks_or_streamed(invocation: RawRequest) -> None:
    v = verifier()
    body = invocation.body
    chunks: list[bytes | bytearray | memoryview] = [
        body[:2],
        bytearray(body[2:4]),
        memoryview(body[4:]),
    ]
    assert v.verify(invocation.method, invocation.path, b"", invocation.headers, chunks)
    pending = v.begin("POST", invocation.path, b"", invocation.headers)
    for chunk in chunks:
        pending.update(chunk)
    assert pending.finish().access_key_id == KEY


def test_wrong_secret_is_an_invalid_signature(invocation: RawRequest) -> None:
    error = refused(invocation, verifier([Credential(KEY, SECRET + "x", PRINCIPAL)]))
    assert error.code == "InvalidSignatureException"
    assert wire_error(error).status == 403
    assert error.message.startswith("The request signature we calculated does not match")
    # The canonical request is echoed for debugging; the secret never is (refused() checks).
    assert "/endpoints/my-endpoint/invocations" in error.message


def test_authorization_parameters_in_any_order_and_spacing_verify(invocation: RawRequest) -> None:
    """SDKs all send Credential, SignedHeaders, Signature in that order (the fast path); other
    orders and spacing take the general parser and verify the same."""

    def reorder(auth: str) -> str:
        algorithm, _, rest = auth.partition(" ")
        credential, signed, signature = (part.strip() for part in rest.split(","))
        return f"  {algorithm}   {signature} ,{credential},   {signed}  "

    assert verify(invocation.with_authorization(reorder)).access_key_id == KEY


@pytest.mark.parametrize(
    "edit",
    [
        lambda sig: sig,
        lambda sig: sig + " ",  # trailing space: the pattern allows it
        lambda sig: sig.upper(),
        lambda sig: sig[:-1],
        lambda sig: sig + "0",
        lambda sig: sig[:-1] + ("0" if sig[-1] != "0" else "1"),
        lambda sig: sig[:-1] + "g",
        lambda sig: sig + ", Signature=" + sig,
    ],
    ids=["same", "trailing-space", "upper", "short", "long", "changed", "not-hex", "twice"],
)
def test_a_verifier_that_saw_the_header_before_decides_as_a_fresh_one(
    invocation: RawRequest, edit: Callable[[str], str]
) -> None:
    """The verifier keeps the decoded head of an Authorization value (all up to ``Signature=``)
    for the next request: whatever follows it must be judged exactly as without that memory."""

    def signature_edited(auth: str) -> str:
        head, _, signature = auth.rpartition("Signature=")
        return head + "Signature=" + edit(signature)

    edited = invocation.with_authorization(signature_edited)

    def outcome(v: SigV4Verifier) -> str:
        try:
            return verify(edited, v).access_key_id
        except AuthenticationError as error:
            return f"{error.code}: {error.message}"

    warm = verifier()
    verify(invocation, warm)  # the head is now known
    assert outcome(warm) == outcome(verifier())


def test_unknown_access_key_is_unrecognized(invocation: RawRequest) -> None:
    error = refused(invocation, verifier([Credential("AKIDOTHER", SECRET, PRINCIPAL)]))
    assert error.code == "UnrecognizedClientException"
    assert error.message == "The security token included in the request is invalid."


def test_unknown_access_key_is_refused_before_the_body_is_read(invocation: RawRequest) -> None:
    v = verifier([Credential("AKIDOTHER", SECRET, PRINCIPAL)])
    with pytest.raises(AuthenticationError, match="security token"):
        v.begin(invocation.method, invocation.path, b"", invocation.headers)


def test_missing_authorization_asks_for_a_token(invocation: RawRequest) -> None:
    error = refused(invocation.with_header("Authorization", None))
    assert (error.code, error.message) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )


def test_expired_and_future_dates_are_refused_with_awss_wording(invocation: RawRequest) -> None:
    signed_at = calendar.timegm(
        time.strptime(invocation.header("X-Amz-Date").decode(), "%Y%m%dT%H%M%SZ")
    )
    # Exactly at the edge of the 5-minute window, both ways: accepted.
    verify(invocation, verifier(clock=lambda: signed_at + 300))
    verify(invocation, verifier(clock=lambda: signed_at - 300))

    expired = refused(invocation, verifier(clock=lambda: signed_at + 301))
    assert expired.code == "InvalidSignatureException"
    assert re.fullmatch(
        r"Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z "
        r"\(\d{8}T\d{6}Z - 5 min\.\)",
        expired.message,
    )
    future = refused(invocation, verifier(clock=lambda: signed_at - 301))
    assert future.code == "InvalidSignatureException"
    assert future.message.startswith("Signature not yet current: ")
    assert future.message.endswith("+ 5 min.)")


def test_tampered_body_fails(invocation: RawRequest) -> None:
    tampered = RawRequest(invocation.method, invocation.path, b"", invocation.headers, b"9,9,9\n")
    assert refused(tampered).code == "InvalidSignatureException"


def test_tampered_target_header_fails(invocation: RawRequest) -> None:
    tampered = invocation.with_header(TARGET_CONTAINER_HEADER, b"special1")
    assert refused(tampered).code == "InvalidSignatureException"


def test_target_header_must_be_signed_when_present(invocation: RawRequest) -> None:
    unsigned = invocation.with_authorization(
        lambda auth: auth.replace(";" + TARGET_CONTAINER_HEADER, "")
    )
    error = refused(unsigned)
    assert error.code == "IncompleteSignatureException"
    assert TARGET_CONTAINER_HEADER in error.message


def test_request_without_target_header_is_verified(runtime: Any, recorder: RecordingServer) -> None:
    runtime.invoke_endpoint(EndpointName="serial-one", Body=b"x")
    request = recorder.last()
    assert TARGET_CONTAINER_HEADER.encode() not in {n.lower() for n, _ in request.headers}
    assert verify(request).access_key_id == KEY


@pytest.mark.parametrize(
    ("edit", "code", "fragment"),
    [
        (lambda a: a.replace("/us-east-1/", "/eu-west-1/"), "InvalidSignatureException", "region"),
        (lambda a: a.replace("/sagemaker/", "/s3/"), "InvalidSignatureException", "service"),
        (
            lambda a: a.replace("/aws4_request", "/aws5_request"),
            "InvalidSignatureException",
            "terminator",
        ),
        (
            lambda a: re.sub(r"/\d{8}/", "/20000101/", a),
            "InvalidSignatureException",
            "Credential scope",
        ),
        (
            lambda a: re.sub(r"Credential=[^,]+", "Credential=AKID/x", a),
            "IncompleteSignatureException",
            "Credential",
        ),
        (
            lambda a: re.sub(r", Signature=\w+", "", a),
            "IncompleteSignatureException",
            "'Signature'",
        ),
        (
            lambda a: a.replace("SignedHeaders=", "X="),
            "IncompleteSignatureException",
            "'SignedHeaders'",
        ),
        (lambda a: a.replace("host;", ""), "IncompleteSignatureException", "'host'"),
        (lambda a: a.replace(";x-amz-date", ""), "IncompleteSignatureException", "'x-amz-date'"),
        (
            lambda a: a.replace("host;", "host;x-made-up;"),
            "IncompleteSignatureException",
            "x-made-up",
        ),
        (lambda a: a.replace("host;", "Host;"), "IncompleteSignatureException", "lower-case"),
        (
            lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
            "IncompleteSignatureException",
            "only AWS4-HMAC-SHA256",
        ),
        (lambda a: "Bearer abc", "IncompleteSignatureException", "'Bearer'"),
        (lambda a: a + ", Signature=00", "IncompleteSignatureException", "twice"),
    ],
)
def test_malformed_or_misscoped_authorization_is_refused(
    invocation: RawRequest, edit: Callable[[str], str], code: str, fragment: str
) -> None:
    error = refused(invocation.with_authorization(edit))
    assert error.code == code
    assert fragment in error.message


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ([("X-Amz-Date", None)], "'X-Amz-Date' header"),
        ([("X-Amz-Date", b"2015-08-30T12:36:00Z")], "ISO-8601 'basic format'"),
        ([("X-Amz-Date", b"20151330T123600Z")], "ISO-8601 'basic format'"),
    ],
)
def test_missing_or_malformed_date_is_incomplete(
    invocation: RawRequest, headers: list[tuple[str, bytes | None]], fragment: str
) -> None:
    request = invocation
    for name, value in headers:
        request = request.with_header(name, value)
    error = refused(request)
    assert error.code == "IncompleteSignatureException"
    assert fragment in error.message


def test_duplicate_authorization_or_date_headers_are_refused(invocation: RawRequest) -> None:
    for name in ("Authorization", "X-Amz-Date"):
        doubled = RawRequest(
            invocation.method,
            invocation.path,
            b"",
            [*invocation.headers, (name.encode(), invocation.header(name))],
            invocation.body,
        )
        error = refused(doubled)
        assert error.code == "IncompleteSignatureException"
        assert "more than one" in error.message


def test_duplicate_signed_headers_are_joined_in_arrival_order() -> None:
    """The AWS suite's get-header-value-order case, re-signed for this router's scope: a
    repeated header's values join with ',' in arrival order, so reordering them breaks the
    signature."""
    now = time.time()
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    headers = [
        (b"Host", b"router.local"),
        (b"My-Header1", b"value4"),
        (b"My-Header1", b"  value1  "),
        (b"X-Amz-Date", date.encode()),
    ]
    signed = ["host", "my-header1", "x-amz-date"]
    creq = canonical_request("GET", b"/", b"", headers, signed, hashlib.sha256(b"").hexdigest())
    assert b"my-header1:value4,value1\n" in creq
    # Sign that canonical request with botocore's key derivation, independently of the verifier.
    auth = SigV4Auth(Credentials(KEY, SECRET), "sagemaker", REGION)
    scope = f"{date[:8]}/{REGION}/sagemaker/aws4_request"
    request = AWSRequest()
    request.context["timestamp"] = date
    signature = auth.signature(
        string_to_sign(date.encode(), scope.encode(), creq).decode(), request
    )
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    headers.append((b"Authorization", authorization.encode()))
    ok = RawRequest(b"GET", b"/", b"", headers, b"")
    assert verify(ok).access_key_id == KEY
    swapped = [headers[0], headers[2], headers[1], *headers[3:]]
    assert refused(RawRequest(b"GET", b"/", b"", swapped, b"")).code == "InvalidSignatureException"


def test_presigned_urls_are_refused_with_a_clear_message(invocation: RawRequest) -> None:
    presigned = RawRequest(
        invocation.method,
        invocation.path,
        b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x&X-Amz-Signature=y",
        [h for h in invocation.headers if h[0].lower() != b"authorization"],
        invocation.body,
    )
    error = refused(presigned)
    assert error.code == "IncompleteSignatureException"
    assert "Presigned URLs" in error.message


def test_unsigned_payload_is_never_trusted() -> None:
    """A client that signed UNSIGNED-PAYLOAD (and says so in X-Amz-Content-SHA256) fails: the
    router always hashes the body itself."""
    request = AWSRequest(
        method="POST",
        url="https://router.local/endpoints/e/invocations",
        data=b"abc",
        headers={"Content-Type": "text/csv"},
    )
    request.context["payload_signing_enabled"] = False
    SigV4Auth(Credentials(KEY, SECRET), "sagemaker", REGION).add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert refused(from_botocore(request)).code == "InvalidSignatureException"


def test_replays_are_accepted_by_default_and_refused_when_asked(invocation: RawRequest) -> None:
    default = verifier()
    verify(invocation, default)
    verify(invocation, default)  # SigV4 has no nonce; AWS accepts this too

    strict = verifier(reject_replays=True)
    verify(invocation, strict)
    error = refused(invocation, strict)
    assert error.code == "InvalidSignatureException"
    assert "already used" in error.message


def test_replay_cache_forgets_expired_signatures(invocation: RawRequest) -> None:
    signed_at = calendar.timegm(
        time.strptime(invocation.header("X-Amz-Date").decode(), "%Y%m%dT%H%M%SZ")
    )
    now = [signed_at]
    strict = verifier(reject_replays=True, clock=lambda: now[0], replay_cache_size=2)
    verify(invocation, strict)
    now[0] = signed_at + 301
    # Past the window the date check refuses it anyway, whatever the cache holds.
    assert "expired" in refused(invocation, strict).message


# ---------------------------------------------------------------------------------------------
# Session tokens
# ---------------------------------------------------------------------------------------------


def test_session_token_must_match_the_credentials_token(recorder: RecordingServer) -> None:
    with_token = client("sagemaker-runtime", recorder.url, aws_session_token="TOKEN-1")
    with_token.invoke_endpoint(EndpointName="e", TargetContainerHostname="c", Body=b"x")
    request = recorder.last()
    assert b"x-amz-security-token" in request.header("Authorization")

    assert verify(request, verifier([Credential(KEY, SECRET, PRINCIPAL, session_token="TOKEN-1")]))
    for configured in ("TOKEN-2", None):
        v = verifier([Credential(KEY, SECRET, PRINCIPAL, session_token=configured)])
        error = refused(request, v)
        assert error.code == "UnrecognizedClientException"
        assert "TOKEN" not in error.message


def test_credential_with_a_token_refuses_requests_without_one(invocation: RawRequest) -> None:
    v = verifier([Credential(KEY, SECRET, PRINCIPAL, session_token="TOKEN-1")])
    assert refused(invocation, v).code == "UnrecognizedClientException"


def test_session_token_must_be_signed(recorder: RecordingServer) -> None:
    with_token = client("sagemaker-runtime", recorder.url, aws_session_token="TOKEN-1")
    with_token.invoke_endpoint(EndpointName="e", TargetContainerHostname="c", Body=b"x")
    unsigned = recorder.last().with_authorization(
        lambda auth: auth.replace(";x-amz-security-token", "")
    )
    v = verifier([Credential(KEY, SECRET, PRINCIPAL, session_token="TOKEN-1")])
    error = refused(unsigned, v)
    assert error.code == "IncompleteSignatureException"
    assert "x-amz-security-token" in error.message


# ---------------------------------------------------------------------------------------------
# Control plane and path encoding
# ---------------------------------------------------------------------------------------------


def test_control_plane_request_is_verified_and_its_target_must_be_signed(
    recorder: RecordingServer,
) -> None:
    client("sagemaker", recorder.url).list_endpoints()
    request = recorder.last()
    assert request.header("X-Amz-Target") == b"SageMaker.ListEndpoints"
    assert verify(request).access_key_id == KEY
    unsigned = request.with_authorization(lambda auth: auth.replace(";x-amz-target", ""))
    assert "x-amz-target" in refused(unsigned).message


@pytest.mark.parametrize(
    "name", ["plain-name", "with space", "slash/inside", "ünïcode", "a%41", "..", "dots..x"]
)
def test_botocore_path_encoding_is_matched(
    runtime: Any, recorder: RecordingServer, name: str
) -> None:
    """botocore encodes the endpoint name into the path, then encodes the path once more for
    the canonical request; the verifier does the second step from the raw path."""
    runtime.invoke_endpoint(EndpointName=name, Body=b"x")
    request = recorder.last()
    assert verify(request).access_key_id == KEY


def test_canonical_uri_and_query() -> None:
    assert (
        canonical_uri(b"/endpoints/my-endpoint/invocations")
        == b"/endpoints/my-endpoint/invocations"
    )
    assert canonical_uri(b"/endpoints/a%2Fb/invocations") == b"/endpoints/a%252Fb/invocations"
    assert canonical_uri(b"//a/./b/../c//") == b"/a/c/"
    assert canonical_uri(b"") == b"/"
    assert canonical_query(b"b=2&a=1&a=0&c") == b"a=0&a=1&b=2&c="
    assert canonical_query(b"k=a%2fb+c") == b"k=a%2Fb%2Bc"


def from_botocore(request: AWSRequest) -> RawRequest:
    """What a botocore-signed AWSRequest looks like on the wire (urllib3 adds Host)."""
    parts = urlsplit(request.url)
    headers = [(b"Host", parts.netloc.encode())]
    headers += [(name.encode(), str(value).encode()) for name, value in request.headers.items()]
    body = request.body or b""
    body = body.encode() if isinstance(body, str) else body
    return RawRequest(
        request.method.encode(), parts.path.encode(), parts.query.encode(), headers, body
    )


def test_botocore_signed_request_with_query_is_verified() -> None:
    request = AWSRequest(
        method="GET",
        url="http://router.local:8080/endpoints/e?b=x%20y&a=%E1%88%B4&a=0&empty=",
        headers={"X-Amzn-SageMaker-Target-Container-Hostname": "c"},
    )
    SigV4Auth(Credentials(KEY, SECRET), "sagemaker", REGION).add_auth(request)
    assert verify(from_botocore(request)).access_key_id == KEY


# ---------------------------------------------------------------------------------------------
# AWS SigV4 test suite (vendored from botocore's sdist: tests/data/aws4_testsuite, Apache-2.0)
# ---------------------------------------------------------------------------------------------

SUITE = Path(__file__).parent.parent / "data" / "aws4_testsuite"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_TIME = calendar.timegm((2015, 8, 30, 12, 36, 0))
SUITE_CASES = sorted(str(p.parent.relative_to(SUITE)) for p in SUITE.rglob("*.req"))


def parse_suite_request(raw: bytes) -> RawRequest:
    """The suite's .req files: LF line ends, unencoded paths, obs-folded header lines."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    request_line, *lines = head.split(b"\n")
    method, _, rest = request_line.partition(b" ")
    target = rest.rpartition(b" ")[0]
    path, query = split_request_target(target)
    headers: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # obs-fold: a continuation of the previous value
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return RawRequest(method, path, query, headers, body)


def test_suite_is_vendored_with_its_license() -> None:
    assert len(SUITE_CASES) >= 30
    assert "Apache License" in (SUITE / "LICENSE").read_text()
    assert "Amazon.com" in (SUITE / "NOTICE").read_text()


@pytest.mark.parametrize("case", SUITE_CASES)
def test_aws_sigv4_suite(case: str) -> None:
    """Canonical request and string to sign byte for byte, then the signed request (.sreq)
    verifies with the expected Authorization (.authz). The suite's
    get-vanilla-with-session-token.sreq carries a stale signature while its .authz is right,
    so the Authorization header is taken from .authz."""
    stem = SUITE / case / Path(case).name
    sent = parse_suite_request(stem.with_suffix(".sreq").read_bytes())
    request = sent.with_header("Authorization", None)
    expected_creq = stem.with_suffix(".creq").read_bytes().replace(b"\r\n", b"\n")
    expected_sts = stem.with_suffix(".sts").read_bytes().replace(b"\r\n", b"\n")
    authorization = stem.with_suffix(".authz").read_bytes().strip()
    fields = dict(
        item.strip().split(b"=", 1) for item in authorization.split(b" ", 1)[1].split(b",")
    )
    signed = fields[b"SignedHeaders"].decode().split(";")

    creq = canonical_request(
        request.method,
        request.path,
        request.query,
        request.headers,
        signed,
        hashlib.sha256(request.body).hexdigest(),
    )
    assert creq == expected_creq
    scope = fields[b"Credential"].split(b"/", 1)[1]
    assert string_to_sign(b"20150830T123600Z", scope, creq) == expected_sts

    token = [v.decode() for n, v in request.headers if n.lower() == b"x-amz-security-token"]
    credential = Credential(
        "AKIDEXAMPLE", SUITE_SECRET, "suite", session_token=token[0] if token else None
    )
    v = SigV4Verifier([credential], "us-east-1", "service", clock=lambda: SUITE_TIME)
    signed_request = request.with_header("Authorization", authorization)
    if case.endswith("post-sts-header-after"):
        # The token was added after signing; this router requires it to be signed.
        error = refused(signed_request, v)
        assert error.code == "IncompleteSignatureException"
        assert "x-amz-security-token" in error.message
    else:
        assert verify(signed_request, v) is credential


# ---------------------------------------------------------------------------------------------
# Wire form: what boto3 makes of the answers
# ---------------------------------------------------------------------------------------------


def guarded_responder(guard: Guard) -> Responder:
    """A minimal data plane: authenticate, authorize the invocation, answer 200 or the error."""

    def respond(request: RawRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            credential = guard.authenticate(
                request.method, request.path, request.query, request.headers, request.body
            )
            endpoint = request.path.split(b"/")[2].decode()
            target = next(
                (
                    v.decode()
                    for n, v in request.headers
                    if n.lower() == TARGET_CONTAINER_HEADER.encode()
                ),
                None,
            )
            guard.authorize_invoke(credential, endpoint, target)
        except AuthError as exc:
            wire = wire_error(exc)
            return wire.status, list(wire.header_pairs()), wire.body()
        return 200, [("Content-Type", "application/json")], b'{"ok":true}'

    return respond


SEED_DENY_SPECIAL = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Allow",
            "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/endpoint_name",
            "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["*"]}},
        },
        {
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Deny",
            "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/endpoint_name",
            "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["special*"]}},
        },
    ],
}


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[RecordingServer]:
    config = AuthConfig(
        mode="sigv4",
        region=REGION,
        account_id=ACCOUNT,
        credentials=(
            Credential(KEY, SECRET, PRINCIPAL, (PolicyDocument.parse(SEED_DENY_SPECIAL),)),
        ),
    )
    guard = Guard.from_config(config)
    assert guard is not None
    server = RecordingServer(guarded_responder(guard))
    yield server
    server.close()


def test_boto3_parses_every_refusal(guarded_server: RecordingServer) -> None:
    good = client("sagemaker-runtime", guarded_server.url)
    reply = good.invoke_endpoint(
        EndpointName="endpoint_name", TargetContainerHostname="common1", Body=b"x"
    )
    assert json.loads(reply["Body"].read()) == {"ok": True}

    cases = [
        (
            client("sagemaker-runtime", guarded_server.url, aws_secret_access_key="wrong"),
            "InvalidSignatureException",
        ),
        (
            client("sagemaker-runtime", guarded_server.url, aws_access_key_id="AKIDNOBODY"),
            "UnrecognizedClientException",
        ),
        (
            client("sagemaker-runtime", guarded_server.url, aws_session_token="unexpected"),
            "UnrecognizedClientException",
        ),
    ]
    for runtime_client, code in cases:
        with pytest.raises(ClientError) as info:
            runtime_client.invoke_endpoint(
                EndpointName="endpoint_name", TargetContainerHostname="common1", Body=b"x"
            )
        response = info.value.response
        assert response["Error"]["Code"] == code
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert response["ResponseMetadata"]["RetryAttempts"] == 0
        assert SECRET not in response["Error"]["Message"]


def test_boto3_sees_access_denied_without_learning_whether_the_container_exists(
    guarded_server: RecordingServer,
) -> None:
    runtime_client = client("sagemaker-runtime", guarded_server.url)
    messages = set()
    for target in ("special1", "special-does-not-exist"):
        with pytest.raises(ClientError) as info:
            runtime_client.invoke_endpoint(
                EndpointName="endpoint_name", TargetContainerHostname=target, Body=b"x"
            )
        response = info.value.response
        assert response["Error"]["Code"] == "AccessDeniedException"
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
        messages.add(response["Error"]["Message"])
    assert messages == {
        f"User: {PRINCIPAL} is not authorized to perform: sagemaker:InvokeEndpoint on resource: "
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/endpoint_name with an explicit deny in "
        "an identity-based policy"
    }


def test_unsigned_request_gets_missing_token_from_a_raw_socket(
    guarded_server: RecordingServer,
) -> None:
    port = int(guarded_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /endpoints/e/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"x-amzn-ErrorType: MissingAuthenticationTokenException:" in answer
    assert answer.endswith(
        b'{"__type":"MissingAuthenticationTokenException","message":"Missing Authentication Token"}'
    )


# ---------------------------------------------------------------------------------------------
# auth: config section
# ---------------------------------------------------------------------------------------------

POLICY = {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}


def test_auth_config_reads_secrets_from_inline_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "bob.key").write_text("bob-secret\n")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.json").write_text(json.dumps(POLICY))
    config = AuthConfig.from_mapping(
        {
            "mode": "sigv4",
            "audit": True,
            "credentials": [
                {
                    "access_key_id": "A1",
                    "secret_access_key": "inline",
                    "principal": "alice",
                    "policies": [POLICY],
                },
                {
                    "access_key_id": "A2",
                    "secret_access_key_env": "MY_SECRET",
                    "policies": [{"file": "policies/p.json"}],
                },
                {
                    "access_key_id": "A3",
                    "secret_access_key_file": "bob.key",
                    "session_token_env": "MY_TOKEN",
                },
            ],
        },
        tmp_path,
        default_region="eu-west-1",
        default_account_id="123456789012",
        environ={"MY_SECRET": "from-env", "MY_TOKEN": "tok"},
    )
    assert config.enabled and config.audit and config.region == "eu-west-1"
    first, second, third = config.credentials
    assert (first.secret_access_key, first.principal) == ("inline", "alice")
    assert (second.secret_access_key, second.principal) == (
        "from-env",
        "arn:aws:iam::123456789012:user/A2",
    )
    assert second.policies[0].name.endswith("(policies/p.json)")
    assert (third.secret_access_key, third.session_token, third.policies) == (
        "bob-secret",
        "tok",
        (),
    )
    assert "inline" not in repr(first) and "bob-secret" not in repr(config)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"mode": "sigV4"}, "config.auth.mode: must be 'sigv4' or 'none'"),
        ({"mode": "sigv4"}.copy() | {"credentials": []}, "needs at least one credential"),
        ({"mode": "none", "credentials": [{}]}, "given while mode is 'none'"),
        (
            {"mode": "sigv4", "colour": 1},
            "config.auth.colour: unknown setting 'colour'; valid settings: account_id, audit,",
        ),
        (
            {"mode": "sigv4", "credentials": [{"access_key_id": "A"}]},
            "credentials[0]: needs secret_access_key",
        ),
        (
            {"mode": "sigv4", "credentials": [{"access_key_id": "A/B", "secret_access_key": "s"}]},
            "credentials[0].access_key_id",
        ),
        (
            {
                "mode": "sigv4",
                "credentials": [
                    {"access_key_id": "A", "secret_access_key": "s", "secret_access_key_env": "X"}
                ],
            },
            "give only one of",
        ),
        (
            {
                "mode": "sigv4",
                "credentials": [{"access_key_id": "A", "secret_access_key_env": "UNSET_VAR"}],
            },
            "environment variable UNSET_VAR is not set",
        ),
        (
            {
                "mode": "sigv4",
                "credentials": [{"access_key_id": "A", "secret_access_key_file": "missing.key"}],
            },
            "secret_access_key_file: cannot read",
        ),
        (
            {
                "mode": "sigv4",
                "credentials": [
                    {"access_key_id": "A", "secret_access_key": "s"},
                    {"access_key_id": "A", "secret_access_key": "t"},
                ],
            },
            "credentials[1].access_key_id: 'A' appears twice",
        ),
        (
            {
                "mode": "sigv4",
                "credentials": [
                    {
                        "access_key_id": "A",
                        "secret_access_key": "s",
                        "policies": [{"file": "nope.json"}],
                    }
                ],
            },
            "policies[0].file: cannot read",
        ),
        (
            {
                "mode": "sigv4",
                "credentials": [
                    {
                        "access_key_id": "A",
                        "secret_access_key": "s",
                        "policies": [{"Statement": []}],
                    }
                ],
            },
            "credentials[0].policies[0].Statement",
        ),
        ({"mode": "sigv4", "max_skew_seconds": 0, "credentials": []}, "max_skew_seconds"),
    ],
)
def test_auth_config_errors_name_the_field(
    tmp_path: Path, raw: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        AuthConfig.from_mapping(raw, tmp_path, environ={})
    assert fragment in info.value.message


def test_auth_config_absent_means_off_and_mode_none_warns_off_loopback() -> None:
    absent = AuthConfig.from_mapping(None)
    assert (absent.enabled, absent.explicit) == (False, False)
    explicit = AuthConfig.from_mapping({"mode": "none"})
    assert (explicit.enabled, explicit.explicit) == (False, True)
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.8.9.10"):
        assert explicit.insecure_listener_warning(host) is None
    for host in ("0.0.0.0", "", "10.0.0.5", "::", "router.example"):
        warning = explicit.insecure_listener_warning(host)
        assert warning is not None and "authentication is off" in warning
    assert Guard.from_config(explicit) is None


def test_auth_config_yaml_date_version_and_yaml_policy_files(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "p.yaml").write_text(
        "Version: 2012-10-17\nStatement:\n  - {Effect: Allow, Action: '*', Resource: '*'}\n"
    )
    raw = yaml.safe_load(
        "mode: sigv4\ncredentials:\n  - access_key_id: A\n    secret_access_key: s\n"
        "    policies:\n      - {file: p.yaml}\n"
        "      - {Version: 2012-10-17, Statement: {Effect: Deny, Action: '*', Resource: '*'}}\n"
    )
    config = AuthConfig.from_mapping(raw, tmp_path)
    assert [p.version for p in config.credentials[0].policies] == ["2012-10-17", "2012-10-17"]
