"""Errors of authentication (SigV4), authorization (IAM policies) and policy documents.

They live here rather than in :mod:`mce_router.errors` because each one carries its own wire
form: AWS answers authentication failures with codes that depend on what exactly is wrong, so
the code is chosen where the failure is detected, not looked up by class.
"""

from __future__ import annotations

from typing import Literal

from ..errors import ConfigError, Plane, RouterError, WireError

AuthErrorCode = Literal[
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "UnrecognizedClientException",
    "AccessDeniedException",
]

#: Every authentication and authorization failure answers 403, as the issue asks and as AWS does
#: for these codes on its JSON protocols (AWS's generic "common errors" table lists 400 for
#: IncompleteSignature; botocore parses and does not retry either status, so one status keeps
#: the data plane simple). Subclasses may override.
AUTH_FAILURE_STATUS = 403


class AuthError(RouterError):
    """A request that may not proceed. ``code`` is what boto3 raises as ``error.response
    ["Error"]["Code"]``; ``message`` says what is wrong and never contains a secret."""

    status: int = AUTH_FAILURE_STATUS

    def __init__(self, code: AuthErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: AuthErrorCode = code

    def wire_error(self, plane: Plane = "runtime") -> WireError:
        """The status, code and body to answer with; the same on both planes (AWS uses these
        codes unchanged on its rest-json and json-1.1 services)."""
        del plane  # same form on both planes; the parameter mirrors errors.wire_error
        return WireError(self.status, self.code, self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class AuthenticationError(AuthError):
    """The SigV4 signature is missing, malformed, expired, from an unknown key, or wrong."""


class AccessDenied(AuthError):
    """An authenticated principal whose policies do not allow the request."""

    def __init__(self, message: str) -> None:
        super().__init__("AccessDeniedException", message)


class PolicyError(ConfigError):
    """An IAM policy document is malformed or uses something this evaluator does not support.
    The message names the policy, the statement index and the field."""
