"""Application Auto Scaling over HTTP: AWS's JSON 1.1 protocol on the admin port, so
``boto3.client("application-autoscaling", endpoint_url=ADMIN_URL)`` (or
``AWS_ENDPOINT_URL_APPLICATION_AUTOSCALING``) works unchanged.

``POST /`` with ``X-Amz-Target: AnyScaleFrontendService.<Operation>``; requests are signed for
the service ``application-autoscaling`` and authorized as ``application-autoscaling:<Operation>``
(``auth.mode: sigv4``). Every operation is one call of
:class:`~mce_router.control.autoscaling.AutoScaling`.
"""

from __future__ import annotations

from ..control.autoscaling import AutoScaling
from ..security import AUTOSCALING_SERVICE, Guard
from .app import AUTOSCALING_TARGET_PREFIX
from .control_api import JsonApi, _listing


class AutoScalingApi(JsonApi):
    """RegisterScalableTarget ... DescribeScalingActivities; :meth:`handle` serves them."""

    target_prefix = AUTOSCALING_TARGET_PREFIX
    service = AUTOSCALING_SERVICE

    def __init__(self, scaling: AutoScaling, guard: Guard | None) -> None:
        super().__init__(
            guard,
            {
                "RegisterScalableTarget": _listing(scaling.register_scalable_target),
                "DeregisterScalableTarget": _listing(scaling.deregister_scalable_target),
                "DescribeScalableTargets": _listing(scaling.describe_scalable_targets),
                "PutScalingPolicy": _listing(scaling.put_scaling_policy),
                "DeleteScalingPolicy": _listing(scaling.delete_scaling_policy),
                "DescribeScalingPolicies": _listing(scaling.describe_scaling_policies),
                "DescribeScalingActivities": _listing(scaling.describe_scaling_activities),
            },
        )
