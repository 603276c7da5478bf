"""The SageMaker control plane over HTTP: AWS's JSON 1.1 protocol on the admin port.

``POST /`` with ``X-Amz-Target: SageMaker.<Operation>``; the body is the operation's parameters
as a JSON object, the answer its output (``application/x-amz-json-1.1``). This module only
translates: every operation is one call of the :class:`~mce_router.control.catalog.Catalog` or
the :class:`~mce_router.endpoints.manager.EndpointManager`, and every error goes through
:func:`mce_router.errors.wire_error` (``{"__type", "message"}``, which boto3 turns into the
exception SageMaker would raise). With ``auth.mode: sigv4`` every
call is authenticated (SigV4) and authorized (``sagemaker:<Operation>`` on the resources it
names) before anything else happens.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from ..arns import Arns, ResourceKind
from ..control.catalog import Catalog
from ..control.tags import Tagging
from ..control.validation import required_name
from ..endpoints.manager import EndpointManager
from ..endpoints.scaling import Scaler
from ..errors import RouterError, SerializationError, UnknownTarget, wire_error
from ..security import Guard
from .app import MAX_BODY_BYTES

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."

Params = Mapping[str, Any]
Operation = Callable[[Params], Awaitable[dict[str, Any]]]


class JsonApi:
    """One AWS JSON 1.1 service: ``X-Amz-Target: <prefix><Operation>`` names an entry of
    ``operations``; :meth:`handle` is the ``POST /`` handler. ``service`` is what requests are
    signed for, and operations are authorized as ``<action_prefix>:<Operation>``."""

    target_prefix = TARGET_PREFIX
    service = "sagemaker"

    def __init__(self, guard: Guard | None, operations: dict[str, Operation]) -> None:
        self._guard = guard
        self._operations = operations

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        target = request.headers.get("X-Amz-Target", "")
        try:
            raw = await _read_body(request)
            guard = self._guard
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
                    service=self.service,
                )
            )
            params = _parse_params(raw)
            if guard is not None and credential is not None:
                guard.authorize_operation(
                    credential, self._operation_name(target), params, service=self.service
                )
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

    def _operation_name(self, target: str) -> str:
        prefix = self.target_prefix
        return target.removeprefix(prefix) if target.startswith(prefix) else ""

    def _operation(self, target: str) -> Operation:
        name = self._operation_name(target)
        operation = self._operations.get(name)
        if operation is None:
            shown = repr(target) if target else "no X-Amz-Target header"
            raise UnknownTarget(
                f"Unknown operation {shown}: this router serves {self.target_prefix}<Operation> "
                f"for {', '.join(self._operations)}."
            )
        return operation


class ControlApi(JsonApi):
    """Maps the thirteen model / endpoint config / endpoint operations to the catalog (models,
    endpoint configs) and the endpoint manager, the three tag operations to the tagging, and
    ListContexts to its empty answer; :meth:`handle` is the ``POST /`` handler."""

    def __init__(
        self,
        catalog: Catalog,
        endpoints: EndpointManager,
        tagging: Tagging,
        guard: Guard | None,
        arns: Arns,
        scaler: Scaler,
    ) -> None:
        self._arns = arns
        self._endpoints = endpoints
        super().__init__(
            guard,
            {
                "CreateModel": _create(
                    catalog.create_model, "ModelArn", arns, "model", check=catalog.check_model
                ),
                "DescribeModel": _named(catalog.describe_model, "ModelName"),
                "ListModels": _listing(catalog.list_models),
                "DeleteModel": _named(catalog.delete_model, "ModelName"),
                "CreateEndpointConfig": _create(
                    catalog.create_endpoint_config, "EndpointConfigArn", arns, "endpoint-config"
                ),
                "DescribeEndpointConfig": _named(
                    catalog.describe_endpoint_config, "EndpointConfigName"
                ),
                "ListEndpointConfigs": _listing(catalog.list_endpoint_configs),
                "DeleteEndpointConfig": _named(
                    catalog.delete_endpoint_config, "EndpointConfigName"
                ),
                "CreateEndpoint": self._create_endpoint,
                "DescribeEndpoint": _named(
                    lambda name: scaler.describe(name, endpoints.describe_endpoint(name)),
                    "EndpointName",
                ),
                "ListEndpoints": _listing(endpoints.list_endpoints),
                "UpdateEndpoint": self._update_endpoint,
                "UpdateEndpointWeightsAndCapacities": _listing(
                    scaler.update_weights_and_capacities
                ),
                "DeleteEndpoint": self._delete_endpoint,
                "AddTags": _listing(tagging.add_tags),
                "ListTags": _listing(tagging.list_tags),
                "DeleteTags": _listing(tagging.delete_tags),
                "ListContexts": _listing(_no_contexts),
            },
        )

    # --- the endpoint operations answer at once; their work goes on in the background --------

    async def _create_endpoint(self, params: Params) -> dict[str, Any]:
        state = await self._endpoints.create_endpoint(params, wait=False)
        return {"EndpointArn": self._arns.of("endpoint", state.name)}

    async def _update_endpoint(self, params: Params) -> dict[str, Any]:
        state = await self._endpoints.update_endpoint(params, wait=False)
        return {"EndpointArn": self._arns.of("endpoint", state.name)}

    async def _delete_endpoint(self, params: Params) -> dict[str, Any]:
        await self._endpoints.delete_endpoint(required_name(params, "EndpointName"), wait=False)
        return {}


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def _create(
    create: Callable[[Params], _Named],
    key: str,
    arns: Arns,
    kind: ResourceKind,
    *,
    check: Callable[[Params], Awaitable[None]] | None = None,
) -> Operation:
    """Create<Resource>: the output is the new resource's ARN under ``key``; ``check`` runs
    first, for rules that must await (CreateModel's image inspection on a container engine)."""

    async def operation(params: Params) -> dict[str, Any]:
        if check is not None:
            await check(params)
        return {key: arns.of(kind, create(params).name)}

    return operation


def _named(call: Callable[[str], dict[str, Any] | None], field: str) -> Operation:
    """Describe<Resource> / Delete<Resource>: one call with the name in ``field``; Delete
    answers ``{}``."""

    async def operation(params: Params) -> dict[str, Any]:
        return call(required_name(params, field)) or {}

    return operation


def _no_contexts(params: Params) -> dict[str, Any]:
    """ListContexts (ML lineage): always empty. SageMaker creates an ``Endpoint`` lineage
    context per endpoint for SageMaker ML Lineage Tracking; this router keeps no lineage graph
    (no artifacts, actions, associations nor QueryLineage to walk from a context), so an empty
    list is its true answer: the SDK v2's ``Predictor.endpoint_context()`` then returns None
    instead of failing on an unknown operation."""
    return {"ContextSummaries": []}


def _listing(call: Callable[[Params], dict[str, Any]]) -> Operation:
    """An operation that takes the whole request (List*, the tag operations)."""

    async def operation(params: Params) -> dict[str, Any]:
        return call(params)

    return operation


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
