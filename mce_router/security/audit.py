"""One structured line per authorization decision, on the ``mce_router.audit`` logger.

Each line is a JSON object: ``principal``, ``access_key_id``, ``action``, ``resource``,
``target`` (the target container, or null), ``decision`` (allow / explicit-deny /
implicit-deny) and ``statement`` (the Sid of the statement that decided, else
``policy[i].Statement[j]``, null for an implicit deny). The same fields are attached to the
record as ``record.audit`` for handlers that format records themselves.

Cheap when off: :meth:`AuditLog.record` returns after one attribute test when auditing is
disabled in the config, and after ``Logger.isEnabledFor`` (cached by :mod:`logging`) when the
logger does not take INFO records; nothing is formatted in either case.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson

from .policy import AuthzRequest, Decision

AUDIT_LOGGER_NAME: Final = "mce_router.audit"


class AuditLog:
    __slots__ = ("enabled", "logger")

    def __init__(self, enabled: bool, logger: logging.Logger | None = None) -> None:
        self.enabled = enabled
        self.logger = logger or logging.getLogger(AUDIT_LOGGER_NAME)

    def record(
        self, principal: str, access_key_id: str, request: AuthzRequest, decision: Decision
    ) -> None:
        if not self.enabled or not self.logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "principal": principal,
            "access_key_id": access_key_id,
            "action": request.action,
            "resource": request.resource,
            "target": request.target_container,
            "decision": decision.kind,
            "statement": decision.statement.label if decision.statement else None,
        }
        self.logger.info(orjson.dumps(fields).decode(), extra={"audit": fields})
