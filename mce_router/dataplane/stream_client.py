"""InvokeEndpointWithResponseStream for a program that embeds the router: the parts as an
async iterator (``Router.invoke_endpoint_with_response_stream``).

It is a client of the router's own runtime listener, over loopback: the call takes exactly the
path of a boto3 call (routing, limits, metrics, backpressure: a consumer that stops iterating
stops the container's reads), and what it raises is the error a boto3 caller would see, as the
library's exception classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from ..errors import InternalFailure, StreamError, error_from_wire
from .eventstream import DecodeError, Decoder


async def invoke_stream(
    runtime_url: str,
    endpoint_name: str,
    body: bytes,
    *,
    content_type: str | None = None,
    accept: str | None = None,
    target_container_hostname: str | None = None,
    target_variant: str | None = None,
    custom_attributes: str | None = None,
    inference_id: str | None = None,
) -> AsyncIterator[bytes]:
    headers = {
        name: value
        for name, value in (
            ("Content-Type", content_type),
            ("X-Amzn-SageMaker-Accept", accept),
            ("X-Amzn-SageMaker-Target-Container-Hostname", target_container_hostname),
            ("X-Amzn-SageMaker-Target-Variant", target_variant),
            ("X-Amzn-SageMaker-Custom-Attributes", custom_attributes),
            ("X-Amzn-SageMaker-Inference-Id", inference_id),
        )
        if value is not None
    }
    url = f"{runtime_url}/endpoints/{endpoint_name}/invocations-response-stream"
    # No total timeout: the router enforces the stream's limits and ends it with an event.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        if response.status != 200:
            raise error_from_wire(response.status, await response.read())
        decoder = Decoder()
        async for data in response.content.iter_any():
            try:
                messages = decoder.feed(data)
            except DecodeError as exc:
                raise InternalFailure(f"The response stream was malformed: {exc}.") from exc
            for message_headers, payload in messages:
                if message_headers.get(":message-type") == "exception":
                    raise _stream_error(message_headers.get(":exception-type", ""), payload)
                yield payload


def _stream_error(code: str, payload: bytes) -> StreamError:
    import orjson

    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    return StreamError(
        str(fields.get("Message", code)), code=code, error_code=str(fields.get("ErrorCode", ""))
    )
