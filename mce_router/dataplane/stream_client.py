"""InvokeEndpointWithResponseStream for a program that embeds the router: the parts as an
async iterator (``Router.invoke_endpoint_with_response_stream``).

It is a client of the router's own runtime listener, over loopback: the call takes exactly the
path of a boto3 call (routing, limits, metrics, backpressure: a consumer that stops iterating
stops the container's reads), and what it raises is the error a boto3 caller would see, as the
library's exception classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

from ..errors import (
    InternalFailure,
    StreamError,
    ValidationError,
    error_from_wire,
    json_object,
    refuse_unknown_keys,
)
from .eventstream import DecodeError, Decoder

#: The options of a stream call, by keyword, and the request header each one sets.
OPTION_HEADERS = {
    "content_type": "Content-Type",
    "accept": "X-Amzn-SageMaker-Accept",
    "target_container_hostname": "X-Amzn-SageMaker-Target-Container-Hostname",
    "target_variant": "X-Amzn-SageMaker-Target-Variant",
    "custom_attributes": "X-Amzn-SageMaker-Custom-Attributes",
    "inference_id": "X-Amzn-SageMaker-Inference-Id",
}


async def invoke_stream(
    runtime_url: str, endpoint_name: str, body: bytes, options: Mapping[str, str | None]
) -> AsyncIterator[bytes]:
    """The parts of one stream; ``options`` as :data:`OPTION_HEADERS` names them."""
    refuse_unknown_keys(
        options, OPTION_HEADERS, "invoke_endpoint_with_response_stream", ValidationError
    )
    headers = {OPTION_HEADERS[name]: value for name, value in options.items() if value is not None}
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
                    code = message_headers.get(":exception-type", "")
                    fields = json_object(payload)
                    raise StreamError(
                        str(fields.get("Message", code)),
                        code=code,
                        error_code=str(fields.get("ErrorCode", "")),
                    )
                yield payload
