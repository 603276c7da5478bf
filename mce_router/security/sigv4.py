"""Server-side AWS Signature Version 4 verification, independent of any HTTP framework.

The verifier takes a request as it arrived (method, raw path, raw query, headers in their
original case with duplicates kept, body) and returns the :class:`Credential` that signed it, or
raises :class:`~mce_router.security.errors.AuthenticationError` with the code boto3 expects.

What is checked, in order (headers first, so a request can be refused before its body is read):

1. an ``Authorization`` header (``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
   Signature=...``) is present exactly once; presigned query-string authentication is not
   supported (a presigned request is told so rather than "missing token");
2. exactly one ``X-Amz-Date`` in ISO-8601 basic format (``Date`` is not accepted instead);
3. the credential scope: date equal to X-Amz-Date's day, this router's region, the service
   (``sagemaker``), ``aws4_request``;
4. the date within ``max_skew_seconds`` (300) of the clock, in both directions;
5. ``SignedHeaders`` includes ``host`` and ``x-amz-date``, and every header in
   ``must_sign_if_present`` that the request carries (``x-amz-security-token``,
   ``x-amz-target``, ``x-amzn-sagemaker-target-container-hostname``): an unsigned target header
   could be changed by anyone who sees the request; every signed header is present;
6. the access key is known, and the session token matches the credential's (a credential
   without one refuses requests that carry one);
7. the signature, recomputed over the canonical request with the body hashed here (the
   ``X-Amz-Content-SHA256`` header is never trusted: ``UNSIGNED-PAYLOAD`` fails), compared in
   constant time;
8. optionally (``reject_replays``), that the same signature was not accepted before while its
   date is still inside the window. Off by default: SigV4 has no nonce, boto3 does not sign its
   per-call ``amz-sdk-invocation-id``, so two identical calls within one second carry identical
   signatures and would be refused; AWS itself does not reject them either.

The canonical request follows botocore (:mod:`~mce_router.security.canonical`).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from .canonical import (
    ALGORITHM,
    Headers,
    canonical_header_value,
    canonical_query,
    canonical_uri,
    headers_by_name,
    method_bytes,
    signing_key,
    split_request_target,
)
from .errors import AuthenticationError, AuthErrorCode
from .policy import PolicyDocument, PolicySet

TARGET_CONTAINER_HEADER: Final = "x-amzn-sagemaker-target-container-hostname"
#: Headers that change what a request means or who may make it: when present they must be
#: signed. (botocore signs every header it sends except a fixed few such as User-Agent.)
DEFAULT_MUST_SIGN_IF_PRESENT: Final = (
    "x-amz-security-token",
    "x-amz-target",
    TARGET_CONTAINER_HEADER,
)
DEFAULT_MAX_SKEW_SECONDS: Final = 300.0

Chunk = bytes | bytearray | memoryview
Body = Chunk | Iterable[Chunk]

_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation "
    "for details."
)
_INVALID_TOKEN: Final = "The security token included in the request is invalid."
_AMZ_DATE: Final = re.compile(rb"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_ALGORITHM_BYTES: Final = ALGORITHM.encode()
_PRESIGNED_MARKERS: Final = (b"X-Amz-Signature=", b"X-Amz-Credential=", b"X-Amz-Algorithm=")
_SIGNATURE_FIELD: Final = b"Signature="
_LOWER_HEX: Final = b"0123456789abcdef"
#: Bounds of the per-verifier caches of what repeats across a client's requests.
_KNOWN_HEADS_LIMIT: Final = 256
_CANONICAL_URIS_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class Credential:
    """An access key the router accepts, who it stands for, and the policies that apply."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    #: Who this is in messages and audit lines, e.g. ``arn:aws:iam::123456789012:user/alice``.
    principal: str
    policies: tuple[PolicyDocument, ...] = ()
    #: When set, requests must carry this ``X-Amz-Security-Token`` (signed).
    session_token: str | None = field(default=None, repr=False)
    #: ``policies`` compiled for evaluation (built once, here).
    policy_set: PolicySet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        object.__setattr__(self, "policy_set", PolicySet(self.policies))


def _fail(code: AuthErrorCode, message: str) -> AuthenticationError:
    return AuthenticationError(code, message)


def _incomplete(message: str) -> AuthenticationError:
    return AuthenticationError("IncompleteSignatureException", message)


def _shown(value: bytes | str, limit: int = 64) -> str:
    """A client-supplied value made safe to echo in a message: printable ASCII, truncated."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def amz_date(epoch_seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_seconds))


# ---------------------------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------------------------


# The Authorization header every SDK sends; anything else takes the general (slower) parser,
# which also produces the precise error messages.
_AUTHORIZATION_FAST: Final = re.compile(
    rb"\s*AWS4-HMAC-SHA256 Credential=([^/,\s]+)/([^/,\s]*)/([^/,\s]*)/([^/,\s]*)/([^/,\s]*),"
    rb" ?SignedHeaders=([a-z0-9;._-]+), ?Signature=([0-9a-f]{64})\s*"
)


class _SignedHeaderList:
    """One client's SignedHeaders value, split and encoded once (clients repeat theirs)."""

    __slots__ = ("name_set", "names", "prefixes", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.names = tuple(raw.decode("latin-1").split(";"))
        for name in self.names:
            if not name or name != name.lower() or not name.isascii():
                raise _incomplete(
                    "SignedHeaders must list lower-case header names separated by ';', got "
                    f"{_shown(raw, 200)!r}."
                )
        #: (header name as bytes, canonical line prefix ``name:``) per signed header.
        self.prefixes = tuple((n.encode("ascii"), n.encode("ascii") + b":") for n in self.names)
        self.name_set = frozenset(name for name, _ in self.prefixes)


class _CredentialScope:
    """The Credential field of an Authorization header: access key and scope, decoded once."""

    __slots__ = ("access_key_id", "region", "scope", "scope_date", "service", "terminator")

    def __init__(self, access_key_id: str, scope_parts: Sequence[bytes]) -> None:
        self.access_key_id = access_key_id
        self.scope = b"/".join(scope_parts)  # date/region/service/aws4_request
        self.scope_date = scope_parts[0].decode("latin-1")
        self.region = scope_parts[1].decode("latin-1")
        self.service = scope_parts[2].decode("latin-1")
        self.terminator = scope_parts[3].decode("latin-1")


class _ParsedAuthorization:
    __slots__ = ("credential", "signature", "signed")

    def __init__(
        self, credential: _CredentialScope, signed: _SignedHeaderList, signature: bytes
    ) -> None:
        self.credential = credential
        self.signed = signed
        self.signature = signature


class PendingSignature:
    """A request whose headers passed every check; feed the body with :meth:`update` as it
    arrives (or all at once), then :meth:`finish` verifies the signature."""

    __slots__ = (
        "_canonical_head",
        "_expires_at",
        "_hasher",
        "_key",
        "_scope_line",
        "_signature",
        "_verifier",
        "credential",
    )

    def __init__(
        self,
        verifier: SigV4Verifier,
        credential: Credential,
        canonical_head: bytes,
        scope_line: bytes,
        key: bytes,
        signature: bytes,
        expires_at: float,
    ) -> None:
        self._verifier = verifier
        self.credential = credential
        self._canonical_head = canonical_head
        self._scope_line = scope_line
        self._key = key
        self._signature = signature
        self._expires_at = expires_at
        self._hasher = hashlib.sha256()

    def update(self, chunk: Chunk) -> None:
        self._hasher.update(chunk)

    def finish(self) -> Credential:
        canonical = self._canonical_head + self._hasher.hexdigest().encode("ascii")
        to_sign = self._scope_line + hashlib.sha256(canonical).hexdigest().encode("ascii")
        # hmac.digest is the one-shot C path, several times faster than hmac.new(...).
        expected = hmac.digest(self._key, to_sign, "sha256").hex().encode("ascii")
        if not hmac.compare_digest(expected, self._signature):
            raise _fail("InvalidSignatureException", _mismatch_message(canonical, to_sign))
        if self._verifier.reject_replays:
            # Checked again here: another request with this signature may have finished
            # between this one's begin() and now.
            self._verifier._check_replay(self._signature)
            self._verifier._remember_signature(self._signature, self._expires_at)
        return self.credential


def _mismatch_message(canonical: bytes, to_sign: bytes) -> str:
    # AWS's JSON services echo both strings so a client can diff them with its own; they are
    # computed from the request alone. The session token is redacted so it stays out of logs.
    shown = re.sub(rb"(?m)^(x-amz-security-token:).*$", rb"\1<redacted>", canonical)
    return (
        f"{_MISMATCH}\n\nThe Canonical String for this request should have been\n"
        f"'{shown.decode('latin-1')}'\n\nThe String-to-Sign should have been\n"
        f"'{to_sign.decode('latin-1')}'\n"
    )


class SigV4Verifier:
    """Verifies SigV4 ``Authorization``-header requests against a fixed set of credentials.

    One instance serves one region and service. It keeps derived signing keys per (access key,
    day) and, if ``reject_replays``, the signatures accepted within the skew window (at most
    ``replay_cache_size``; the oldest are forgotten first)."""

    def __init__(
        self,
        credentials: Mapping[str, Credential] | Iterable[Credential],
        region: str,
        service: str = "sagemaker",
        *,
        max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS,
        clock: Callable[[], float] = time.time,
        reject_replays: bool = False,
        replay_cache_size: int = 100_000,
        must_sign_if_present: Iterable[str] = DEFAULT_MUST_SIGN_IF_PRESENT,
    ) -> None:
        if isinstance(credentials, Mapping):
            by_key = dict(credentials)
        else:
            by_key = {c.access_key_id: c for c in credentials}
        self._credentials: dict[str, Credential] = by_key
        self.region = region
        self.service = service
        self.max_skew_seconds = float(max_skew_seconds)
        self._clock = clock
        self.reject_replays = reject_replays
        self._replay_cache_size = replay_cache_size
        self._must_sign_bytes = tuple(name.lower().encode("ascii") for name in must_sign_if_present)
        self._signing_keys: dict[tuple[str, str], bytes] = {}
        self._seen_signatures: dict[bytes, float] = {}
        self._signed_lists: dict[bytes, _SignedHeaderList] = {}
        self._scopes: dict[bytes, _CredentialScope] = {}
        #: Authorization values up to ``Signature=`` that matched the fast pattern, with what
        #: they decoded to: a client repeats its head for every request of a day.
        self._known_heads: dict[bytes, tuple[_CredentialScope, _SignedHeaderList]] = {}
        self._canonical_uris: dict[bytes, bytes] = {}
        self._last_date: tuple[bytes, float] = (b"", 0.0)

    @property
    def credentials(self) -> Mapping[str, Credential]:
        return self._credentials

    # -- public API ---------------------------------------------------------------------------

    def verify(
        self,
        method: bytes | str,
        raw_path: bytes,
        raw_query: bytes,
        headers: Headers,
        body: Body = b"",
    ) -> Credential:
        """Verify a complete request; ``body`` is the bytes or an iterable of chunks."""
        pending = self.begin(method, raw_path, raw_query, headers)
        if isinstance(body, bytes | bytearray | memoryview):
            pending.update(body)
        else:
            for chunk in body:
                pending.update(chunk)
        return pending.finish()

    def begin(
        self, method: bytes | str, raw_path: bytes, raw_query: bytes, headers: Headers
    ) -> PendingSignature:
        """Every check that needs only the request head; raises before any body is read."""
        if b"?" in raw_path:
            if raw_query:
                raise ValueError("raw_path contains '?' and raw_query is given too")
            raw_path, raw_query = split_request_target(raw_path)
        by_name = headers_by_name(headers)
        auth = self._parse_authorization(by_name, raw_query)
        date_value, request_time = self._request_date(by_name)
        self._check_scope(auth.credential, date_value)
        self._check_skew(date_value, request_time)
        self._check_signed_headers(auth, by_name)
        credential = self._credential(auth.credential.access_key_id, by_name)
        if self.reject_replays:
            self._check_replay(auth.signature)

        # canonical_header_value inlined for the usual single value: a call per header costs
        # more than the whitespace collapsing itself.
        lines = [
            prefix
            + (
                b" ".join(values[0].split())
                if len(values := by_name[name]) == 1
                else canonical_header_value(values)
            )
            for name, prefix in auth.signed.prefixes
        ]
        canonical_head = b"\n".join(
            [
                method_bytes(method),
                self._canonical_uri(raw_path),
                canonical_query(raw_query),
                b"\n".join(lines) + b"\n",
                auth.signed.raw,
                b"",
            ]
        )
        scope_line = b"\n".join([_ALGORITHM_BYTES, date_value, auth.credential.scope, b""])
        return PendingSignature(
            self,
            credential,
            canonical_head,
            scope_line,
            self._signing_key(credential, auth.credential.scope_date),
            auth.signature,
            request_time + self.max_skew_seconds,
        )

    def _canonical_uri(self, raw_path: bytes) -> bytes:
        # A pure function of the path, and an endpoint's clients send a handful of paths.
        uri = self._canonical_uris.get(raw_path)
        if uri is None:
            uri = canonical_uri(raw_path)
            if len(self._canonical_uris) >= _CANONICAL_URIS_LIMIT:
                self._canonical_uris.clear()
            self._canonical_uris[raw_path] = uri
        return uri

    # -- checks ---------------------------------------------------------------------------------

    def _parse_authorization(
        self, by_name: dict[bytes, list[bytes]], raw_query: bytes
    ) -> _ParsedAuthorization:
        values = by_name.get(b"authorization")
        if not values:
            if any(marker in raw_query for marker in _PRESIGNED_MARKERS):
                raise _incomplete(
                    "Presigned URLs (query-string authentication) are not supported by this "
                    "router; sign the request with an Authorization header."
                )
            raise _fail("MissingAuthenticationTokenException", "Missing Authentication Token")
        if len(values) > 1:
            raise _incomplete("The request has more than one Authorization header.")
        raw = values[0]
        # A head seen before (it matched the fast pattern) followed by exactly 64 lower-case
        # hex digits is what the pattern would match again, to the same groups: the last
        # "Signature=" is the head's own, since hex digits cannot contain one.
        cut = raw.rfind(_SIGNATURE_FIELD) + len(_SIGNATURE_FIELD)
        known = self._known_heads.get(raw[:cut])
        if known is not None:
            signature = raw[cut:]
            if len(signature) == 64 and not signature.translate(None, _LOWER_HEX):
                return _ParsedAuthorization(known[0], known[1], signature)
        fast = _AUTHORIZATION_FAST.fullmatch(raw)
        if fast is not None:
            # The credential field changes per key and day only: its decoded parts are kept.
            raw_credential = raw[fast.start(1) : fast.end(5)]
            scope = self._scopes.get(raw_credential)
            if scope is None:
                scope = _CredentialScope(fast[1].decode("latin-1"), fast.group(2, 3, 4, 5))
                if len(self._scopes) >= 256:  # bounded: a handful of keys and days
                    self._scopes.clear()
                self._scopes[raw_credential] = scope
            signed = self._signed_header_list(fast[6])
            if len(self._known_heads) >= _KNOWN_HEADS_LIMIT:
                self._known_heads.clear()
            self._known_heads[raw[: fast.start(7)]] = (scope, signed)
            return _ParsedAuthorization(scope, signed, fast[7])
        header = raw.decode("latin-1").strip()
        algorithm, _, rest = header.partition(" ")
        if algorithm != ALGORITHM:
            raise _incomplete(
                f"Authorization header uses {_shown(algorithm, 32)!r}; this router accepts "
                f"only {ALGORITHM} (Signature Version 4)."
            )
        params: dict[str, str] = {}
        for item in rest.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep:
                continue
            if key in params:
                raise _incomplete(f"Authorization header has '{_shown(key, 32)}' twice.")
            params[key] = value.strip()
        missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not params.get(k)]
        if missing:
            raise _incomplete(
                " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
            )
        scope_parts = params["Credential"].split("/")
        if len(scope_parts) != 5 or not scope_parts[0]:
            raise _incomplete(
                "Authorization header has a malformed Credential; expected "
                "'<access key id>/<YYYYMMDD>/<region>/<service>/aws4_request', got "
                f"{_shown(params['Credential'])!r}."
            )
        return _ParsedAuthorization(
            _CredentialScope(scope_parts[0], [part.encode("latin-1") for part in scope_parts[1:]]),
            self._signed_header_list(params["SignedHeaders"].encode("latin-1")),
            params["Signature"].encode("latin-1"),
        )

    def _signed_header_list(self, raw: bytes) -> _SignedHeaderList:
        signed = self._signed_lists.get(raw)
        if signed is None:
            signed = _SignedHeaderList(raw)
            if len(self._signed_lists) >= 256:  # bounded: clients send a handful of variants
                self._signed_lists.clear()
            self._signed_lists[raw] = signed
        return signed

    def _request_date(self, by_name: dict[bytes, list[bytes]]) -> tuple[bytes, float]:
        values = by_name.get(b"x-amz-date")
        if not values:
            raise _incomplete(
                "Authorization header requires existence of an 'X-Amz-Date' header "
                "(this router does not accept 'Date' instead)."
            )
        if len(values) > 1:
            raise _incomplete("The request has more than one X-Amz-Date header.")
        value = values[0].strip()
        last_value, last_time = self._last_date
        if value == last_value:
            return value, last_time
        match = _AMZ_DATE.fullmatch(value)
        try:
            if match is None:
                raise ValueError(value)
            fields = tuple(int(g) for g in match.groups())
            # timegm does not validate; struct_time round-trips only valid dates and times.
            parsed = calendar.timegm((*fields, 0, 0, 0))
            if time.gmtime(parsed)[:6] != fields:
                raise ValueError(value)
        except ValueError:
            raise _incomplete(
                f"Date must be in ISO-8601 'basic format'. Got {_shown(value)!r}. "
                "Expected e.g. '20150830T123600Z'."
            ) from None
        self._last_date = (value, float(parsed))
        return value, float(parsed)

    def _check_scope(self, auth: _CredentialScope, date_value: bytes) -> None:
        day = date_value[:8].decode("ascii")
        if auth.scope_date != day:
            raise _fail(
                "InvalidSignatureException",
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{_shown(auth.scope_date)}' != '{day}', from 'X-Amz-Date'.",
            )
        if auth.terminator != "aws4_request":
            raise _fail(
                "InvalidSignatureException",
                "Credential should be scoped with a valid terminator: 'aws4_request', not "
                f"'{_shown(auth.terminator)}'.",
            )
        if auth.service != self.service:
            raise _fail(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{self.service}', not "
                f"'{_shown(auth.service)}'.",
            )
        if auth.region != self.region:
            raise _fail(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region: '{self.region}', not "
                f"'{_shown(auth.region)}'.",
            )

    def _check_skew(self, date_value: bytes, request_time: float) -> None:
        now = self._clock()
        if now - self.max_skew_seconds <= request_time <= now + self.max_skew_seconds:
            return
        minutes = f"{self.max_skew_seconds / 60:g} min."
        shown = date_value.decode("ascii")
        if request_time < now - self.max_skew_seconds:
            raise _fail(
                "InvalidSignatureException",
                f"Signature expired: {shown} is now earlier than "
                f"{amz_date(now - self.max_skew_seconds)} ({amz_date(now)} - {minutes})",
            )
        if request_time > now + self.max_skew_seconds:
            raise _fail(
                "InvalidSignatureException",
                f"Signature not yet current: {shown} is still later than "
                f"{amz_date(now + self.max_skew_seconds)} ({amz_date(now)} + {minutes})",
            )

    def _check_signed_headers(
        self, auth: _ParsedAuthorization, by_name: dict[bytes, list[bytes]]
    ) -> None:
        signed = auth.signed.name_set
        for required in (b"host", b"x-amz-date"):
            if required not in signed:
                raise _incomplete(f"SignedHeaders must include '{required.decode()}'.")
        for name in self._must_sign_bytes:
            if name in by_name and name not in signed:
                raise _incomplete(
                    f"The request carries the header '{name.decode()}' but does not sign it; "
                    "it must be listed in SignedHeaders."
                )
        for name, _ in auth.signed.prefixes:
            if name not in by_name:
                raise _incomplete(
                    f"SignedHeaders lists '{name.decode()}', but the request has no such header."
                )

    def _credential(self, access_key_id: str, by_name: dict[bytes, list[bytes]]) -> Credential:
        credential = self._credentials.get(access_key_id)
        if credential is None:
            raise _fail("UnrecognizedClientException", _INVALID_TOKEN)
        tokens = by_name.get(b"x-amz-security-token")
        if credential.session_token is None:
            if tokens is not None:
                raise _fail("UnrecognizedClientException", _INVALID_TOKEN)
        elif (
            tokens is None
            or len(tokens) != 1
            or not hmac.compare_digest(tokens[0].strip(), credential.session_token.encode())
        ):
            raise _fail("UnrecognizedClientException", _INVALID_TOKEN)
        return credential

    def _signing_key(self, credential: Credential, day: str) -> bytes:
        cache_key = (credential.access_key_id, day)
        key = self._signing_keys.get(cache_key)
        if key is None:
            # Scope and skew checks ran first, so only today's and yesterday's/tomorrow's keys
            # are ever derived; the bound only guards against a very long-running process.
            if len(self._signing_keys) >= 4 * len(self._credentials) + 16:
                self._signing_keys.clear()
            key = signing_key(credential.secret_access_key, day, self.region, self.service)
            self._signing_keys[cache_key] = key
        return key

    # -- replay cache ---------------------------------------------------------------------------

    def _check_replay(self, signature: bytes) -> None:
        expires_at = self._seen_signatures.get(signature)
        if expires_at is not None and expires_at >= self._clock():
            raise _fail(
                "InvalidSignatureException",
                "This signature was already used: sign each request anew (replay rejection is on).",
            )

    def _remember_signature(self, signature: bytes, expires_at: float) -> None:
        seen = self._seen_signatures
        now = self._clock()
        # Insertion order is roughly expiry order: drop expired entries from the front, and the
        # oldest ones once the cache is full.
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= now and len(seen) < self._replay_cache_size:
                break
            del seen[oldest]
        seen[signature] = expires_at
