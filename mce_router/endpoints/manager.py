"""CreateEndpoint / UpdateEndpoint / DeleteEndpoint / DescribeEndpoint / ListEndpoints: the
endpoint state machine, the capacity limit, and the swaps of the routing table.

Each call validates, writes the state file, then changes memory, without awaiting in between.
Long work (starting containers, draining, stopping) runs in one background task per endpoint,
``EndpointState.operation``, which returns None when it succeeded or the :class:`Failure`;
DeleteEndpoint cancels it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from ..aio import finished_before
from ..arns import Arns
from ..config import RouterConfig
from ..control.catalog import Catalog
from ..control.listing import ListItem, list_page, parse_list_request
from ..control.resources import FleetSnapshot, NameMap, truncate_reason
from ..control.store import DuplicateName, Store
from ..control.tags import parse_tags
from ..control.validation import check_name
from ..dataplane.proxy import EndpointRoute, RuntimeServer
from ..errors import (
    EndpointNotFound,
    EndpointStartupError,
    ResourceInUse,
    ResourceLimitExceeded,
    ValidationError,
)
from ..metrics import RouterMetrics, UsageSource
from ..runtime.base import ContainerRuntime
from ..spec import EndpointSpec
from .deployment import Deployment
from .rollout import BlueGreenPlan, parse_deployment_config, shift_traffic
from .state import EndpointState, EndpointStatus, Failure, FailureKind

log = logging.getLogger(__name__)

Status = EndpointStatus
#: What an operation task returns: None when it succeeded, else why it failed.
Operation = Coroutine[Any, Any, Failure | None]


class EndpointManager:
    """The endpoints of one router: their states, operations and fleets."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        store: Store,
        catalog: Catalog,
        runtime: ContainerRuntime,
        server: RuntimeServer,
        metrics: RouterMetrics | None,
        arns: Arns,
    ) -> None:
        self._config = config
        self._store = store
        self._catalog = catalog
        self._runtime = runtime
        self._server = server
        self._metrics = metrics
        self._arns = arns
        #: Names compare ignoring case, as in SageMaker.
        self.endpoints: NameMap[EndpointState] = NameMap()
        self._operations: set[asyncio.Task[Failure | None]] = set()

    # --- the control-plane calls -------------------------------------------------------------

    async def create_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """CreateEndpoint: ``Creating`` at once, containers start in the background, then
        ``InService`` or ``Failed``. With ``wait`` (the default) returns once it settled and
        raises :class:`EndpointStartupError` when it failed."""
        spec = EndpointSpec.from_request(body)
        tags = parse_tags(body.get("Tags"))
        if spec.name in self.endpoints:
            raise self._exists(spec.name)
        snapshot = self._catalog.snapshot(spec.config_name)
        self._check_capacity(snapshot, "CreateEndpoint")
        store = self._store.for_change()
        now = time.time()
        state = EndpointState(
            spec, snapshot.config.name, Status.CREATING, created_at=now, modified_at=now
        )
        state.pending = snapshot
        try:
            store.insert_endpoint(state.stored(), tags)
        except DuplicateName:
            raise self._exists(spec.name) from None
        self.endpoints[spec.name] = state
        self.start_operation(state, self.bring_up(state, snapshot), "create")
        if wait:
            await self._raise_failure(state)
        return state

    async def update_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """UpdateEndpoint, blue/green: the new config's containers start and pass the ping
        health check while the old ones serve; the routing table then swaps in one assignment;
        the old fleet drains (``limits.drain_timeout_seconds``) and stops. If the new fleet
        fails, the old one keeps serving and FailureReason says why. With ``wait`` returns
        once it settled and raises :class:`EndpointStartupError` when the update failed.

        ``DeploymentConfig.BlueGreenUpdatePolicy`` shifts the traffic in steps and rolls back
        when an alarm fires (:mod:`mce_router.endpoints.rollout`); ``RetainDeploymentConfig``
        reuses the last one. ``RetainAllVariantProperties`` and
        ``ExcludeRetainedVariantProperties`` are accepted and ignored: no variant property is
        changed outside endpoint configs.
        """
        spec = EndpointSpec.from_request(body)
        state = self._endpoint(spec.name)
        raw_plan = body.get("DeploymentConfig")
        if raw_plan is None and body.get("RetainDeploymentConfig") is True:
            raw_plan = state.deployment_config
        plan = parse_deployment_config(raw_plan, self._config.alarms)
        if state.status is not Status.IN_SERVICE:
            advice = {
                Status.FAILED: "Delete it and create it again.",
                Status.DELETING: "It is being deleted.",
            }.get(state.status, "Wait until it is InService (boto3 waiter endpoint_in_service).")
            raise ValidationError(
                f'Cannot update endpoint "{self._arns.of("endpoint", state.name)}" while its '
                f"status is {state.status}; UpdateEndpoint needs an InService endpoint. {advice}",
                field="EndpointName",
                rule="endpoint must be InService",
            )
        snapshot = self._catalog.snapshot(spec.config_name)
        self._check_capacity(snapshot, "UpdateEndpoint")
        now = time.time()
        self._store.for_change().save_endpoint(
            state.stored(status=str(Status.UPDATING), pending=snapshot.to_json(), modified=now)
        )
        state.move_to(Status.UPDATING)
        state.pending, state.modified_at = snapshot, now
        if raw_plan is not None:
            state.deployment_config = raw_plan
        self.start_operation(state, self._roll_out(state, snapshot, plan), "update")
        if wait:
            await self._raise_failure(state)
        return state

    async def delete_endpoint(
        self, name: str, *, wait: bool = True, drain_seconds: float | None = None
    ) -> None:
        """DeleteEndpoint: ``Deleting`` at once, out of the routing table; in-flight requests
        finish (up to ``drain_seconds``, default ``limits.drain_timeout_seconds``), then the
        containers stop and the endpoint is gone. A bring-up or update in progress is cancelled
        and its containers stopped. Deleting an endpoint that is being deleted already is
        accepted and changes nothing. With ``wait`` returns once it is gone."""
        state = self._endpoint(check_name(name, "EndpointName"))
        if state.status is not Status.DELETING:
            now = time.time()
            self._store.for_change().save_endpoint(
                state.stored(status=str(Status.DELETING), modified=now)
            )
            state.move_to(Status.DELETING)
            state.modified_at = now
            server = self._server
            server.set_table(server.table.without_endpoint(state.name))
            previous = state.operation
            if previous is not None:
                # Now, not in the teardown task: a bring-up whose containers just passed their
                # checks must not get to put the endpoint back in service before that task runs.
                previous.cancel()
            drain = self._config.limits.drain_timeout_seconds
            if drain_seconds is not None:
                drain = drain_seconds
            self.start_operation(state, self._tear_down(state, previous, drain), "delete")
        if wait:
            await self.settled(state)

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        state = self._endpoint(check_name(name, "EndpointName"))
        described: dict[str, Any] = {
            "EndpointName": state.name,
            "EndpointArn": self._arns.of("endpoint", state.name),
            "EndpointConfigName": state.config_name,
        }
        if state.deployed is not None:
            described["ProductionVariants"] = state.deployed.variant_summaries(
                running=state.deployment is not None
            )
        status, failure_reason = state.reported()
        described["EndpointStatus"] = str(status)
        if failure_reason:
            described["FailureReason"] = truncate_reason(failure_reason)
        described["CreationTime"] = state.created_at
        described["LastModifiedTime"] = state.modified_at
        if state.deployment_config is not None:
            described["LastDeploymentConfig"] = dict(state.deployment_config)
        if state.pending is not None and state.deployed is not None:
            described["PendingDeploymentSummary"] = {
                "EndpointConfigName": state.pending.config.name,
                "ProductionVariants": state.pending.variant_summaries(running=False),
                "StartTime": state.pending.at,
            }
        return described

    def list_endpoints(self, params: Mapping[str, Any]) -> dict[str, Any]:
        request = parse_list_request(
            params,
            operation="ListEndpoints",
            result_key="Endpoints",
            sort_keys=("Name", "CreationTime", "Status"),
            with_modified_and_status=True,
        )
        items = []
        for name, state in self.endpoints.items():
            status = str(state.reported()[0])
            summary = {
                "EndpointName": name,
                "EndpointArn": self._arns.of("endpoint", name),
                "CreationTime": state.created_at,
                "LastModifiedTime": state.modified_at,
                "EndpointStatus": status,
            }
            items.append(ListItem(name, state.created_at, summary, state.modified_at, status))
        return list_page(items, request)

    def arn(self, name: str) -> str:
        return self._arns.of("endpoint", name)

    def get(self, name: str) -> EndpointState:
        """The endpoint named ``name``; :class:`EndpointNotFound` when there is none."""
        return self._endpoint(name)

    def _endpoint(self, name: str) -> EndpointState:
        state = self.endpoints.get(name)
        if state is None:
            raise EndpointNotFound(f'Could not find endpoint "{self._arns.of("endpoint", name)}".')
        return state

    def _exists(self, name: str) -> ResourceInUse:
        return ResourceInUse(
            f'Cannot create already existing endpoint "{self._arns.of("endpoint", name)}".'
        )

    def _check_capacity(self, snapshot: FleetSnapshot, operation: str) -> None:
        limit = self._config.limits.max_running_containers
        running = sum(state.container_count() for state in self.endpoints.values())
        wanted = snapshot.container_count
        if running + wanted > limit:
            raise ResourceLimitExceeded(
                f"{operation} would start {wanted} containers while this router runs or starts "
                f"{running} already, beyond limits.max_running_containers ({limit}). Delete "
                "endpoints you no longer need, or raise the limit in the router config."
            )

    # --- background operations ---------------------------------------------------------------

    def start_operation(self, state: EndpointState, work: Operation, verb: str) -> None:
        """Run ``work`` as the endpoint's background operation."""
        task = asyncio.get_running_loop().create_task(work, name=f"{verb} endpoint {state.name}")
        self._operations.add(task)
        task.add_done_callback(self._operation_done)
        state.operation = task

    def _operation_done(self, task: asyncio.Task[Failure | None]) -> None:
        self._operations.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", task.get_name(), exc_info=task.exception())

    async def settled(self, state: EndpointState) -> Failure | None:
        """Wait for the endpoint's current operation (a waiter being cancelled does not cancel
        it); None when it succeeded, else why not (a deletion cancels a bring-up: a failure)."""
        task = state.operation
        if task is None:
            return None
        await asyncio.wait([task])
        if task.cancelled():
            return Failure(
                FailureKind.CANCELLED, f"the operation on endpoint {state.name} was cancelled"
            )
        exception = task.exception()
        if exception is not None:
            return Failure(
                FailureKind.CRASHED,
                f"the operation on endpoint {state.name} failed: {exception!r}",
            )
        return task.result()

    async def _raise_failure(self, state: EndpointState) -> None:
        failure = await self.settled(state)
        if failure is not None:
            raise EndpointStartupError(failure.message, state.failed_containers)

    async def _start_fleet(
        self, state: EndpointState, snapshot: FleetSnapshot
    ) -> tuple[Deployment, EndpointRoute] | Failure:
        """Start a fleet outside the routing table: (fleet, route), or why it failed. Cancelled,
        it stops what it started."""
        fleet = Deployment(
            state.name,
            snapshot.config,
            snapshot.models,
            self._config,
            self._runtime,
            self._metrics,
            synced=self._server.synced,
        )
        state.starting = fleet
        try:
            route = await fleet.start()
        except EndpointStartupError as exc:
            state.failed_containers = exc.failed_containers
            log.error("%s", exc.message)
            return Failure(FailureKind.STARTUP, exc.message, exc.failed_containers)
        except Exception as exc:  # a runtime bug must not leave the endpoint Creating forever
            log.exception("the containers of endpoint %s failed to start", state.name)
            state.failed_containers = ()
            return Failure(
                FailureKind.INTERNAL, f"Internal error while starting the containers: {exc!r}"
            )
        finally:
            state.starting = None
        state.failed_containers = ()
        return fleet, route

    def _put_in_service(
        self, state: EndpointState, fleet: Deployment, route: EndpointRoute, snapshot: FleetSnapshot
    ) -> None:
        """Swap the fleet into the routing table: one assignment, so each request sees either
        the old route or the new one."""
        server = self._server
        server.set_table(server.table.with_endpoint(route))
        state.deployment = fleet
        state.deployed = snapshot
        state.pending = None
        state.config_name = snapshot.config.name

    def persist(self, state: EndpointState) -> None:
        """Write the endpoint's row (once the router stopped, nothing is written)."""
        state.modified_at = time.time()
        if not self._store.closed:
            self._store.save_endpoint(state.stored())

    async def bring_up(
        self,
        state: EndpointState,
        snapshot: FleetSnapshot,
        *,
        failure_prefix: str = "",
        reason_on_success: str | None = None,
    ) -> Failure | None:
        """Start the endpoint's first fleet (Creating, or again after a restart)."""
        started = await self._start_fleet(state, snapshot)
        if isinstance(started, Failure):
            failure = started.reworded(failure_prefix + started.message)
            state.move_to(Status.FAILED)
            state.failure_reason = failure.message
            state.deployed = state.pending = None
            self.persist(state)
            return failure
        fleet, route = started
        self._put_in_service(state, fleet, route, snapshot)
        state.move_to(Status.IN_SERVICE)
        state.failure_reason = reason_on_success
        self.persist(state)
        log.info("endpoint %s is InService", state.name)
        return None

    async def _roll_out(
        self, state: EndpointState, snapshot: FleetSnapshot, plan: BlueGreenPlan | None = None
    ) -> Failure | None:
        """UpdateEndpoint's background half: new fleet up, swap (in the plan's steps, rolled
        back when an alarm fires), old fleet drained and stopped."""
        serving = state.config_name
        started = await self._start_fleet(state, snapshot)
        if isinstance(started, Failure):
            failure = started.reworded(
                f"Update to endpoint configuration {snapshot.config.name} failed, so the "
                f"endpoint still serves {serving} with its previous containers: "
                f"{started.message}"
            )
            state.move_to(Status.IN_SERVICE)
            state.pending = None
            state.failure_reason = failure.message
            self.persist(state)
            return failure
        fleet, route = started
        old = state.deployment
        if plan is not None and old is not None and old.route is not None:
            rolled_back = await self._shift(state, plan, old, fleet)
            if rolled_back is not None:
                return Failure(
                    FailureKind.ROLLED_BACK,
                    f"Update to endpoint configuration {snapshot.config.name} was rolled back, "
                    f"so the endpoint still serves {serving} with its previous containers: "
                    f"{rolled_back}.",
                )
        self._put_in_service(state, fleet, route, snapshot)
        state.failure_reason = None
        if old is not None:
            state.retiring.append(old)
        # Still Updating until the old fleet is gone; a restart from here on redeploys the new
        # fleet (deployed) and has nothing pending.
        self.persist(state)
        log.info(
            "endpoint %s: traffic moved from endpoint config %s to %s",
            state.name,
            serving,
            snapshot.config.name,
        )
        if old is not None:
            await self._retire(state, old)
        state.move_to(Status.IN_SERVICE)
        self.persist(state)
        log.info("endpoint %s is InService with endpoint config %s", state.name, state.config_name)
        return None

    async def _shift(
        self, state: EndpointState, plan: BlueGreenPlan, old: Deployment, new: Deployment
    ) -> str | None:
        """Shift traffic to ``new`` step by step; on a rollback stop it, put the endpoint back
        InService on the old config with FailureReason, and answer why."""
        state.starting = new  # one of the endpoint's fleets: deletion and shutdown stop it
        state.traffic_shift = 0.0

        def step(share: float) -> None:
            state.traffic_shift = share

        try:
            reason = await shift_traffic(plan, old, new, self._server, step)
        finally:
            state.traffic_shift = None
        # Only now: cancelled (DeleteEndpoint, shutdown), the new fleet stays one of the
        # endpoint's fleets, so that whoever cancelled stops its containers.
        state.starting = None
        if reason is None:
            return None
        state.retiring.append(new)
        state.move_to(Status.IN_SERVICE)
        state.pending = None
        state.failure_reason = f"Deployment rolled back: {reason}"
        self.persist(state)
        await self._retire(state, new)
        return reason

    async def _retire(self, state: EndpointState, fleet: Deployment) -> None:
        """Drain a fleet that is out of the routing table, then stop it."""
        deadline = self._config.limits.drain_timeout_seconds
        if not await fleet.drain(deadline):
            log.warning(
                "endpoint %s: %d requests still in flight on the replaced containers after "
                "%.1f s (limits.drain_timeout_seconds); stopping them anyway",
                state.name,
                fleet.in_flight,
                deadline,
            )
        await fleet.stop(drain_seconds=0)
        state.retiring.remove(fleet)

    async def _tear_down(
        self,
        state: EndpointState,
        previous: asyncio.Task[Failure | None] | None,
        drain_seconds: float,
    ) -> Failure | None:
        """DeleteEndpoint's background half: the endpoint is out of the routing table already."""
        if previous is not None:
            await asyncio.wait([previous])
        fleets = state.fleets()
        if drain_seconds > 0:
            await asyncio.gather(*(fleet.drain(drain_seconds) for fleet in fleets))
        await asyncio.gather(*(fleet.stop(drain_seconds=0) for fleet in fleets))
        state.deployment = state.starting = None
        state.retiring.clear()
        if not self._store.closed:
            self._store.delete_endpoint(state.name)
        if self.endpoints.get(state.name) is state:
            del self.endpoints[state.name]
        log.info("endpoint %s deleted", state.name)
        return None

    # --- the router's side -------------------------------------------------------------------

    def usage_sources(self) -> list[UsageSource]:
        return [
            source
            for state in self.endpoints.values()
            for fleet in state.fleets()
            for source in fleet.usage_sources()
        ]

    async def stop(self, kill_now: asyncio.Event | None = None) -> None:
        """Cancel every operation, then stop every fleet at once: SIGTERM, SIGKILL after the
        stop grace period, or at once as soon as ``kill_now`` is set. The state file keeps
        every endpoint as it was: the next start brings them back."""
        for task in list(self._operations):
            task.cancel()
        await asyncio.gather(*self._operations, return_exceptions=True)
        fleets = [fleet for state in self.endpoints.values() for fleet in state.fleets()]
        graceful = asyncio.ensure_future(
            asyncio.gather(*(d.stop(drain_seconds=0) for d in fleets), return_exceptions=True)
        )
        if kill_now is not None and not await finished_before(graceful, kill_now):
            # A second stop of the same fleets, without grace, kills what the first waits for.
            await asyncio.gather(
                *(d.stop(drain_seconds=0, grace_seconds=0) for d in fleets), return_exceptions=True
            )
        await graceful
        for state in self.endpoints.values():
            state.deployment = state.starting = None
            state.retiring.clear()
