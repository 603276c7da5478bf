"""One error tree for the whole package, and the one table that maps it to wire responses.

Library code raises these; only :func:`wire_error` decides which HTTP status, error code and
body a client sees, so that boto3 parses every error into the exception AWS would raise.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

#: ``sts`` is STS's query protocol on the admin port (GetCallerIdentity): its own codes.
Plane = Literal["runtime", "control", "sts"]

#: botocore's rest-json parser takes the error code from this header (the part before ':').
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.sagemaker/"


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The valid name a misspelled ``name`` most likely meant, for "did you mean" hints."""
    matches = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def refuse_unknown_keys(
    raw: Mapping[Any, Any], known: Iterable[str], where: str, error: type[RouterError] | None = None
) -> None:
    """One clear line for the first key that is not a setting: where it is, and the setting it
    most likely meant (``config.listen.prot: unknown setting 'prot'; did you mean 'port'?``).
    Raises ``error`` (default :class:`ConfigError`)."""
    valid = sorted(known)
    for key in raw:
        if key in valid:
            continue
        closest = closest_name(str(key), valid)
        hint = f"did you mean {closest!r}?" if closest else f"valid settings: {', '.join(valid)}"
        raise (error or ConfigError)(f"{where}.{key}: unknown setting {str(key)!r}; {hint}")


class RouterError(Exception):
    """Base of every error mce_router raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RouterError, ValueError):
    """The router configuration (YAML or RouterConfig arguments) is invalid."""


class ValidationError(RouterError, ValueError):
    """A request or resource definition breaks a rule; ``field`` names where, ``rule`` what."""

    def __init__(self, message: str, *, field: str = "", rule: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


class PayloadTooLarge(ValidationError):
    """The invocation body exceeds the configured limit (6 MiB by default)."""


class MalformedRequest(ValidationError):
    """The HTTP request itself is broken or ambiguous; the connection is closed after the answer."""


class HeadersTooLarge(MalformedRequest):
    """Too many request headers, or too many header bytes."""


class RequestTimeout(MalformedRequest):
    """The client did not send a complete request within the read deadline."""


class UnknownOperation(RouterError):
    """A path or method the API does not serve."""


class UnknownTarget(UnknownOperation):
    """A control-plane request whose ``X-Amz-Target`` names no operation this router serves;
    AWS's JSON protocols answer it with 400, not 404."""


class SerializationError(RouterError):
    """A control-plane request body that is not a JSON object (AWS: SerializationException)."""


class ResourceNotFound(RouterError, LookupError):
    """A model, endpoint config or endpoint that does not exist."""


class EndpointNotFound(ResourceNotFound):
    """SageMaker answers a missing endpoint with a validation error, and waiters rely on it."""


class ModelNotFound(ResourceNotFound):
    """SageMaker answers a missing model with ValidationException "Could not find model ..."."""


class EndpointConfigNotFound(ResourceNotFound):
    """SageMaker answers a missing endpoint config with ValidationException as well."""


class ContainerEngineError(RouterError, OSError):
    """The container engine (Docker Engine API) is unreachable or refused an operation. An
    OSError too: like a process that cannot be spawned, it fails one container start (the
    supervisors retry OSErrors), and at start-up it is one line naming the engine's URL."""

    def __init__(self, message: str) -> None:
        RouterError.__init__(self, message)

    def __str__(self) -> str:
        return self.message


class ObjectNotFound(ResourceNotFound):
    """Application Auto Scaling's missing scalable target or scaling policy
    (ObjectNotFoundException)."""


class InvalidNextToken(ValidationError):
    """A NextToken that no Describe* call of Application Auto Scaling issued
    (InvalidNextTokenException)."""


class ResourceInUse(RouterError):
    """The resource exists already, or another resource depends on it."""


class ResourceLimitExceeded(RouterError):
    """A configured limit (containers per model, endpoints, ...) would be exceeded."""


class RouterStartupError(RouterError):
    """The router itself cannot start: a port is taken, the state directory is not writable."""


class EndpointStartupError(RouterError):
    """Containers of an endpoint did not start or did not pass the ping health check."""

    def __init__(self, message: str, failed_containers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failed_containers = failed_containers


#: The codes AWS answers authentication and authorization failures with (boto3 raises them as
#: ``error.response["Error"]["Code"]``); which one depends on what exactly is wrong.
AuthErrorCode = Literal[
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "UnrecognizedClientException",
    "AccessDeniedException",
]


class AuthError(RouterError):
    """A request that may not proceed. Unlike other errors its wire code is chosen where the
    failure is detected (``code``); the status is 403 on both planes. The message says what is
    wrong and never contains a secret."""

    def __init__(self, code: AuthErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: AuthErrorCode = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class AuthenticationError(AuthError):
    """The SigV4 signature is missing, malformed, expired, from an unknown key, or wrong."""


class AccessDenied(AuthError):
    """An authenticated principal whose policies do not allow the request."""

    def __init__(self, message: str) -> None:
        super().__init__("AccessDeniedException", message)


class PolicyError(ConfigError):
    """An IAM policy document is malformed or uses something the evaluator does not support.
    The message names the policy, the statement index and the field."""


class InvocationError(RouterError):
    """Base of errors that end one invocation on the data plane."""


class ModelError(InvocationError):
    """A container answered with a non-2xx status, broke the connection, or timed out."""

    def __init__(
        self,
        message: str,
        *,
        container: str,
        original_status: int,
        original_message: str,
        log_stream_arn: str,
    ) -> None:
        super().__init__(message)
        self.container = container
        self.original_status = original_status
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn


class ServiceUnavailable(InvocationError):
    """The endpoint or the container is not serving right now (starting, restarting, stopping)."""


class ModelNotReady(InvocationError):
    """The container is at its concurrency limit; the caller should back off and retry."""


class InternalFailure(InvocationError):
    """A bug or an unexpected condition inside the router."""


class StreamError(InvocationError):
    """A response stream ended with an exception event after its first part: ``code`` is
    ``ModelStreamError`` (``error_code`` ``StreamBroken`` or ``ModelInvocationTimeExceeded``)
    or ``InternalStreamFailure`` (``error_code`` empty)."""

    def __init__(self, message: str, *, code: str, error_code: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class WireError:
    status: int
    code: str
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        payload: dict[str, Any] = {"__type": self.code, "message": self.message}
        payload.update(self.extra)
        return orjson.dumps(payload)

    def header_pairs(self) -> tuple[tuple[str, str], ...]:
        return (
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", self.code + ERROR_TYPE_SUFFIX),
        )


# The one table: error class -> (HTTP status, code on the runtime API, code on the control API).
# Looked up along the MRO, so subclasses inherit their parent's wire form unless listed.
_WIRE_TABLE: dict[type[BaseException], tuple[int, str, str]] = {
    PayloadTooLarge: (413, "ValidationError", "ValidationException"),
    HeadersTooLarge: (431, "ValidationError", "ValidationException"),
    RequestTimeout: (408, "ValidationError", "ValidationException"),
    UnknownTarget: (400, "UnknownOperationException", "UnknownOperationException"),
    UnknownOperation: (404, "UnknownOperationException", "UnknownOperationException"),
    SerializationError: (400, "ValidationError", "SerializationException"),
    ObjectNotFound: (400, "ValidationError", "ObjectNotFoundException"),
    InvalidNextToken: (400, "ValidationError", "InvalidNextTokenException"),
    EndpointNotFound: (400, "ValidationError", "ValidationException"),
    ModelNotFound: (400, "ValidationError", "ValidationException"),
    EndpointConfigNotFound: (400, "ValidationError", "ValidationException"),
    ValidationError: (400, "ValidationError", "ValidationException"),
    ConfigError: (400, "ValidationError", "ValidationException"),
    ResourceNotFound: (400, "ValidationError", "ResourceNotFound"),
    ResourceInUse: (400, "ValidationError", "ResourceInUse"),
    ResourceLimitExceeded: (400, "ValidationError", "ResourceLimitExceeded"),
    EndpointStartupError: (500, "InternalFailure", "InternalFailure"),
    ModelError: (424, "ModelError", "ModelError"),
    ModelNotReady: (429, "ModelNotReadyException", "ModelNotReadyException"),
    ServiceUnavailable: (503, "ServiceUnavailable", "ServiceUnavailable"),
    ContainerEngineError: (503, "ServiceUnavailable", "ServiceUnavailable"),
    InternalFailure: (500, "InternalFailure", "InternalFailure"),
}

# STS (query protocol) words the same failures with codes of its own; anything else keeps the
# control plane's code.
_STS_CODES: dict[str, str] = {
    "MissingAuthenticationTokenException": "MissingAuthenticationToken",
    "IncompleteSignatureException": "IncompleteSignature",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "UnrecognizedClientException": "InvalidClientTokenId",
    "AccessDeniedException": "AccessDenied",
    "UnknownOperationException": "InvalidAction",
    "ValidationException": "ValidationError",
    "SerializationException": "MalformedQueryString",
}

# SageMaker truncates OriginalMessage to this many characters.
ORIGINAL_MESSAGE_LIMIT = 2048


def wire_error(exc: BaseException, plane: Plane = "runtime") -> WireError:
    """Map any exception to the status, code and body a SageMaker client expects."""
    for cls in type(exc).__mro__:
        entry = _WIRE_TABLE.get(cls)
        if entry is not None:
            status, runtime_code, control_code = entry
            break
    else:
        status, runtime_code, control_code = 500, "InternalFailure", "InternalFailure"
    message = exc.message if isinstance(exc, RouterError) else "An internal error occurred."
    if isinstance(exc, AuthError):
        # AWS uses these codes unchanged on its rest-json and json-1.1 services.
        return WireError(403, _STS_CODES[exc.code] if plane == "sts" else exc.code, message)
    extra: dict[str, Any] = {}
    if isinstance(exc, ModelError):
        extra = {
            "Message": message,
            "OriginalStatusCode": exc.original_status,
            "OriginalMessage": exc.original_message[:ORIGINAL_MESSAGE_LIMIT],
            "LogStreamArn": exc.log_stream_arn,
        }
    if plane == "sts":
        return WireError(status, _STS_CODES.get(control_code, control_code), message)
    code = runtime_code if plane == "runtime" else control_code
    return WireError(status, code, message, extra)


# The runtime API's codes back to the error classes, for the library's own client of the
# runtime listener (InvokeEndpointWithResponseStream from an embedding program).
_FROM_RUNTIME_CODE: dict[str, type[InvocationError] | type[ValidationError]] = {
    "ValidationError": ValidationError,
    "ModelNotReadyException": ModelNotReady,
    "ServiceUnavailable": ServiceUnavailable,
    "InternalFailure": InternalFailure,
}


def json_object(data: bytes) -> dict[str, Any]:
    """``data`` as a JSON object; empty when it is not one (an error body, an event payload)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def error_from_wire(status: int, body: bytes) -> RouterError:
    """The error a runtime-API error response stands for (the inverse of :func:`wire_error`)."""
    payload = json_object(body)
    code = str(payload.get("__type", ""))
    message = str(payload.get("message", "")) or f"HTTP {status}: {body[:200]!r}"
    if code == "ModelError":
        return ModelError(
            message,
            container="",
            original_status=int(payload.get("OriginalStatusCode", 0)),
            original_message=str(payload.get("OriginalMessage", "")),
            log_stream_arn=str(payload.get("LogStreamArn", "")),
        )
    if status == 403:
        return AccessDenied(message)
    return _FROM_RUNTIME_CODE.get(code, InternalFailure)(message)
