"""Which client headers reach a container, and the checks on the ones the router reads.

Upstream requests are built from an allowlist: anything not named here (Authorization,
X-Amz-*, hop-by-hop headers, cookies, ...) never reaches a container.
"""

from __future__ import annotations

from typing import Final

# Headers forwarded to every container, with the spelling the container receives.
FORWARDED: Final[dict[bytes, bytes]] = {
    b"x-amzn-sagemaker-custom-attributes": b"X-Amzn-SageMaker-Custom-Attributes",
    b"x-amzn-sagemaker-inference-id": b"X-Amzn-SageMaker-Inference-Id",
    b"x-amzn-sagemaker-enable-explanations": b"X-Amzn-SageMaker-Enable-Explanations",
    b"x-amzn-sagemaker-target-model": b"X-Amzn-SageMaker-Target-Model",
    b"x-amzn-sagemaker-session-id": b"X-Amzn-SageMaker-Session-Id",
}

CONTENT_TYPE: Final = b"content-type"
ACCEPT: Final = b"accept"
TARGET_CONTAINER: Final = b"x-amzn-sagemaker-target-container-hostname"
TARGET_VARIANT: Final = b"x-amzn-sagemaker-target-variant"
TRANSFER_ENCODING: Final = b"transfer-encoding"

# Headers that must appear at most once: a second copy makes the request ambiguous.
SINGLETONS: Final = frozenset(
    {
        b"host",
        b"content-length",
        CONTENT_TYPE,
        ACCEPT,
        TARGET_CONTAINER,
        TARGET_VARIANT,
        TRANSFER_ENCODING,
        *FORWARDED,
    }
)

#: Every (lower-cased) header name the router looks at; the hot path ignores all others.
RELEVANT: Final = frozenset({*SINGLETONS, b"connection", b"expect"})

CUSTOM_ATTRIBUTES_MAX: Final = 1024
INFERENCE_ID_MAX: Final = 64
_CUSTOM_ATTRIBUTES: Final = FORWARDED[b"x-amzn-sagemaker-custom-attributes"]
_INFERENCE_ID: Final = FORWARDED[b"x-amzn-sagemaker-inference-id"]


class RequestHeaders:
    """The headers of one client request, reduced to what the router uses.

    ``add`` (or ``add_lower`` with the name already lower-cased) is called per header and
    ``finish`` once at the end of the head; both return a problem description (answered with
    400) or None. When ``finish`` leaves ``version_sensitive`` set, the caller also asks
    :meth:`check_version` (rare: a chunked request or one without Host).
    """

    __slots__ = (
        "_connection_tokens",
        "_forwarded",
        "_seen",
        "accept",
        "accept_block",
        "chunked",
        "content_length",
        "content_type",
        "expect_continue",
        "forward_block",
        "target_container",
        "target_variant",
        "version_sensitive",
    )

    def __init__(self) -> None:
        self._seen: list[bytes] = []
        self._forwarded: list[tuple[bytes, bytes]] | None = None
        self._connection_tokens: list[bytes] | None = None
        self.content_type: bytes | None = None
        self.accept: bytes | None = None
        self.content_length: int | None = None
        self.target_container: str | None = None
        self.target_variant: str | None = None
        self.expect_continue = False
        self.chunked = False
        self.version_sensitive = False
        self.forward_block = b""
        self.accept_block = b""

    def add(self, name: bytes, value: bytes) -> str | None:
        lname = name.lower()
        if lname not in RELEVANT:
            return None
        return self.add_lower(lname, name, value)

    def add_lower(self, lname: bytes, name: bytes, value: bytes) -> str | None:
        if lname in SINGLETONS:
            if lname in self._seen:
                return f"The header {name.decode('latin-1')} appears more than once."
            self._seen.append(lname)
        if lname == CONTENT_TYPE:
            self.content_type = value
        elif lname == ACCEPT:
            self.accept = value
        elif lname == b"content-length":
            # llhttp has validated the digits already; keep the number for the early 413.
            self.content_length = int(value)
        elif lname == TARGET_CONTAINER:
            self.target_container = value.decode("latin-1")
        elif lname in FORWARDED:
            if self._forwarded is None:
                self._forwarded = []
            self._forwarded.append((FORWARDED[lname], value))
        elif lname == TARGET_VARIANT:
            self.target_variant = value.decode("latin-1")
        elif lname == b"connection":
            if self._connection_tokens is None:
                self._connection_tokens = []
            self._connection_tokens.extend(
                token.strip().lower() for token in value.split(b",") if token.strip()
            )
        elif lname == b"expect":
            if value.strip().lower() != b"100-continue":
                return f"Unsupported Expect header value {value.decode('latin-1')!r}."
            self.expect_continue = True
        elif lname == TRANSFER_ENCODING:
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
            hop = set(self._connection_tokens)
            if forwarded is not None:
                forwarded = [(n, v) for n, v in forwarded if n.lower() not in hop]
            if ACCEPT in hop:
                self.accept = None
            if CONTENT_TYPE in hop:
                self.content_type = None
            if b"upgrade" in hop and (self.chunked or self.content_length):
                # llhttp ends an upgrade request at its head and calls the body "the other
                # protocol": it cannot be forwarded whole, so refuse it (a bodiless one is
                # served as plain HTTP, the Upgrade ignored, then the connection closes).
                return "A request with a body cannot ask for a protocol upgrade."
        if forwarded:
            parts = []
            for name, value in forwarded:
                if name is _CUSTOM_ATTRIBUTES and (
                    len(value) > CUSTOM_ATTRIBUTES_MAX or not _printable_ascii(value)
                ):
                    return (
                        "CustomAttributes must be at most 1024 printable ASCII characters "
                        f"(got {len(value)} bytes)."
                    )
                if name is _INFERENCE_ID and not 1 <= len(value) <= INFERENCE_ID_MAX:
                    return "InferenceId must be 1 to 64 characters long."
                parts.append(name + b": " + value + b"\r\n")
            self.forward_block = b"".join(parts)
        if self.accept is not None:
            self.accept_block = b"Accept: " + self.accept + b"\r\n"
        self.version_sensitive = self.chunked or b"host" not in self._seen
        return None

    def check_version(self, http_version: str) -> str | None:
        """The rules that depend on the request's HTTP version (``"1.1"``, ``"1.0"``, ...)."""
        if http_version != "1.1":
            if self.chunked:
                # RFC 9112 §6.1: treat as faulty framing; a smuggling vector behind HTTP/1.0 hops.
                return f"An HTTP/{http_version} request must not use Transfer-Encoding."
            return None
        if b"host" not in self._seen:
            return "An HTTP/1.1 request must carry a Host header (RFC 9112 §3.2)."
        return None


def _printable_ascii(value: bytes) -> bool:
    # ASCII 0x20..0x7E; str.isprintable is False for the control characters and DEL.
    return value.isascii() and value.decode("ascii").isprintable()
