"""The one ARN rule: SageMaker resource ARNs and the CloudWatch log-stream ARN of a container.

SageMaker ARNs carry the resource name lower-cased (an endpoint created as ``My-Endpoint`` has
the ARN ``...:endpoint/my-endpoint``); the log stream keeps the names as written, as
CloudWatch's ``/aws/sagemaker/Endpoints/<name>`` groups do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ResourceKind = Literal["model", "endpoint-config", "endpoint"]


def sagemaker_arn(region: str, account_id: str, kind: str, name: str) -> str:
    """``arn:aws:sagemaker:{region}:{account}:{kind}/{name lower-cased}``."""
    return f"arn:aws:sagemaker:{region}:{account_id}:{kind}/{name.lower()}"


def log_stream_arn(
    region: str, account_id: str, endpoint: str, variant: str, instance_id: str, container: str
) -> str:
    """The log stream of one container, as SageMaker names it in a ModelError."""
    return (
        f"arn:aws:logs:{region}:{account_id}:log-group:/aws/sagemaker/Endpoints/{endpoint}"
        f":log-stream:{variant}/{instance_id}/{container}"
    )


@dataclass(frozen=True, slots=True)
class Arns:
    """The ARN rule bound to one router's region and account."""

    region: str
    account_id: str

    def of(self, kind: ResourceKind, name: str) -> str:
        return sagemaker_arn(self.region, self.account_id, kind, name)

    def log_stream(self, endpoint: str, variant: str, instance_id: str, container: str) -> str:
        return log_stream_arn(
            self.region, self.account_id, endpoint, variant, instance_id, container
        )
