"""Which client headers reach a container, and the checks on the ones the router reads.

Upstream requests are built from an allowlist: anything not named here (Authorization,
X-Amz-*, hop-by-hop headers, cookies, ...) never reaches a container.
"""

from __future__ import annotations

from typing import Final

# Every header the router looks at gets a small integer code; the hot path classifies a name with
# one dict lookup and then switches on the code (all other headers: IGNORED).
IGNORED: Final = 0
HOST: Final = 1
CONTENT_LENGTH: Final = 2
CONTENT_TYPE: Final = 3
ACCEPT: Final = 4
TARGET_CONTAINER: Final = 5
TARGET_VARIANT: Final = 6
TRANSFER_ENCODING: Final = 7
CONNECTION: Final = 8
EXPECT: Final = 9
CUSTOM_ATTRIBUTES: Final = 10
INFERENCE_ID: Final = 11
ENABLE_EXPLANATIONS: Final = 12
TARGET_MODEL: Final = 13
SESSION_ID: Final = 14
TRACEPARENT: Final = 15
TRACESTATE: Final = 16
#: InvokeEndpointWithResponseStream sends the Accept it was given under this name.
STREAM_ACCEPT: Final = 17

#: Headers forwarded to every container, with the spelling the container receives.
FORWARDED: Final[dict[int, bytes]] = {
    CUSTOM_ATTRIBUTES: b"X-Amzn-SageMaker-Custom-Attributes",
    INFERENCE_ID: b"X-Amzn-SageMaker-Inference-Id",
    ENABLE_EXPLANATIONS: b"X-Amzn-SageMaker-Enable-Explanations",
    TARGET_MODEL: b"X-Amzn-SageMaker-Target-Model",
    SESSION_ID: b"X-Amzn-SageMaker-Session-Id",
}

#: Code of every relevant header, by lower-cased name.
CODES: Final[dict[bytes, int]] = {
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"content-type": CONTENT_TYPE,
    b"accept": ACCEPT,
    b"x-amzn-sagemaker-target-container-hostname": TARGET_CONTAINER,
    b"x-amzn-sagemaker-target-variant": TARGET_VARIANT,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"expect": EXPECT,
    b"traceparent": TRACEPARENT,
    b"tracestate": TRACESTATE,
    b"x-amzn-sagemaker-accept": STREAM_ACCEPT,
    **{name.lower(): code for code, name in FORWARDED.items()},
}

# The names as clients usually spell them (boto3, the SDKs, curl, wrk), relevant or not, so that
# most headers are classified without lower-casing them first; any other spelling falls back to
# CODES. Each entry is checked against CODES below.
_USUAL_SPELLINGS: Final = (
    b"Host", b"Content-Length", b"Content-Type", b"Accept", b"Transfer-Encoding",
    b"Connection", b"Expect", b"X-Amzn-SageMaker-Target-Container-Hostname",
    b"X-Amzn-SageMaker-Target-Variant", *FORWARDED.values(), b"X-Amzn-SageMaker-Accept",
    b"User-Agent",
    b"Accept-Encoding", b"Authorization", b"X-Amz-Date", b"X-Amz-Security-Token",
    b"X-Amz-Content-SHA256", b"amz-sdk-invocation-id", b"amz-sdk-request", b"Keep-Alive",
    b"traceparent", b"tracestate",
)  # fmt: skip
_BY_SPELLING: Final[dict[bytes, int]] = {
    **CODES,
    **{name: CODES.get(name.lower(), IGNORED) for name in _USUAL_SPELLINGS},
}

# Headers that must appear at most once (a second copy makes the request ambiguous), as a bit
# mask over codes. Not the trace context: W3C Trace Context says a repeated traceparent makes
# it invalid (the router starts a new trace, it does not refuse the request) and tracestate is
# a list whose copies are joined.
_SINGLETON_MASK: Final = sum(
    1 << code
    for code in set(CODES.values())
    if code not in (CONNECTION, EXPECT, TRACEPARENT, TRACESTATE)
)


# The spellings above by name length, so that a usual spelling is recognised by a length index
# and a memcmp or two (a dict lookup would hash the new bytes object every parser callback
# creates); lengths no relevant name has are known IGNORED without lower-casing.
_LONGEST: Final = max(len(name) for name in _BY_SPELLING)
_SPELLINGS_IN_ORDER: Final = (
    *_USUAL_SPELLINGS,
    *(name for name in CODES if name not in _USUAL_SPELLINGS),
)
_BY_LENGTH: Final[tuple[tuple[tuple[bytes, int], ...], ...]] = tuple(
    tuple((name, _BY_SPELLING[name]) for name in _SPELLINGS_IN_ORDER if len(name) == size)
    for size in range(_LONGEST + 1)
)
_RELEVANT_LENGTH: Final[tuple[bool, ...]] = tuple(
    any(len(name) == size for name in CODES) for size in range(_LONGEST + 1)
)


def classify(name: bytes) -> int:
    """The code of a header name (any letter case); IGNORED for the headers the router drops."""
    size = len(name)
    if size > _LONGEST:
        return IGNORED
    for spelling, code in _BY_LENGTH[size]:
        if name == spelling:
            return code
    if not _RELEVANT_LENGTH[size]:
        return IGNORED
    return CODES.get(name.lower(), IGNORED)


CUSTOM_ATTRIBUTES_MAX: Final = 1024
INFERENCE_ID_MAX: Final = 64
#: W3C Trace Context: a vendor may drop a tracestate longer than 512 characters.
TRACESTATE_MAX: Final = 512

_HEX_DIGITS: Final = frozenset(b"0123456789abcdef")
_ZERO_TRACE_ID: Final = b"0" * 32
_ZERO_PARENT_ID: Final = b"0" * 16


def parse_traceparent(value: bytes) -> bytes | None:
    """The ``version-trace_id-parent_id-flags`` of a W3C ``traceparent`` value rewritten as
    version 00 (the one this router speaks), or None when it is malformed: wrong length or
    separators, upper-case or non-hex digits, version ff, an all-zero trace or parent id.
    A higher version is read as its version-00 prefix, as the spec asks of a 00 vendor."""
    value = value.strip(b" \t")
    size = len(value)
    if size < 55 or value[2] != 45 or value[35] != 45 or value[52] != 45:  # 45: "-"
        return None
    version = value[:2]
    if version == b"00":
        if size != 55:
            return None
    elif version == b"ff" or (size > 55 and value[55] != 45):
        return None
    for byte in value[:55]:
        if byte != 45 and byte not in _HEX_DIGITS:
            return None
    if value[3:35] == _ZERO_TRACE_ID or value[36:52] == _ZERO_PARENT_ID:
        return None
    return b"00" + value[2:55]


class RequestHeaders:
    """The headers of one client request, reduced to what the router uses.

    ``add`` (or ``add_code`` with the name already classified) is called per header and
    ``finish`` once at the end of the head; both return a problem description (answered with
    400) or None. When ``finish`` leaves ``version_sensitive`` set, the caller also asks
    :meth:`check_version` (rare: a chunked request or one without Host).
    """

    __slots__ = (
        "_connection_tokens",
        "_forwarded",
        "_seen_mask",
        "_traceparents",
        "_tracestate",
        "accept",
        "accept_block",
        "chunked",
        "content_length",
        "content_type",
        "expect_continue",
        "forward_block",
        "stream_accept",
        "target_container",
        "target_variant",
        "trace_block",
        "version_sensitive",
    )

    def __init__(self) -> None:
        self._seen_mask = 0  # bit 1 << code of every singleton header seen
        self._forwarded: list[tuple[int, bytes]] | None = None
        self._connection_tokens: list[bytes] | None = None
        self.content_type: bytes | None = None
        self.accept: bytes | None = None
        #: X-Amzn-SageMaker-Accept (the Accept of a response-stream request).
        self.stream_accept: bytes | None = None
        self.content_length: int | None = None
        self.target_container: str | None = None
        self.target_variant: str | None = None
        self.expect_continue = False
        self.chunked = False
        self.version_sensitive = False
        self.forward_block = b""
        self.accept_block = b""
        self._traceparents = 0
        self._tracestate: bytes | None = None
        #: The client's trace context as forwarded (``traceparent:`` and ``tracestate:``
        #: lines), b"" when it sent none or a malformed one: the proxy then starts a trace.
        self.trace_block = b""

    def add(self, name: bytes, value: bytes) -> str | None:
        code = classify(name)
        if code == IGNORED:
            return None
        return self.add_code(code, name, value)

    def add_code(self, code: int, name: bytes, value: bytes) -> str | None:
        bit = 1 << code
        if bit & _SINGLETON_MASK:
            if self._seen_mask & bit:
                return f"The header {name.decode('latin-1')} appears more than once."
            self._seen_mask |= bit
        if code == CONTENT_TYPE:
            self.content_type = value
        elif code == CONTENT_LENGTH:
            # llhttp has validated the digits already; keep the number for the early 413.
            self.content_length = int(value)
        elif code == TARGET_CONTAINER:
            self.target_container = value.decode("latin-1")
        elif code == HOST:
            pass  # only its presence matters (check_version)
        elif code == ACCEPT:
            self.accept = value
        elif code == STREAM_ACCEPT:
            self.stream_accept = value
        elif CUSTOM_ATTRIBUTES <= code <= SESSION_ID:
            if self._forwarded is None:
                self._forwarded = []
            self._forwarded.append((code, value))
        elif code == TARGET_VARIANT:
            self.target_variant = value.decode("latin-1")
        elif code == TRACEPARENT:
            self._traceparents += 1
            parsed = parse_traceparent(value) if self._traceparents == 1 else None
            self.trace_block = b"traceparent: " + parsed + b"\r\n" if parsed is not None else b""
        elif code == TRACESTATE:
            # A list header: copies are one list, joined in order (RFC 9110 §5.3).
            state = value.strip(b" \t")
            if state:
                previous = self._tracestate
                self._tracestate = state if previous is None else previous + b"," + state
        elif code == CONNECTION:
            if self._connection_tokens is None:
                self._connection_tokens = []
            self._connection_tokens.extend(
                token.strip().lower() for token in value.split(b",") if token.strip()
            )
        elif code == EXPECT:
            if value.strip().lower() != b"100-continue":
                return f"Unsupported Expect header value {value.decode('latin-1')!r}."
            self.expect_continue = True
        elif code == TRANSFER_ENCODING:
            # llhttp frames "gzip, chunked" as chunked and hands over the still-gzipped bytes;
            # a proxy must not forward a coding it did not undo (RFC 9112 §6.1).
            if value.strip(b" \t").lower() != b"chunked":
                return (
                    f"Unsupported Transfer-Encoding {value.decode('latin-1')!r}: only chunked "
                    "is accepted."
                )
            self.chunked = True
        return None

    def finish(self) -> str | None:
        forwarded = self._forwarded
        if self._connection_tokens is not None:
            # Headers listed in Connection are hop-by-hop for this request: never forward them.
            hop = {CODES.get(token, IGNORED) for token in self._connection_tokens}
            if forwarded is not None:
                forwarded = [(code, v) for code, v in forwarded if code not in hop]
            if ACCEPT in hop:
                self.accept = None
            if CONTENT_TYPE in hop:
                self.content_type = None
            if TRACEPARENT in hop or TRACESTATE in hop:
                self._traceparents = 0
                self.trace_block = b""
            if b"upgrade" in self._connection_tokens and (self.chunked or self.content_length):
                # llhttp ends an upgrade request at its head and calls the body "the other
                # protocol": it cannot be forwarded whole, so refuse it (a bodiless one is
                # served as plain HTTP, the Upgrade ignored, then the connection closes).
                return "A request with a body cannot ask for a protocol upgrade."
        if forwarded:
            parts = []
            for code, value in forwarded:
                if code == CUSTOM_ATTRIBUTES and (
                    len(value) > CUSTOM_ATTRIBUTES_MAX or not _printable_ascii(value)
                ):
                    return (
                        "CustomAttributes must be at most 1024 printable ASCII characters "
                        f"(got {len(value)} bytes)."
                    )
                if code == INFERENCE_ID and not 1 <= len(value) <= INFERENCE_ID_MAX:
                    return "InferenceId must be 1 to 64 characters long."
                parts.append(FORWARDED[code] + b": " + value + b"\r\n")
            self.forward_block = b"".join(parts)
        if self.accept is not None:
            self.accept_block = b"Accept: " + self.accept + b"\r\n"
        if self._traceparents:
            self._finish_trace_context()
        self.version_sensitive = self.chunked or not self._seen_mask & (1 << HOST)
        return None

    def _finish_trace_context(self) -> None:
        if self._traceparents > 1:
            self.trace_block = b""  # two traceparents: neither is trusted
        state = self._tracestate
        # tracestate belongs to the traceparent it came with: forwarded only beside it, and
        # dropped when too long or not printable ASCII (it would corrupt the upstream head).
        if (
            self.trace_block
            and state is not None
            and len(state) <= TRACESTATE_MAX
            and _printable_ascii(state)
        ):
            self.trace_block += b"tracestate: " + state + b"\r\n"

    def check_version(self, http_version: str) -> str | None:
        """The rules that depend on the request's HTTP version (``"1.1"``, ``"1.0"``, ...)."""
        if http_version != "1.1":
            if self.chunked:
                # RFC 9112 §6.1: treat as faulty framing; a smuggling vector behind HTTP/1.0 hops.
                return f"An HTTP/{http_version} request must not use Transfer-Encoding."
            return None
        if not self._seen_mask & (1 << HOST):
            return "An HTTP/1.1 request must carry a Host header (RFC 9112 §3.2)."
        return None


def _printable_ascii(value: bytes) -> bool:
    # ASCII 0x20..0x7E; str.isprintable is False for the control characters and DEL.
    return value.isascii() and value.decode("ascii").isprintable()
