"""Errors of authentication (SigV4), authorization (IAM policies) and policy documents.

They are part of the package's one error tree in :mod:`mce_router.errors`, which also maps
them to wire responses; this module names them for the security code.
"""

from __future__ import annotations

from ..errors import AccessDenied, AuthenticationError, AuthError, AuthErrorCode, PolicyError

__all__ = ["AccessDenied", "AuthError", "AuthErrorCode", "AuthenticationError", "PolicyError"]
