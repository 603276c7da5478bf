"""The pieces of a SigV4 canonical request and signature, as botocore builds them (checked
against the AWS SigV4 test suite): the path is the raw path with dot segments and empty segments
removed, percent-encoded once more (so a client's ``%2F`` becomes ``%252F``: non-S3 services
encode twice); the query is decoded and re-encoded per name and value, sorted; header values are
trimmed with inner whitespace runs collapsed, duplicates joined with ``,`` in arrival order.

:mod:`~mce_router.security.sigv4`'s verifier is built on them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote, unquote_to_bytes

ALGORITHM: Final = "AWS4-HMAC-SHA256"

Headers = Sequence[tuple[bytes, bytes]]

# Paths made only of unreserved characters in non-empty, non-dot segments canonicalize to
# themselves (every SageMaker invocation path does); anything else takes the general route.
_PLAIN_PATH: Final = re.compile(rb"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?|/")


def split_request_target(target: bytes) -> tuple[bytes, bytes]:
    """``/path?query`` as sent on the request line -> (raw path, raw query)."""
    path, _, query = target.partition(b"?")
    return path, query


def _remove_dot_segments(path: bytes) -> bytes:
    # RFC 3986 5.2.4, plus dropping empty segments, exactly as botocore normalizes before signing.
    output: list[bytes] = []
    for segment in path.split(b"/"):
        if not segment or segment == b".":
            continue
        if segment == b"..":
            if output:
                output.pop()
        else:
            output.append(segment)
    first = b"/" if path.startswith(b"/") else b""
    last = b"/" if path.endswith(b"/") and output else b""
    return first + b"/".join(output) + last


def canonical_uri(raw_path: bytes) -> bytes:
    """The canonical URI of a raw request path: normalized, then percent-encoded once more."""
    if _PLAIN_PATH.fullmatch(raw_path):
        return raw_path
    normalized = _remove_dot_segments(raw_path) if raw_path else b"/"
    return quote(normalized or b"/", safe="/~").encode("ascii")


def canonical_query(raw_query: bytes) -> bytes:
    """Each name and value percent-decoded and re-encoded (RFC 3986 unreserved kept), sorted by
    name then value; ``name`` without ``=`` becomes ``name=``."""
    if not raw_query:
        return b""
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        pairs.append(
            (
                quote(unquote_to_bytes(name), safe="-_.~"),
                quote(unquote_to_bytes(value), safe="-_.~"),
            )
        )
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs).encode("ascii")


def headers_by_name(headers: Headers) -> dict[bytes, list[bytes]]:
    # One comprehension (run in C) for the usual head without repeated names; a repeated name
    # makes the result smaller than the list, and the loop below keeps every value in order.
    by_name = {name.lower(): [value] for name, value in headers}
    if len(by_name) == len(headers):
        return by_name
    by_name = {}
    for name, value in headers:
        lower = name.lower()
        values = by_name.get(lower)
        if values is None:
            by_name[lower] = [value]
        else:
            values.append(value)
    return by_name


def canonical_header_value(values: list[bytes]) -> bytes:
    # Trim, collapse inner whitespace runs to one space; duplicates joined in arrival order.
    if len(values) == 1:
        return b" ".join(values[0].split())
    return b",".join(b" ".join(value.split()) for value in values)


def canonical_request(
    method: bytes | str,
    raw_path: bytes,
    raw_query: bytes,
    headers: Headers,
    signed_headers: Sequence[str],
    payload_sha256_hex: str,
) -> bytes:
    """The canonical request over ``signed_headers`` (lower-case names, in the given order).
    Exposed for tests and debugging; :class:`SigV4Verifier` builds the same bytes."""
    by_name = headers_by_name(headers)
    lines = [
        name.encode("ascii") + b":" + canonical_header_value(by_name.get(name.encode("ascii"), []))
        for name in signed_headers
    ]
    return b"\n".join(
        [
            method_bytes(method),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            b"\n".join(lines) + b"\n",
            ";".join(signed_headers).encode("ascii"),
            payload_sha256_hex.encode("ascii"),
        ]
    )


def string_to_sign(amz_date_value: bytes, scope: bytes, canonical: bytes) -> bytes:
    return b"\n".join(
        [ALGORITHM.encode(), amz_date_value, scope, hashlib.sha256(canonical).hexdigest().encode()]
    )


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    key = hmac.digest(f"AWS4{secret_access_key}".encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def method_bytes(method: bytes | str) -> bytes:
    return (method.encode("ascii") if isinstance(method, str) else method).upper()
