"""What start() does after the listeners are up: bring back the endpoints of the state file
(restart recovery), then apply the config's declared ``models`` / ``endpoint_configs`` /
``endpoints`` through the same calls as the API.
"""

from __future__ import annotations

import asyncio
import logging

from ..config import RouterConfig
from ..control.catalog import Catalog, unreadable
from ..control.resources import FleetSnapshot
from ..control.store import Store
from ..errors import ConfigError, EndpointStartupError, ValidationError
from ..spec import EndpointConfigSpec, EndpointSpec, ModelSpec
from .manager import EndpointManager
from .state import EndpointState, EndpointStatus

log = logging.getLogger(__name__)

Status = EndpointStatus


def recover_endpoints(store: Store, manager: EndpointManager) -> list[EndpointState]:
    """Bring back every endpoint of the state file; returns those being redeployed (they
    were serving when the router went down), which start() waits for.

    InService -> redeployed (SystemUpdating meanwhile), InService again or Failed;
    Updating -> the fleet that served is redeployed; a pending update is dropped and
    FailureReason says so; Creating -> brought up again; Deleting -> deleted; Failed stays.
    """
    redeploying = []
    for row in store.list_endpoints():
        if row.status == Status.DELETING:
            store.delete_endpoint(row.name)
            log.info("endpoint %s: finished its deletion after a restart", row.name)
            continue
        try:
            state = EndpointState(
                EndpointSpec.from_request(row.body),
                row.config_name,
                EndpointStatus(row.status),
                row.failure_reason,
                created_at=row.created,
                modified_at=row.modified,
            )
            if row.deployed is not None:
                state.deployed = FleetSnapshot.from_json(row.deployed)
            if row.pending is not None:
                state.pending = FleetSnapshot.from_json(row.pending)
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            raise unreadable(store.path, "endpoint", row.name, exc) from exc
        manager.endpoints[row.name] = state
        if state.status is Status.FAILED:
            continue
        if state.deployed is None:
            # Crashed while Creating: start the requested fleet again.
            if state.pending is None:  # pragma: no cover - never written by this router
                state.move_to(Status.FAILED)
                state.failure_reason = "no fleet recorded"
                manager.persist(state)
                continue
            state.move_to(Status.CREATING)
            manager.persist(state)
            manager.start_operation(state, manager.bring_up(state, state.pending), "create")
            continue
        deployed = state.deployed
        reason = state.failure_reason
        if state.pending is not None:
            reason = (
                f"The update to endpoint configuration {state.pending.config.name} was "
                "interrupted by a router restart; the endpoint serves "
                f"{deployed.config.name} again. Call UpdateEndpoint again to apply it."
            )
        elif state.status is Status.UPDATING:
            reason = None  # the new fleet was serving already; only the drain was cut short
        # The file says InService (what the endpoint will be); until the containers pass
        # their health checks the API reports SystemUpdating.
        state.move_to(Status.IN_SERVICE)
        state.pending, state.failure_reason = None, reason
        manager.persist(state)
        state.move_to(Status.SYSTEM_UPDATING)
        manager.start_operation(
            state,
            manager.bring_up(
                state,
                deployed,
                failure_prefix=(
                    "The router restarted and the containers of endpoint configuration "
                    f"{deployed.config.name} did not come back: "
                ),
                reason_on_success=reason,
            ),
            "redeploy",
        )
        redeploying.append(state)
    return redeploying


async def apply_declared_resources(
    config: RouterConfig, catalog: Catalog, manager: EndpointManager
) -> None:
    """The config's ``models``/``endpoint_configs``/``endpoints`` through the same methods
    as the API; applying the same config again changes nothing.

    A declared model or endpoint config that exists with the same definition is left
    alone, with another definition is a :class:`ConfigError` (they are immutable). A
    declared endpoint that is absent is created, Failed is deleted and created again, on
    another endpoint config is updated to the declared one. Startup fails when a declared
    endpoint does not end up serving its declared config.
    """
    max_containers = config.limits.max_containers_per_model
    for index, body in enumerate(config.models):
        model = ModelSpec.from_request(body, max_containers=max_containers)
        existing_model = catalog.models.get(model.name)
        if existing_model is None:
            try:
                await catalog.check_model(body)
            except ValidationError as exc:  # e.g. an image the container engine lacks
                raise ConfigError(
                    f"config.models[{index}] (ModelName {model.name!r}): {exc.message}"
                ) from exc
            catalog.create_model(body)
        elif existing_model.spec.to_request() != model.to_request():
            raise _declared_conflict(config, "models", index, "model", model.name)
    for index, body in enumerate(config.endpoint_configs):
        endpoint_config = EndpointConfigSpec.from_request(body)
        existing_config = catalog.endpoint_configs.get(endpoint_config.name)
        if existing_config is None:
            catalog.create_endpoint_config(body)
        elif existing_config.spec.to_request() != endpoint_config.to_request():
            raise _declared_conflict(
                config, "endpoint_configs", index, "endpoint configuration", endpoint_config.name
            )
    changing: list[EndpointState] = []
    for body in config.endpoints:
        spec = EndpointSpec.from_request(body)
        state = manager.endpoints.get(spec.name)
        if state is not None:
            await manager.settled(state)  # a bring-up resumed by recover_endpoints
            state = manager.endpoints.get(spec.name)
        if state is not None and state.status is Status.FAILED:
            log.info("declared endpoint %s is Failed: creating it again", spec.name)
            await manager.delete_endpoint(spec.name, drain_seconds=0)
            state = None
        if state is None:
            changing.append(await manager.create_endpoint(body, wait=False))
        elif state.config_name.lower() != spec.config_name.lower():
            log.info(
                "declared endpoint %s: updating from %s to %s",
                spec.name,
                state.config_name,
                spec.config_name,
            )
            update = {"EndpointName": spec.name, "EndpointConfigName": spec.config_name}
            changing.append(await manager.update_endpoint(update, wait=False))
    failures = await asyncio.gather(*(manager.settled(state) for state in changing))
    reasons = [failure.message for failure in failures if failure is not None]
    if reasons:
        failed = tuple(name for state in changing for name in state.failed_containers)
        raise EndpointStartupError(" | ".join(reasons), failed)


def _declared_conflict(
    config: RouterConfig, section: str, index: int, what: str, name: str
) -> ConfigError:
    return ConfigError(
        f"config.{section}[{index}]: {what} {name!r} already exists (in the state file "
        f"{config.state_path}) with another definition, and SageMaker {what}s cannot "
        "change. Give the new definition a new name and point the endpoint (through its "
        f"endpoint config) at it, or delete the existing {what} first."
    )
