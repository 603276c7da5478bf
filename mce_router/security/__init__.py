"""Authentication (AWS SigV4) and authorization (IAM identity policies) for the router.

The data plane and the control plane use one :class:`Guard` per router config (None when
``auth.mode`` is ``none``)::

    guard = Guard.from_config(auth_config)             # once per config load
    ...
    pending = guard.begin(method, raw_path, raw_query, headers)   # AuthError -> answer 403
    pending.update(body_chunk) ...                                 # as the body arrives
    credential = pending.finish()                                  # AuthError -> 403
    guard.authorize_invoke(credential, endpoint_name, target)      # AccessDenied -> 403
    # control plane: guard.authorize_operation(credential, "CreateModel", params)

Authorization must run before the endpoint or container is looked up, so that a denied caller
gets the same answer whether or not they exist. :func:`mce_router.errors.wire_error` gives the
status (403), code and body of any :class:`AuthError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .actions import (
    AUTOSCALING_SERVICE,
    INVOKE_ENDPOINT_ACTION,
    autoscaling_request,
    control_plane_requests,
    endpoint_arn,
    endpoint_config_arn,
    invoke_request,
    model_arn,
)
from .audit import AUDIT_LOGGER_NAME, AuditLog
from .canonical import Headers
from .config import AuthConfig, AuthMode
from .errors import AccessDenied, AuthenticationError, AuthError, PolicyError
from .patterns import TARGET_CONTAINER_KEY
from .policy import (
    AuthzRequest,
    Decision,
    DecisionKind,
    PolicyDocument,
    PolicySet,
    StatementRef,
    access_denied_message,
    evaluate,
)
from .sigv4 import Body, Credential, PendingSignature, SigV4Verifier

__all__ = [
    "AUDIT_LOGGER_NAME",
    "AUTOSCALING_SERVICE",
    "INVOKE_ENDPOINT_ACTION",
    "TARGET_CONTAINER_KEY",
    "AccessDenied",
    "AuditLog",
    "AuthConfig",
    "AuthError",
    "AuthMode",
    "AuthenticationError",
    "AuthzRequest",
    "Credential",
    "Decision",
    "DecisionKind",
    "Guard",
    "PendingSignature",
    "PolicyDocument",
    "PolicyError",
    "PolicySet",
    "SigV4Verifier",
    "StatementRef",
    "access_denied_message",
    "control_plane_requests",
    "endpoint_arn",
    "endpoint_config_arn",
    "evaluate",
    "invoke_request",
    "model_arn",
]


#: Bound on :meth:`Guard.authorize_invoke`'s decision cache (cleared whole when full).
INVOKE_DECISION_CACHE_SIZE = 4096


class Guard:
    """Authentication and authorization for one router config, with auditing."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
    ) -> None:
        if not config.enabled:
            raise ValueError(
                "Guard needs auth.mode sigv4; with mode none there is nothing to check"
            )
        self.config = config
        self.region = config.region
        self.account_id = config.account_id
        self.verifier = _verifier(config, "sagemaker", clock)
        # STS requests (GetCallerIdentity on the admin port) are signed for the service "sts".
        self.sts_verifier = _verifier(config, "sts", clock)
        # Application Auto Scaling (on the admin port too) signs for its own service name.
        self._verifiers = {
            "sagemaker": self.verifier,
            "sts": self.sts_verifier,
            AUTOSCALING_SERVICE: _verifier(config, AUTOSCALING_SERVICE, clock),
        }
        self.audit = audit or AuditLog(config.audit)
        #: (policy set, endpoint name, target) -> (request, decision); see authorize_invoke.
        self._invoke_decisions: dict[
            tuple[PolicySet, str, str | None], tuple[AuthzRequest, Decision]
        ] = {}

    @classmethod
    def from_config(cls, config: AuthConfig, **kwargs: Any) -> Guard | None:
        """A Guard, or None when authentication is off (``mode: none``)."""
        return cls(config, **kwargs) if config.enabled else None

    # -- authentication ---------------------------------------------------------------------

    def begin(
        self, method: bytes | str, raw_path: bytes, raw_query: bytes, headers: Headers
    ) -> PendingSignature:
        """Header checks; the body is fed to the result, whose ``finish()`` returns the
        credential. Raises :class:`AuthenticationError`."""
        return self.verifier.begin(method, raw_path, raw_query, headers)

    def authenticate(
        self,
        method: bytes | str,
        raw_path: bytes,
        raw_query: bytes,
        headers: Headers,
        body: Body = b"",
        *,
        sts: bool = False,
        service: str = "sagemaker",
    ) -> Credential:
        """Verify a whole request signed for ``service``; ``sts``: one signed for STS
        (GetCallerIdentity on the admin port), which has nothing to authorize: AWS answers it
        whatever the policies say."""
        verifier = self._verifiers["sts" if sts else service]
        return verifier.verify(method, raw_path, raw_query, headers, body)

    # -- authorization ----------------------------------------------------------------------

    def check(self, credential: Credential, request: AuthzRequest) -> Decision:
        """Evaluate and audit without raising."""
        decision = credential.policy_set.evaluate(request)
        self.audit.record(credential.principal, credential.access_key_id, request, decision)
        return decision

    def authorize(self, credential: Credential, request: AuthzRequest) -> Decision:
        """Evaluate, audit, and raise :class:`AccessDenied` unless allowed."""
        decision = self.check(credential, request)
        if not decision.allowed:
            raise AccessDenied(access_denied_message(credential.principal, request, decision))
        return decision

    def authorize_invoke(
        self, credential: Credential, endpoint_name: str, target_container: str | None
    ) -> Decision:
        """``sagemaker:InvokeEndpoint`` on the endpoint (either invocation path);
        ``target_container`` is the header's value, None when the header is absent.

        The request and its decision are pure functions of the credential's (immutable) policy
        set, this Guard's region and account, the endpoint name and the target: the only
        condition key an invocation's context has is the target (policy conditions test
        nothing else: no time, no source address), so they are cached per those inputs, in a
        bounded dict. Audit still records every request."""
        key = (credential.policy_set, endpoint_name, target_container)
        cached = self._invoke_decisions.get(key)
        if cached is None:
            request = invoke_request(self.region, self.account_id, endpoint_name, target_container)
            cached = (request, credential.policy_set.evaluate(request))
            if len(self._invoke_decisions) >= INVOKE_DECISION_CACHE_SIZE:
                self._invoke_decisions.clear()
            self._invoke_decisions[key] = cached
        request, decision = cached
        if self.audit.enabled:
            self.audit.record(credential.principal, credential.access_key_id, request, decision)
        if decision.kind != "allow":
            raise AccessDenied(access_denied_message(credential.principal, request, decision))
        return decision

    def authorize_operation(
        self,
        credential: Credential,
        operation: str,
        params: Mapping[str, Any],
        *,
        service: str = "sagemaker",
    ) -> tuple[Decision, ...]:
        """``sagemaker:<operation>`` on every resource the call names (all must be allowed);
        for Application Auto Scaling ``application-autoscaling:<operation>``."""
        if service == AUTOSCALING_SERVICE:
            requests: tuple[AuthzRequest, ...] = (autoscaling_request(operation, params),)
        else:
            requests = control_plane_requests(operation, params, self.region, self.account_id)
        return tuple(self.authorize(credential, request) for request in requests)


def _verifier(config: AuthConfig, service: str, clock: Callable[[], float]) -> SigV4Verifier:
    return SigV4Verifier(
        config.credentials,
        config.region,
        service,
        max_skew_seconds=config.max_skew_seconds,
        clock=clock,
        reject_replays=config.reject_replays,
    )
