"""What the router knows about one endpoint: its status, why its last operation failed, and
the fleets it has. The statuses and the moves between them are
:mod:`mce_router.control.status`'s; :meth:`EndpointState.move_to` refuses any other move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..control.resources import FleetSnapshot
from ..control.status import TRANSITIONS, EndpointStatus, InvalidTransition
from ..control.store import StoredEndpoint
from ..spec import EndpointSpec
from .deployment import Deployment


class FailureKind(enum.Enum):
    #: The containers did not start or did not pass the ping health check.
    STARTUP = "startup"
    #: The runtime raised something unexpected while starting them (a bug).
    INTERNAL = "internal"
    #: The operation was cancelled (a deletion cancels a bring-up or an update).
    CANCELLED = "cancelled"
    #: The operation task itself raised (a bug).
    CRASHED = "crashed"
    #: UpdateEndpoint's blue/green rollout rolled back (an alarm fired, or it took too long).
    ROLLED_BACK = "rolled back"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an operation on an endpoint failed. ``message`` is what FailureReason (and
    :class:`~mce_router.errors.EndpointStartupError`) says; the rest stays for code."""

    kind: FailureKind
    message: str
    #: Containers that did not start or did not pass the ping health check.
    failed_containers: tuple[str, ...] = ()

    def reworded(self, message: str) -> Failure:
        """The same failure, told in the words of the operation that met it."""
        return dataclasses.replace(self, message=message)


@dataclass(slots=True, eq=False)
class EndpointState:
    """One endpoint: what it is, what it serves, and what is being done to it."""

    spec: EndpointSpec
    #: The endpoint config that serves (while Creating: the one being brought up).
    config_name: str
    status: EndpointStatus = EndpointStatus.CREATING
    failure_reason: str | None = None
    #: Containers that did not start or did not pass the ping health check (last failure).
    failed_containers: tuple[str, ...] = ()
    #: The fleet in the routing table.
    deployment: Deployment | None = None
    created_at: float = field(default_factory=time.time)
    modified_at: float = field(default_factory=time.time)
    #: What ``deployment`` runs (kept while the containers are down: Failed clears it).
    deployed: FleetSnapshot | None = None
    #: A fleet being brought up: the first one (Creating) or a new one (Updating).
    pending: FleetSnapshot | None = None
    #: Its containers while they start (not in the routing table yet).
    starting: Deployment | None = None
    #: Fleets taken out of the routing table and draining before they stop.
    retiring: list[Deployment] = field(default_factory=list)
    #: The DeploymentConfig of the last UpdateEndpoint that had one (LastDeploymentConfig).
    deployment_config: Mapping[str, Any] | None = None
    #: The new fleet's share of the traffic while a blue/green rollout shifts it.
    traffic_shift: float | None = None
    #: The background work on this endpoint (bring-up, update, redeploy, deletion).
    operation: asyncio.Task[Failure | None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def move_to(self, status: EndpointStatus) -> None:
        """Change the status along :data:`TRANSITIONS` (staying where it is is allowed)."""
        if status is not self.status and status not in TRANSITIONS.get(self.status, ()):
            raise InvalidTransition(f"endpoint {self.name}: {self.status} -> {status}")
        self.status = status

    def reported(self) -> tuple[EndpointStatus, str | None]:
        """EndpointStatus and FailureReason as the API reports them. An InService endpoint
        whose containers cannot all take requests (restarting after a crash, their container
        engine away) is degraded: OutOfService when none can, SystemUpdating while some can,
        with FailureReason naming those that cannot; InService again once they are back. Only
        reported: the state file keeps InService, so a restart redeploys the fleet."""
        if self.status is not EndpointStatus.IN_SERVICE or self.deployment is None:
            return self.status, self.failure_reason
        down = self.deployment.unavailable()
        if not down:
            return self.status, self.failure_reason
        serving = len(self.deployment.slots) - len(down)
        status = EndpointStatus.SYSTEM_UPDATING if serving else EndpointStatus.OUT_OF_SERVICE
        shown = "; ".join(down[:3]) + (f"; and {len(down) - 3} more" if len(down) > 3 else "")
        return status, (
            f"{len(down)} of {len(self.deployment.slots)} containers cannot take requests "
            f"(the router restarts them): {shown}"
        )

    def stored(self, **changes: Any) -> StoredEndpoint:
        """The state file row of this endpoint, with ``changes`` (StoredEndpoint fields)."""
        row = StoredEndpoint(
            name=self.name,
            body=self.spec.to_request(),
            config_name=self.config_name,
            status=str(self.status),
            failure_reason=self.failure_reason,
            created=self.created_at,
            modified=self.modified_at,
            deployed=None if self.deployed is None else self.deployed.to_json(),
            pending=None if self.pending is None else self.pending.to_json(),
        )
        return dataclasses.replace(row, **changes) if changes else row

    def fleets(self) -> list[Deployment]:
        """Every fleet of this endpoint that has containers (serving, starting, retiring)."""
        return [d for d in (self.deployment, self.starting, *self.retiring) if d is not None]

    def container_count(self) -> int:
        """Containers this endpoint runs or starts (its capacity use)."""
        count = sum(len(fleet.slots) for fleet in self.retiring)
        for snapshot in (self.deployed, self.pending):
            if snapshot is not None:
                count += snapshot.container_count
        return count


__all__ = ["EndpointState", "EndpointStatus", "Failure", "FailureKind", "InvalidTransition"]
