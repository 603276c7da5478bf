"""The event-stream encoder against botocore's own decoder, and boto3 reading it off a socket."""

from __future__ import annotations

import socket
import threading
from contextlib import closing

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import EventStreamError

from mce_router.dataplane import eventstream


def test_botocore_decodes_every_event_kind() -> None:
    buffer = EventStreamBuffer()
    parts = [b"", b"x", bytes(range(256)) * 300]
    for part in parts:
        buffer.add_data(eventstream.payload_part(part))
    buffer.add_data(eventstream.model_stream_error(eventstream.STREAM_BROKEN, "gone"))
    buffer.add_data(eventstream.internal_stream_failure("oops"))
    messages = list(buffer)
    assert [m.payload for m in messages[:3]] == parts
    assert messages[0].headers == {
        ":event-type": "PayloadPart",
        ":message-type": "event",
        ":content-type": "application/octet-stream",
    }
    assert messages[3].headers[":exception-type"] == "ModelStreamError"
    assert messages[3].payload == b'{"Message": "StreamBroken: gone", "ErrorCode": "StreamBroken"}'
    assert messages[4].headers[":exception-type"] == "InternalStreamFailure"


def test_decoder_round_trip_and_rejects_corruption() -> None:
    stream = eventstream.payload_part(b"abc") + eventstream.internal_stream_failure("m")
    decoder = eventstream.Decoder()
    got = []
    for index in range(len(stream)):  # one byte at a time: every boundary is exercised
        got.extend(decoder.feed(stream[index : index + 1]))
    assert got[0][1] == b"abc"
    assert got[1][0][":exception-type"] == "InternalStreamFailure"
    corrupt = bytearray(eventstream.payload_part(b"abc"))
    corrupt[-6] ^= 1
    with pytest.raises(eventstream.DecodeError, match="checksum"):
        eventstream.Decoder().feed(bytes(corrupt))


def _serve_once(listener: socket.socket, events: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\n"
            b"X-Amzn-SageMaker-Content-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(events)
        )
        conn.sendall(head + events)


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (eventstream.internal_stream_failure("router fault"), "InternalStreamFailure"),
        (eventstream.model_stream_error(eventstream.TIME_EXCEEDED, "slow"), "ModelStreamError"),
    ],
)
def test_boto3_raises_the_exception_event_while_iterating(event: bytes, code: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with closing(listener):
        events = eventstream.payload_part(b"first") + event
        server = threading.Thread(target=_serve_once, args=(listener, events))
        server.start()
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret",
            config=Config(retries={"max_attempts": 1}),
        )
        with closing(client):
            response = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"")
            assert response["ContentType"] == "text/plain"
            parts = []
            with closing(response["Body"]), pytest.raises(EventStreamError) as raised:
                parts.extend(part["PayloadPart"]["Bytes"] for part in response["Body"])
        server.join(10)
    assert parts == [b"first"]
    assert raised.value.response["Error"]["Code"] == code
