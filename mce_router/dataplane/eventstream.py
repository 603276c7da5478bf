"""AWS event-stream framing (``application/vnd.amazon.eventstream``), the encoder side.

botocore ships only the decoder (``botocore.eventstream``); the tests hold this encoder to it.
A message is: total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes, headers,
payload, CRC32 of everything before. A header is: name length (u8), name, value type (7:
string), value length (u16 BE), value.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Final

_PRELUDE: Final = struct.Struct(">II")
_CRC: Final = struct.Struct(">I")
_STRING: Final = 7


def encode_headers(headers: tuple[tuple[str, str], ...]) -> bytes:
    parts = []
    for name, value in headers:
        raw_name = name.encode()
        raw_value = value.encode()
        parts.append(
            struct.pack(">B", len(raw_name))
            + raw_name
            + struct.pack(">BH", _STRING, len(raw_value))
            + raw_value
        )
    return b"".join(parts)


def frame(header_block: bytes, payload: bytes) -> bytes:
    """One message with the pre-encoded ``header_block`` (see :func:`encode_headers`)."""
    prelude = _PRELUDE.pack(16 + len(header_block) + len(payload), len(header_block))
    prelude_crc = zlib.crc32(prelude)
    head = prelude + _CRC.pack(prelude_crc) + header_block
    # crc32 continues over the pieces: the message is never copied only to be checksummed.
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, _CRC.pack(crc)))


#: Headers of every PayloadPart event, encoded once.
PAYLOAD_PART_HEADERS: Final = encode_headers(
    (
        (":event-type", "PayloadPart"),
        (":message-type", "event"),
        (":content-type", "application/octet-stream"),
    )
)


def payload_part(data: bytes) -> bytes:
    return frame(PAYLOAD_PART_HEADERS, data)


#: ModelStreamError codes (botocore's service model documents these two).
STREAM_BROKEN: Final = "StreamBroken"
TIME_EXCEEDED: Final = "ModelInvocationTimeExceeded"


def model_stream_error(error_code: str, message: str) -> bytes:
    """The exception event that ends a stream the container broke or ran out of time on;
    boto3 raises ``EventStreamError`` (code ``ModelStreamError``) while iterating. botocore keeps
    only ``Message`` of the event, so the message names the ``ErrorCode`` too."""
    return _exception(
        "ModelStreamError",
        {"Message": f"{error_code}: {message}", "ErrorCode": error_code},
    )


def internal_stream_failure(message: str) -> bytes:
    """The exception event of a fault in the router itself (``InternalStreamFailure``)."""
    return _exception("InternalStreamFailure", {"Message": message})


def _exception(kind: str, body: dict[str, str]) -> bytes:
    headers = encode_headers(
        (
            (":exception-type", kind),
            (":message-type", "exception"),
            (":content-type", "application/json"),
        )
    )
    return frame(headers, json.dumps(body).encode())


class DecodeError(ValueError):
    """Bytes that are not a well-formed event stream (bad length or checksum)."""


#: botocore's own bound on one message (its decoder refuses larger ones).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024 + 128 * 1024


class Decoder:
    """Splits received bytes into messages: ``feed`` returns ``(headers, payload)`` of every
    message completed so far (string headers only: the only type this API uses)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, str], bytes]]:
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= 12:
            total, headers_length = _PRELUDE.unpack_from(buffer)
            if total > MAX_MESSAGE_BYTES or total < 16 + headers_length:
                raise DecodeError(f"an event-stream message of {total} bytes")
            if _CRC.unpack_from(buffer, 8)[0] != zlib.crc32(bytes(buffer[:8])):
                raise DecodeError("an event-stream prelude checksum does not match")
            if len(buffer) < total:
                break
            message = bytes(buffer[:total])
            del buffer[:total]
            if _CRC.unpack_from(message, total - 4)[0] != zlib.crc32(message[: total - 4]):
                raise DecodeError("an event-stream message checksum does not match")
            messages.append(
                (_headers(message[12 : 12 + headers_length]), message[12 + headers_length : -4])
            )
        return messages


def _headers(block: bytes) -> dict[str, str]:
    headers = {}
    at = 0
    while at < len(block):
        name_length = block[at]
        name = block[at + 1 : at + 1 + name_length].decode()
        at += 1 + name_length
        kind, value_length = struct.unpack_from(">BH", block, at)
        if kind != _STRING:
            raise DecodeError(f"event-stream header {name} has value type {kind}, not string")
        at += 3
        headers[name] = block[at : at + value_length].decode()
        at += value_length
    return headers
