"""The SageMaker control plane over HTTP: AWS's JSON 1.1 protocol on the admin port.

``POST /`` with ``X-Amz-Target: SageMaker.<Operation>``; the body is the operation's parameters
as a JSON object, the answer its output (``application/x-amz-json-1.1``). This module only
translates: every operation is one call of a :class:`~mce_router.router.Router` resource method,
and every error goes through :func:`mce_router.errors.wire_error` (``{"__type", "message"}``,
which boto3 turns into the exception SageMaker would raise). With ``auth.mode: sigv4`` every
call is authenticated (SigV4) and authorized (``sagemaker:<Operation>`` on the resources it
names) before anything else happens.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..errors import RouterError, SerializationError, UnknownTarget, wire_error
from .validation import required_name

if TYPE_CHECKING:
    from ..router import Router

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
#: The admin app's ``client_max_size``: larger control-plane bodies are refused unread.
MAX_BODY_BYTES = 1024 * 1024

Params = Mapping[str, Any]
Operation = Callable[[Params], Awaitable[dict[str, Any]]]


class ControlApi:
    """Maps the thirteen model / endpoint config / endpoint operations to the router."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._operations: dict[str, Operation] = {
            "CreateModel": self._create_model,
            "DescribeModel": self._describe_model,
            "ListModels": self._list_models,
            "DeleteModel": self._delete_model,
            "CreateEndpointConfig": self._create_endpoint_config,
            "DescribeEndpointConfig": self._describe_endpoint_config,
            "ListEndpointConfigs": self._list_endpoint_configs,
            "DeleteEndpointConfig": self._delete_endpoint_config,
            "CreateEndpoint": self._create_endpoint,
            "DescribeEndpoint": self._describe_endpoint,
            "ListEndpoints": self._list_endpoints,
            "UpdateEndpoint": self._update_endpoint,
            "DeleteEndpoint": self._delete_endpoint,
        }

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        target = request.headers.get("X-Amz-Target", "")
        try:
            raw = await _read_body(request)
            guard = self._router.guard
            # Authenticate first, then authorize on the names the call carries, before the
            # operation or any resource is looked up: a denied caller learns nothing about them.
            credential = (
                None
                if guard is None
                else guard.authenticate(
                    request.method,
                    request.raw_path.partition("?")[0].encode(),
                    request.raw_path.partition("?")[2].encode(),
                    request.raw_headers,
                    raw,
                )
            )
            params = _parse_params(raw)
            if guard is not None and credential is not None:
                guard.authorize_operation(credential, _operation_name(target), params)
            operation = self._operation(target)
            output = await operation(params)
        except Exception as exc:
            if not isinstance(exc, RouterError):
                log.exception("control-plane call %s failed", target or "(no X-Amz-Target)")
            error = wire_error(exc, "control")
            return _response(
                error.status, {"__type": error.code, "message": error.message}, request_id
            )
        return _response(200, output, request_id)

    def _operation(self, target: str) -> Operation:
        name = _operation_name(target)
        operation = self._operations.get(name)
        if operation is None:
            shown = repr(target) if target else "no X-Amz-Target header"
            raise UnknownTarget(
                f"Unknown operation {shown}: this router serves SageMaker.<Operation> for "
                f"{', '.join(self._operations)}."
            )
        return operation

    # --- models ------------------------------------------------------------------------------

    async def _create_model(self, params: Params) -> dict[str, Any]:
        model = self._router.create_model(params)
        return {"ModelArn": self._router.arn("model", model.name)}

    async def _describe_model(self, params: Params) -> dict[str, Any]:
        return self._router.describe_model(required_name(params, "ModelName"))

    async def _list_models(self, params: Params) -> dict[str, Any]:
        return self._router.list_models(params)

    async def _delete_model(self, params: Params) -> dict[str, Any]:
        self._router.delete_model(required_name(params, "ModelName"))
        return {}

    # --- endpoint configs --------------------------------------------------------------------

    async def _create_endpoint_config(self, params: Params) -> dict[str, Any]:
        endpoint_config = self._router.create_endpoint_config(params)
        return {"EndpointConfigArn": self._router.arn("endpoint-config", endpoint_config.name)}

    async def _describe_endpoint_config(self, params: Params) -> dict[str, Any]:
        return self._router.describe_endpoint_config(required_name(params, "EndpointConfigName"))

    async def _list_endpoint_configs(self, params: Params) -> dict[str, Any]:
        return self._router.list_endpoint_configs(params)

    async def _delete_endpoint_config(self, params: Params) -> dict[str, Any]:
        self._router.delete_endpoint_config(required_name(params, "EndpointConfigName"))
        return {}

    # --- endpoints ---------------------------------------------------------------------------

    async def _create_endpoint(self, params: Params) -> dict[str, Any]:
        state = await self._router.create_endpoint(params, wait=False)
        return {"EndpointArn": self._router.arn("endpoint", state.name)}

    async def _describe_endpoint(self, params: Params) -> dict[str, Any]:
        return self._router.describe_endpoint(required_name(params, "EndpointName"))

    async def _list_endpoints(self, params: Params) -> dict[str, Any]:
        return self._router.list_endpoints(params)

    async def _update_endpoint(self, params: Params) -> dict[str, Any]:
        state = await self._router.update_endpoint(params, wait=False)
        return {"EndpointArn": self._router.arn("endpoint", state.name)}

    async def _delete_endpoint(self, params: Params) -> dict[str, Any]:
        await self._router.delete_endpoint(required_name(params, "EndpointName"), wait=False)
        return {}


def _operation_name(target: str) -> str:
    return target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise SerializationError(
            f"The request body exceeds {MAX_BODY_BYTES} bytes, the limit for control-plane "
            "requests."
        ) from None


def _parse_params(raw: bytes) -> Params:
    if not raw.strip():
        return {}
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(
            f"The request body is not valid JSON ({exc}); send the operation's parameters as "
            f"one JSON object with Content-Type {CONTENT_TYPE}."
        ) from None
    if not isinstance(params, dict):
        raise SerializationError(
            f"The request body is a JSON {type(params).__name__}, not an object; send the "
            "operation's parameters as one JSON object."
        )
    return params


def _response(status: int, payload: Mapping[str, Any], request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        headers={"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": request_id},
    )
