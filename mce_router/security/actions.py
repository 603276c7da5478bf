"""Which IAM action and which resource ARNs each request is authorized as.

- Both invocation paths (``/invocations`` and ``/invocations-response-stream``) are
  ``sagemaker:InvokeEndpoint`` on the endpoint's ARN, with ``sagemaker:TargetContainerHostname``
  in the context when the target header was sent.
- A control-plane operation ``X`` is ``sagemaker:X`` on the ARNs of the resources it names;
  List operations (and operations this table does not know) are authorized on ``*``, as IAM
  does for actions without resource types. CreateEndpoint and UpdateEndpoint need both the
  endpoint and the endpoint config (IAM lists both resource types for them), so they produce
  two requests and every one must be allowed.
- Application Auto Scaling's operations ``X`` are ``application-autoscaling:X`` on ``*``.
- The tag operations (AddTags, ListTags, DeleteTags) are ``sagemaker:<Operation>`` on the
  resource their ``ResourceArn`` names (its name lower-cased like the router's own ARNs).

SageMaker ARNs carry the resource name lower-cased (an endpoint created as ``My-Endpoint`` has
the ARN ``...:endpoint/my-endpoint``), and policy matching is case-sensitive as in IAM: write
resource names in policies in lower case. The builders here lower-case names the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..arns import sagemaker_arn
from .patterns import TARGET_CONTAINER_KEY
from .policy import AuthzRequest

INVOKE_ENDPOINT_ACTION: Final = "sagemaker:InvokeEndpoint"
#: Application Auto Scaling's signing name and IAM action prefix.
AUTOSCALING_SERVICE: Final = "application-autoscaling"


def endpoint_arn(region: str, account_id: str, name: str) -> str:
    """``arn:aws:sagemaker:{region}:{account}:endpoint/{name lower-cased}``."""
    return sagemaker_arn(region, account_id, "endpoint", name)


def endpoint_config_arn(region: str, account_id: str, name: str) -> str:
    return sagemaker_arn(region, account_id, "endpoint-config", name)


def model_arn(region: str, account_id: str, name: str) -> str:
    return sagemaker_arn(region, account_id, "model", name)


def invoke_request(
    region: str, account_id: str, endpoint_name: str, target_container: str | None
) -> AuthzRequest:
    """The request an invocation is authorized as. ``target_container`` is the header value as
    sent (None when the header is absent: the condition key is then absent, not empty)."""
    context = {} if target_container is None else {TARGET_CONTAINER_KEY.lower(): target_container}
    return AuthzRequest(
        INVOKE_ENDPOINT_ACTION, endpoint_arn(region, account_id, endpoint_name), context
    )


# operation -> (resource type, request member holding the name), one entry per resource checked.
_ResourceSpec = tuple[tuple[str, str], ...]
_MODEL: Final = (("model", "ModelName"),)
_CONFIG: Final = (("endpoint-config", "EndpointConfigName"),)
_ENDPOINT: Final = (("endpoint", "EndpointName"),)
_ENDPOINT_AND_CONFIG: Final = (
    ("endpoint", "EndpointName"),
    ("endpoint-config", "EndpointConfigName"),
)

CONTROL_PLANE_RESOURCES: Final[Mapping[str, _ResourceSpec]] = {
    "CreateModel": _MODEL,
    "DescribeModel": _MODEL,
    "DeleteModel": _MODEL,
    "CreateEndpointConfig": _CONFIG,
    "DescribeEndpointConfig": _CONFIG,
    "DeleteEndpointConfig": _CONFIG,
    "CreateEndpoint": _ENDPOINT_AND_CONFIG,
    "UpdateEndpoint": _ENDPOINT_AND_CONFIG,
    "DescribeEndpoint": _ENDPOINT,
    "DeleteEndpoint": _ENDPOINT,
    "UpdateEndpointWeightsAndCapacities": _ENDPOINT,
    "ListModels": (),
    "ListEndpointConfigs": (),
    "ListEndpoints": (),
}


#: Operations naming their resource by ARN (``ResourceArn``) rather than by name.
ARN_OPERATIONS: Final = frozenset({"AddTags", "ListTags", "DeleteTags"})


def _named_arn(value: Any) -> str:
    """``ResourceArn`` as IAM matches it: a SageMaker ARN with its name lower-cased, as the
    router writes its ARNs; anything else as given (an empty string when not a string)."""
    if not isinstance(value, str):
        return ""
    parts = value.split(":", 5)
    if len(parts) == 6 and parts[2] == "sagemaker" and "/" in parts[5]:
        kind, _, name = parts[5].partition("/")
        return sagemaker_arn(parts[3], parts[4], kind, name)
    return value


def control_plane_requests(
    operation: str, params: Mapping[str, Any], region: str, account_id: str
) -> tuple[AuthzRequest, ...]:
    """The requests a control-plane call is authorized as; all must be allowed.

    ``params`` is the decoded JSON body. A missing or non-string name member yields an ARN with
    an empty name, which only a wildcard resource allows: authorization comes before validation,
    as in AWS, so an unauthorized caller learns nothing from validation errors."""
    action = f"sagemaker:{operation}"
    if operation in ARN_OPERATIONS:
        return (AuthzRequest(action, _named_arn(params.get("ResourceArn"))),)
    specs = CONTROL_PLANE_RESOURCES.get(operation, ())
    if not specs:
        return (AuthzRequest(action, "*"),)
    requests = []
    for resource_type, member in specs:
        name = params.get(member)
        requests.append(
            AuthzRequest(
                action,
                sagemaker_arn(
                    region, account_id, resource_type, name if isinstance(name, str) else ""
                ),
            )
        )
    return tuple(requests)


def autoscaling_request(operation: str, params: Mapping[str, Any]) -> AuthzRequest:
    """``application-autoscaling:<Operation>`` on ``*``: the router's scalable targets have no
    ARN a policy could name before they exist, so, as most AWS policies for it do, the action
    alone decides (``params`` is accepted for symmetry with the SageMaker operations)."""
    del params
    return AuthzRequest(f"{AUTOSCALING_SERVICE}:{operation}", "*")
