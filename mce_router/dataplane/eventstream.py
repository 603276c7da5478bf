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
