"""The endpoint state machine's vocabulary: every status, and the moves between them.

Endpoint statuses::

    Creating -> InService | Failed
    InService -> Updating -> InService      (new fleet serving; or the old one, FailureReason set)
    any -> Deleting -> (gone)
    SystemUpdating: an InService endpoint being redeployed after a router restart

:data:`TRANSITIONS` is the one place these moves are written (the endpoint manager and restart
recovery in :mod:`mce_router.endpoints` make them); ListEndpoints' ``StatusEquals`` accepts
every :class:`EndpointStatus`.
"""

from __future__ import annotations

import enum


class EndpointStatus(enum.StrEnum):
    """Every endpoint status SageMaker defines (ListEndpoints' StatusEquals accepts any of
    them); this router reaches the six of :data:`TRANSITIONS`."""

    OUT_OF_SERVICE = "OutOfService"
    CREATING = "Creating"
    UPDATING = "Updating"
    SYSTEM_UPDATING = "SystemUpdating"
    ROLLING_BACK = "RollingBack"
    IN_SERVICE = "InService"
    DELETING = "Deleting"
    FAILED = "Failed"
    UPDATE_ROLLBACK_FAILED = "UpdateRollbackFailed"


_S = EndpointStatus
#: status -> the statuses it may move to. Staying in a status is not a move.
TRANSITIONS: dict[EndpointStatus, frozenset[EndpointStatus]] = {
    _S.CREATING: frozenset({_S.IN_SERVICE, _S.FAILED, _S.DELETING}),
    # SystemUpdating: redeployed after a restart (recovery).
    _S.IN_SERVICE: frozenset({_S.UPDATING, _S.SYSTEM_UPDATING, _S.DELETING}),
    # InService: the new fleet serves, or the old one still does (FailureReason set); also
    # what recovery records before redeploying the fleet that served.
    _S.UPDATING: frozenset({_S.IN_SERVICE, _S.DELETING}),
    _S.SYSTEM_UPDATING: frozenset({_S.IN_SERVICE, _S.FAILED, _S.DELETING}),
    _S.FAILED: frozenset({_S.DELETING}),
    _S.DELETING: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A bug: code tried a status move that :data:`TRANSITIONS` does not allow."""
