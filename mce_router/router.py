"""The Router: owns the listeners, the resources, the deployments and the routing table.

Safe to embed: ``async with Router(config) as router:`` runs in the caller's event loop, keeps no
global state, installs no signal handler and no event-loop policy, and on exit stops everything
it started (listeners, connections, tasks, container processes).

The resource methods (``create_model`` ... ``delete_endpoint``) are the one code path for the
SageMaker control plane: the JSON 1.1 API on the admin port (:mod:`mce_router.control.api`) and
the declarative ``models``/``endpoint_configs``/``endpoints`` of the config both call them. Each
validates, writes the state file, then changes memory, without awaiting in between: calls run
one at a time on the event loop, so concurrent API calls cannot interleave inside one.

Endpoint statuses::

    Creating -> InService | Failed
    InService -> Updating -> InService      (new fleet serving; or the old one, FailureReason set)
    any -> Deleting -> (gone)
    SystemUpdating: an InService endpoint being redeployed after a router restart

Long work (starting containers, draining, stopping) runs in one background task per endpoint,
``EndpointState.operation``; DeleteEndpoint cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import tempfile
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from .config import RouterConfig
from .control.api import MAX_BODY_BYTES, ControlApi
from .control.listing import ListItem, list_page, parse_list_request
from .control.resources import (
    EndpointConfigRecord,
    FleetSnapshot,
    ModelRecord,
    NameMap,
    ResourceKind,
    arn,
    truncate_reason,
)
from .control.store import DuplicateName, Store, StoredEndpoint, acquire_lock
from .control.validation import check_name
from .dataplane.proxy import EndpointRoute, RuntimeServer
from .endpoints import Deployment
from .errors import (
    ConfigError,
    EndpointConfigNotFound,
    EndpointNotFound,
    EndpointStartupError,
    ModelNotFound,
    ResourceInUse,
    ResourceLimitExceeded,
    ResourceNotFound,
    RouterError,
    RouterStartupError,
    ServiceUnavailable,
    ValidationError,
)
from .metrics import RouterMetrics, UsageSource, put_metric_data_requests
from .runtime import ContainerRuntime, ImageRuntime
from .security import Guard
from .spec import EndpointConfigSpec, EndpointSpec, ModelSpec

log = logging.getLogger(__name__)

#: What an operation task returns: None when it succeeded, else why it failed.
Outcome = str | None


@dataclass(slots=True, eq=False)
class EndpointState:
    """One endpoint: what it is, what it serves, and what is being done to it."""

    spec: EndpointSpec
    #: The endpoint config that serves (while Creating: the one being brought up).
    config_name: str
    status: str = "Creating"
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
    #: The background work on this endpoint (bring-up, update, redeploy, deletion).
    operation: asyncio.Task[Outcome] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def stored(self, **changes: Any) -> StoredEndpoint:
        """The state file row of this endpoint, with ``changes`` (StoredEndpoint fields)."""
        row = StoredEndpoint(
            name=self.name,
            body=self.spec.to_request(),
            config_name=self.config_name,
            status=self.status,
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


class Router:
    """A multi-container endpoint router.

    :param config: the frozen router configuration.
    :param runtime: how images become containers; defaults to the ``images:`` of ``config``
        (local processes or external URLs). Inject another runtime (e.g. a container engine,
        or a fake in tests) here.
    """

    def __init__(self, config: RouterConfig, *, runtime: ContainerRuntime | None = None) -> None:
        self.config = config
        self._runtime_override = runtime
        self._runtime: ContainerRuntime | None = runtime
        self._server: RuntimeServer | None = None
        self._listener: asyncio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        self._store: Store | None = None
        self._state_dir_lock: int | None = None
        self._drain_cut = asyncio.Event()
        #: Names compare ignoring case, as in SageMaker.
        self.models: NameMap[ModelRecord] = NameMap()
        self.endpoint_configs: NameMap[EndpointConfigRecord] = NameMap()
        self.endpoints: NameMap[EndpointState] = NameMap()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False
        #: None when ``config.metrics.enabled`` is false: the hot path then records nothing.
        self.metrics: RouterMetrics | None = RouterMetrics() if config.metrics.enabled else None
        #: SigV4 + IAM checks for both planes; None when ``auth.mode`` is none.
        self.guard: Guard | None = Guard.from_config(config.auth)

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the state file, listen, bring back every endpoint the state file holds (those
        that were InService serve again before this returns), then apply the config's
        declared resources."""
        if self._started:
            raise RuntimeError("Router already started")
        self._started = True
        loop = asyncio.get_running_loop()
        config = self.config
        _check_listener_security(config)
        _prepare_state_dir(config.state_dir)
        try:
            # Before the runtime reaps "orphans" in state_dir/run: a second router on the same
            # state directory would otherwise kill the first one's containers.
            self._state_dir_lock = acquire_lock(
                config.state_dir / "run" / "router.lock", f"state directory {config.state_dir}"
            )
            self._store = Store.open(config.state_path)
            if self._runtime is None:
                self._runtime = ImageRuntime(config.images, config.process, config.state_dir)
            self._server = RuntimeServer(
                config.limits, loop, account_id=config.account_id, guard=self.guard
            )
            with _listening("runtime API", config.listener.host, config.listener.port, "port"):
                self._listener = await loop.create_server(
                    self._server.protocol_factory,
                    config.listener.host,
                    config.listener.port,
                    backlog=4096,
                    reuse_address=True,
                )
            self._admin = web.AppRunner(
                self._admin_app(), access_log=None, handle_signals=False, shutdown_timeout=5.0
            )
            await self._admin.setup()
            self._admin_site = web.TCPSite(
                self._admin, config.listener.host, config.listener.admin_port, reuse_address=True
            )
            with _listening(
                "admin and control-plane",
                config.listener.host,
                config.listener.admin_port,
                "admin_port",
            ):
                await self._admin_site.start()
            if self.metrics is not None:
                self._spawn(
                    self.metrics.run_sampler(
                        self._usage_sources, config.metrics.usage_sample_seconds
                    ),
                    "resource usage sampler",
                )
            self._load_resources()
            recovering = self._recover_endpoints()
            await asyncio.gather(*(self._settled(state) for state in recovering))
            await self._apply_declared_resources()
        except BaseException:
            await self.stop(drain_seconds=0)
            raise

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_seconds``), then stop
        every endpoint's containers and close everything. The state file keeps every endpoint
        as it was: the next start brings them back."""
        self._stopping = True
        server = self._server
        if self._listener is not None:
            self._listener.close()
        if server is not None:
            server.accepting = False
            server.close_idle_connections()
            idle = asyncio.ensure_future(server.wait_idle())
            cut = asyncio.ensure_future(self._drain_cut.wait())
            await asyncio.wait(
                (idle, cut), timeout=drain_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            idle.cancel()
            cut.cancel()
            server.abort_all()
        if self._admin is not None:
            # No control-plane call may start new work once the tasks below are cancelled.
            await self._admin.cleanup()
            self._admin = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        fleets = [fleet for state in self.endpoints.values() for fleet in state.fleets()]
        await self._stop_fleets(fleets)
        for state in self.endpoints.values():
            state.deployment = state.starting = None
            state.retiring.clear()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._runtime is not None and self._runtime is not self._runtime_override:
            await self._runtime.aclose()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._state_dir_lock is not None:
            os.close(self._state_dir_lock)
            self._state_dir_lock = None

    async def _stop_fleets(self, fleets: list[Deployment]) -> None:
        """Stop the containers gracefully, unless abort_drain() is (or gets) called: then kill
        the ones still running at once."""
        graceful = asyncio.ensure_future(
            asyncio.gather(*(d.stop(drain_seconds=0) for d in fleets), return_exceptions=True)
        )
        cut = asyncio.ensure_future(self._drain_cut.wait())
        await asyncio.wait((graceful, cut), return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        if not graceful.done():
            await asyncio.gather(
                *(d.stop(drain_seconds=0, grace_seconds=0) for d in fleets), return_exceptions=True
            )
        await graceful

    def abort_drain(self) -> None:
        """Cut a running :meth:`stop` short (a second Ctrl-C): in-flight requests are aborted
        and the containers killed now instead of after their stop grace period; the state file
        is still closed cleanly. Safe to call at any time."""
        self._drain_cut.set()

    @property
    def runtime_port(self) -> int:
        assert self._listener is not None, "router not started"
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int:
        assert self._admin is not None, "router not started"
        addresses = self._admin.addresses
        return int(addresses[0][1])

    @property
    def runtime_url(self) -> str:
        return f"http://{self._url_host()}:{self.runtime_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self._url_host()}:{self.admin_port}"

    def _url_host(self) -> str:
        host = self.config.listener.host
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def runtime_server(self) -> RuntimeServer:
        assert self._server is not None, "router not started"
        return self._server

    def arn(self, kind: ResourceKind, name: str) -> str:
        return arn(self.config.region, self.config.account_id, kind, name)

    def _writable_store(self) -> Store:
        """The state file, for a call about to change something."""
        if self._stopping:
            raise ServiceUnavailable("The router is stopping; retry against its next start.")
        if self._store is None:
            raise RuntimeError("Router not started: call start() or use 'async with Router'")
        return self._store

    # --- models ------------------------------------------------------------------------------

    def create_model(self, body: Mapping[str, Any]) -> ModelSpec:
        """CreateModel: validate (spec rules, every image mapped), persist, return the model."""
        model = ModelSpec.from_request(
            body, max_containers=self.config.limits.max_containers_per_model
        )
        assert self._runtime is not None
        for index, container in enumerate(model.containers):
            self._runtime.check_image(container.image, f"Containers[{index}].Image")
        store = self._writable_store()
        if model.name in self.models:
            raise self._already_exists("model", model.name)
        created = time.time()
        try:
            store.insert_resource("models", model.name, model.to_request(), created)
        except DuplicateName:
            raise self._already_exists("model", model.name) from None
        self.models[model.name] = ModelRecord(model, created)
        return model

    def describe_model(self, name: str) -> dict[str, Any]:
        record = self._model(check_name(name, "ModelName"))
        return record.describe(self.arn("model", record.spec.name))

    def list_models(self, params: Mapping[str, Any]) -> dict[str, Any]:
        request = parse_list_request(
            params, operation="ListModels", result_key="Models", sort_keys=("Name", "CreationTime")
        )
        items = [
            ListItem(name, record.created, record.summary(self.arn("model", name)))
            for name, record in self.models.items()
        ]
        return list_page(items, request)

    def delete_model(self, name: str) -> None:
        """DeleteModel. Allowed while endpoint configs or endpoints use the model, as in
        SageMaker: endpoints keep serving their snapshot; configs naming it can no longer be
        deployed."""
        record = self._model(check_name(name, "ModelName"))
        self._writable_store().delete_resource("models", record.spec.name)
        del self.models[record.spec.name]

    def _model(self, name: str) -> ModelRecord:
        record = self.models.get(name)
        if record is None:
            raise ModelNotFound(f'Could not find model "{self.arn("model", name)}".')
        return record

    # --- endpoint configs --------------------------------------------------------------------

    def create_endpoint_config(self, body: Mapping[str, Any]) -> EndpointConfigSpec:
        """CreateEndpointConfig: every variant's model must exist."""
        endpoint_config = EndpointConfigSpec.from_request(body)
        for index, variant in enumerate(endpoint_config.variants):
            if variant.model_name not in self.models:
                raise ValidationError(
                    f'Could not find model "{self.arn("model", variant.model_name)}" '
                    f"(ProductionVariants[{index}].ModelName); create it with CreateModel first.",
                    field=f"ProductionVariants[{index}].ModelName",
                    rule="must name an existing model",
                )
        store = self._writable_store()
        if endpoint_config.name in self.endpoint_configs:
            raise self._already_exists("endpoint-config", endpoint_config.name)
        created = time.time()
        try:
            store.insert_resource(
                "endpoint_configs", endpoint_config.name, endpoint_config.to_request(), created
            )
        except DuplicateName:
            raise self._already_exists("endpoint-config", endpoint_config.name) from None
        self.endpoint_configs[endpoint_config.name] = EndpointConfigRecord(endpoint_config, created)
        return endpoint_config

    def describe_endpoint_config(self, name: str) -> dict[str, Any]:
        record = self._endpoint_config(check_name(name, "EndpointConfigName"))
        return record.describe(self.arn("endpoint-config", record.spec.name))

    def list_endpoint_configs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        request = parse_list_request(
            params,
            operation="ListEndpointConfigs",
            result_key="EndpointConfigs",
            sort_keys=("Name", "CreationTime"),
        )
        items = [
            ListItem(name, record.created, record.summary(self.arn("endpoint-config", name)))
            for name, record in self.endpoint_configs.items()
        ]
        return list_page(items, request)

    def delete_endpoint_config(self, name: str) -> None:
        """DeleteEndpointConfig. Allowed while endpoints use it, as in SageMaker: they keep
        serving (and keep reporting its name) until updated to another config."""
        record = self._endpoint_config(check_name(name, "EndpointConfigName"))
        self._writable_store().delete_resource("endpoint_configs", record.spec.name)
        del self.endpoint_configs[record.spec.name]

    def _endpoint_config(self, name: str) -> EndpointConfigRecord:
        record = self.endpoint_configs.get(name)
        if record is None:
            raise EndpointConfigNotFound(
                f'Could not find endpoint configuration "{self.arn("endpoint-config", name)}".'
            )
        return record

    def _already_exists(self, kind: ResourceKind, name: str) -> ValidationError:
        what = {"model": "model", "endpoint-config": "endpoint configuration"}[kind]
        return ValidationError(
            f'Cannot create already existing {what} "{self.arn(kind, name)}". Names are unique '
            "ignoring case; pick another name, or delete the existing one first.",
            field="ModelName" if kind == "model" else "EndpointConfigName",
            rule="must be unique",
        )

    # --- endpoints ---------------------------------------------------------------------------

    async def create_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """CreateEndpoint: ``Creating`` at once, containers start in the background, then
        ``InService`` or ``Failed``. With ``wait`` (the default) returns once it settled and
        raises :class:`EndpointStartupError` when it failed."""
        spec = EndpointSpec.from_request(body)
        if spec.name in self.endpoints:
            raise ResourceInUse(
                f'Cannot create already existing endpoint "{self.arn("endpoint", spec.name)}".'
            )
        snapshot = self._snapshot(spec.config_name)
        self._check_capacity(snapshot, "CreateEndpoint")
        store = self._writable_store()
        now = time.time()
        state = EndpointState(
            spec, snapshot.config.name, "Creating", created_at=now, modified_at=now
        )
        state.pending = snapshot
        try:
            store.insert_endpoint(state.stored())
        except DuplicateName:
            raise ResourceInUse(
                f'Cannot create already existing endpoint "{self.arn("endpoint", spec.name)}".'
            ) from None
        self.endpoints[spec.name] = state
        self._start_operation(state, self._bring_up(state, snapshot), "create")
        if wait:
            failure = await self._settled(state)
            if failure is not None:
                raise EndpointStartupError(failure, state.failed_containers)
        return state

    async def update_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """UpdateEndpoint, blue/green: the new config's containers start and pass the ping
        health check while the old ones serve; the routing table then swaps in one assignment;
        the old fleet drains (``limits.drain_timeout_seconds``) and stops. If the new fleet
        fails, the old one keeps serving and FailureReason says why. With ``wait`` returns
        once it settled and raises :class:`EndpointStartupError` when the update failed.

        ``RetainAllVariantProperties``, ``ExcludeRetainedVariantProperties``,
        ``DeploymentConfig`` and ``RetainDeploymentConfig`` are accepted and ignored: there is
        one deployment strategy (all at once, blue/green) and no variant property is changed
        outside endpoint configs.
        """
        spec = EndpointSpec.from_request(body)
        state = self._endpoint(spec.name)
        if state.status != "InService":
            advice = {
                "Failed": "Delete it and create it again.",
                "Deleting": "It is being deleted.",
            }.get(state.status, "Wait until it is InService (boto3 waiter endpoint_in_service).")
            raise ValidationError(
                f'Cannot update endpoint "{self.arn("endpoint", state.name)}" while its status '
                f"is {state.status}; UpdateEndpoint needs an InService endpoint. {advice}",
                field="EndpointName",
                rule="endpoint must be InService",
            )
        snapshot = self._snapshot(spec.config_name)
        self._check_capacity(snapshot, "UpdateEndpoint")
        now = time.time()
        self._writable_store().save_endpoint(
            state.stored(status="Updating", pending=snapshot.to_json(), modified=now)
        )
        state.status, state.pending, state.modified_at = "Updating", snapshot, now
        self._start_operation(state, self._roll_out(state, snapshot), "update")
        if wait:
            failure = await self._settled(state)
            if failure is not None:
                raise EndpointStartupError(failure, state.failed_containers)
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
        if state.status != "Deleting":
            now = time.time()
            self._writable_store().save_endpoint(state.stored(status="Deleting", modified=now))
            state.status, state.modified_at = "Deleting", now
            server = self.runtime_server
            server.table = server.table.without_endpoint(state.name)
            previous = state.operation
            if previous is not None:
                # Now, not in the teardown task: a bring-up whose containers just passed their
                # checks must not get to put the endpoint back in service before that task runs.
                previous.cancel()
            drain = self.config.limits.drain_timeout_seconds
            if drain_seconds is not None:
                drain = drain_seconds
            self._start_operation(state, self._tear_down(state, previous, drain), "delete")
        if wait:
            await self._settled(state)

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        state = self._endpoint(check_name(name, "EndpointName"))
        described: dict[str, Any] = {
            "EndpointName": state.name,
            "EndpointArn": self.arn("endpoint", state.name),
            "EndpointConfigName": state.config_name,
        }
        if state.deployed is not None:
            described["ProductionVariants"] = state.deployed.variant_summaries(
                running=state.deployment is not None
            )
        described["EndpointStatus"] = state.status
        if state.failure_reason:
            described["FailureReason"] = truncate_reason(state.failure_reason)
        described["CreationTime"] = state.created_at
        described["LastModifiedTime"] = state.modified_at
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
            summary = {
                "EndpointName": name,
                "EndpointArn": self.arn("endpoint", name),
                "CreationTime": state.created_at,
                "LastModifiedTime": state.modified_at,
                "EndpointStatus": state.status,
            }
            items.append(ListItem(name, state.created_at, summary, state.modified_at, state.status))
        return list_page(items, request)

    async def wait_settled(self, name: str) -> Outcome:
        """Wait until the endpoint's background operation (if any) ends; None if it
        succeeded, else why it failed."""
        return await self._settled(self._endpoint(name))

    def _endpoint(self, name: str) -> EndpointState:
        state = self.endpoints.get(name)
        if state is None:
            raise EndpointNotFound(f'Could not find endpoint "{self.arn("endpoint", name)}".')
        return state

    def _snapshot(self, config_name: str) -> FleetSnapshot:
        """The endpoint config and its models as they are now, every image runnable here."""
        config_record = self.endpoint_configs.get(config_name)
        if config_record is None:
            raise ValidationError(
                "Could not find endpoint configuration "
                f'"{self.arn("endpoint-config", config_name)}"; create it with '
                "CreateEndpointConfig first.",
                field="EndpointConfigName",
                rule="must name an existing endpoint configuration",
            )
        endpoint_config = config_record.spec
        models: dict[str, ModelSpec] = {}
        assert self._runtime is not None
        for index, variant in enumerate(endpoint_config.variants):
            model_record = self.models.get(variant.model_name)
            if model_record is None:
                raise ValidationError(
                    f'Could not find model "{self.arn("model", variant.model_name)}", named by '
                    f"ProductionVariants[{index}].ModelName of endpoint configuration "
                    f'"{endpoint_config.name}": it was deleted after the configuration was '
                    "created. Create the model again, or use another endpoint configuration.",
                    field="EndpointConfigName",
                    rule="every model of the endpoint configuration must exist",
                )
            for position, container in enumerate(model_record.spec.containers):
                self._runtime.check_image(
                    container.image, f"model {model_record.spec.name} Containers[{position}].Image"
                )
            models[variant.model_name] = model_record.spec
        return FleetSnapshot(endpoint_config, models, time.time())

    def _check_capacity(self, snapshot: FleetSnapshot, operation: str) -> None:
        limit = self.config.limits.max_running_containers
        running = sum(self._containers_of(state) for state in self.endpoints.values())
        wanted = snapshot.container_count
        if running + wanted > limit:
            raise ResourceLimitExceeded(
                f"{operation} would start {wanted} containers while this router runs or starts "
                f"{running} already, beyond limits.max_running_containers ({limit}). Delete "
                "endpoints you no longer need, or raise the limit in the router config."
            )

    @staticmethod
    def _containers_of(state: EndpointState) -> int:
        count = sum(len(fleet.slots) for fleet in state.retiring)
        for snapshot in (state.deployed, state.pending):
            if snapshot is not None:
                count += snapshot.container_count
        return count

    # --- background operations ---------------------------------------------------------------

    def _start_operation(
        self, state: EndpointState, work: Coroutine[Any, Any, Outcome], verb: str
    ) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"{verb} endpoint {state.name}")
        self._tasks.add(task)
        task.add_done_callback(self._operation_done)
        state.operation = task

    def _operation_done(self, task: asyncio.Task[Outcome]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", task.get_name(), exc_info=task.exception())

    async def _settled(self, state: EndpointState) -> Outcome:
        """Wait for the endpoint's current operation (a waiter being cancelled does not cancel
        it); None when it succeeded, else why not (a deletion cancels a bring-up: a failure)."""
        task = state.operation
        if task is None:
            return None
        await asyncio.wait([task])
        if task.cancelled():
            return f"the operation on endpoint {state.name} was cancelled"
        exception = task.exception()
        if exception is not None:
            return f"the operation on endpoint {state.name} failed: {exception!r}"
        return task.result()

    def _new_fleet(self, state: EndpointState, snapshot: FleetSnapshot) -> Deployment:
        assert self._runtime is not None
        return Deployment(
            state.name, snapshot.config, snapshot.models, self.config, self._runtime, self.metrics
        )

    async def _start_fleet(
        self, state: EndpointState, snapshot: FleetSnapshot
    ) -> tuple[Deployment, EndpointRoute] | str:
        """Start a fleet outside the routing table: (fleet, route), or why it failed. Cancelled,
        it stops what it started."""
        fleet = self._new_fleet(state, snapshot)
        state.starting = fleet
        try:
            route = await fleet.start()
        except EndpointStartupError as exc:
            state.failed_containers = exc.failed_containers
            log.error("%s", exc.message)
            return exc.message
        except Exception as exc:  # a runtime bug must not leave the endpoint Creating forever
            log.exception("the containers of endpoint %s failed to start", state.name)
            state.failed_containers = ()
            return f"Internal error while starting the containers: {exc!r}"
        finally:
            state.starting = None
        state.failed_containers = ()
        return fleet, route

    def _put_in_service(
        self, state: EndpointState, fleet: Deployment, route: EndpointRoute, snapshot: FleetSnapshot
    ) -> None:
        """Swap the fleet into the routing table: one assignment, so each request sees either
        the old route or the new one."""
        server = self.runtime_server
        server.table = server.table.with_endpoint(route)
        state.deployment = fleet
        state.deployed = snapshot
        state.pending = None
        state.config_name = snapshot.config.name

    def _persist(self, state: EndpointState) -> None:
        state.modified_at = time.time()
        if self._store is not None:
            self._store.save_endpoint(state.stored())

    async def _bring_up(
        self,
        state: EndpointState,
        snapshot: FleetSnapshot,
        *,
        failure_prefix: str = "",
        reason_on_success: str | None = None,
    ) -> Outcome:
        """Start the endpoint's first fleet (Creating, or again after a restart)."""
        started = await self._start_fleet(state, snapshot)
        if isinstance(started, str):
            state.status = "Failed"
            state.failure_reason = failure_prefix + started
            state.deployed = state.pending = None
            self._persist(state)
            return state.failure_reason
        fleet, route = started
        self._put_in_service(state, fleet, route, snapshot)
        state.status = "InService"
        state.failure_reason = reason_on_success
        self._persist(state)
        log.info("endpoint %s is InService", state.name)
        return None

    async def _roll_out(self, state: EndpointState, snapshot: FleetSnapshot) -> Outcome:
        """UpdateEndpoint's background half: new fleet up, swap, old fleet drained and stopped."""
        serving = state.config_name
        started = await self._start_fleet(state, snapshot)
        if isinstance(started, str):
            state.status = "InService"
            state.pending = None
            state.failure_reason = (
                f"Update to endpoint configuration {snapshot.config.name} failed, so the "
                f"endpoint still serves {serving} with its previous containers: {started}"
            )
            self._persist(state)
            return state.failure_reason
        fleet, route = started
        old = state.deployment
        self._put_in_service(state, fleet, route, snapshot)
        state.failure_reason = None
        if old is not None:
            state.retiring.append(old)
        # Still Updating until the old fleet is gone; a restart from here on redeploys the new
        # fleet (deployed) and has nothing pending.
        self._persist(state)
        log.info(
            "endpoint %s: traffic moved from endpoint config %s to %s",
            state.name,
            serving,
            snapshot.config.name,
        )
        if old is not None:
            await self._retire(state, old)
        state.status = "InService"
        self._persist(state)
        log.info("endpoint %s is InService with endpoint config %s", state.name, state.config_name)
        return None

    async def _retire(self, state: EndpointState, fleet: Deployment) -> None:
        """Drain a fleet that is out of the routing table, then stop it."""
        deadline = self.config.limits.drain_timeout_seconds
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
        self, state: EndpointState, previous: asyncio.Task[Outcome] | None, drain_seconds: float
    ) -> Outcome:
        """DeleteEndpoint's background half: the endpoint is out of the routing table already."""
        if previous is not None:
            await asyncio.wait([previous])
        fleets = state.fleets()
        if drain_seconds > 0:
            await asyncio.gather(*(fleet.drain(drain_seconds) for fleet in fleets))
        await asyncio.gather(*(fleet.stop(drain_seconds=0) for fleet in fleets))
        state.deployment = state.starting = None
        state.retiring.clear()
        if self._store is not None:
            self._store.delete_endpoint(state.name)
        if self.endpoints.get(state.name) is state:
            del self.endpoints[state.name]
        log.info("endpoint %s deleted", state.name)
        return None

    # --- restart recovery and declared resources ---------------------------------------------

    def _load_resources(self) -> None:
        assert self._store is not None
        for row in self._store.list_resources("models"):
            try:
                # Not the current limit: a lowered limit does not take away existing models.
                model = ModelSpec.from_request(
                    row.body, max_containers=_stored_containers(row.body)
                )
            except ValidationError as exc:
                raise self._unreadable("model", row.name, exc) from exc
            self.models[row.name] = ModelRecord(model, row.created)
        for row in self._store.list_resources("endpoint_configs"):
            try:
                endpoint_config = EndpointConfigSpec.from_request(row.body)
            except ValidationError as exc:
                raise self._unreadable("endpoint configuration", row.name, exc) from exc
            self.endpoint_configs[row.name] = EndpointConfigRecord(endpoint_config, row.created)

    def _recover_endpoints(self) -> list[EndpointState]:
        """Bring back every endpoint of the state file; returns those being redeployed (they
        were serving when the router went down), which start() waits for.

        InService -> redeployed (SystemUpdating meanwhile), InService again or Failed;
        Updating -> the fleet that served is redeployed; a pending update is dropped and
        FailureReason says so; Creating -> brought up again; Deleting -> deleted; Failed stays.
        """
        assert self._store is not None
        redeploying = []
        for row in self._store.list_endpoints():
            if row.status == "Deleting":
                self._store.delete_endpoint(row.name)
                log.info("endpoint %s: finished its deletion after a restart", row.name)
                continue
            try:
                state = EndpointState(
                    EndpointSpec.from_request(row.body),
                    row.config_name,
                    row.status,
                    row.failure_reason,
                    created_at=row.created,
                    modified_at=row.modified,
                )
                if row.deployed is not None:
                    state.deployed = FleetSnapshot.from_json(row.deployed)
                if row.pending is not None:
                    state.pending = FleetSnapshot.from_json(row.pending)
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                raise self._unreadable("endpoint", row.name, exc) from exc
            self.endpoints[row.name] = state
            if row.status == "Failed":
                continue
            if state.deployed is None:
                # Crashed while Creating: start the requested fleet again.
                if state.pending is None:  # pragma: no cover - never written by this router
                    state.status, state.failure_reason = "Failed", "no fleet recorded"
                    self._persist(state)
                    continue
                state.status = "Creating"
                self._persist(state)
                self._start_operation(state, self._bring_up(state, state.pending), "create")
                continue
            deployed = state.deployed
            reason = state.failure_reason
            if state.pending is not None:
                reason = (
                    f"The update to endpoint configuration {state.pending.config.name} was "
                    "interrupted by a router restart; the endpoint serves "
                    f"{deployed.config.name} again. Call UpdateEndpoint again to apply it."
                )
            elif row.status == "Updating":
                reason = None  # the new fleet was serving already; only the drain was cut short
            # The file says InService (what the endpoint will be); until the containers pass
            # their health checks the API reports SystemUpdating.
            state.pending, state.failure_reason, state.status = None, reason, "InService"
            self._persist(state)
            state.status = "SystemUpdating"
            self._start_operation(
                state,
                self._bring_up(
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

    async def _apply_declared_resources(self) -> None:
        """The config's ``models``/``endpoint_configs``/``endpoints`` through the same methods
        as the API; applying the same config again changes nothing.

        A declared model or endpoint config that exists with the same definition is left
        alone, with another definition is a :class:`ConfigError` (they are immutable). A
        declared endpoint that is absent is created, Failed is deleted and created again, on
        another endpoint config is updated to the declared one. Startup fails when a declared
        endpoint does not end up serving its declared config.
        """
        max_containers = self.config.limits.max_containers_per_model
        for index, body in enumerate(self.config.models):
            model = ModelSpec.from_request(body, max_containers=max_containers)
            existing_model = self.models.get(model.name)
            if existing_model is None:
                self.create_model(body)
            elif existing_model.spec.to_request() != model.to_request():
                raise self._declared_conflict("models", index, "model", model.name)
        for index, body in enumerate(self.config.endpoint_configs):
            endpoint_config = EndpointConfigSpec.from_request(body)
            existing_config = self.endpoint_configs.get(endpoint_config.name)
            if existing_config is None:
                self.create_endpoint_config(body)
            elif existing_config.spec.to_request() != endpoint_config.to_request():
                raise self._declared_conflict(
                    "endpoint_configs", index, "endpoint configuration", endpoint_config.name
                )
        changing: list[EndpointState] = []
        for body in self.config.endpoints:
            spec = EndpointSpec.from_request(body)
            state = self.endpoints.get(spec.name)
            if state is not None:
                await self._settled(state)  # a bring-up resumed by _recover_endpoints
                state = self.endpoints.get(spec.name)
            if state is not None and state.status == "Failed":
                log.info("declared endpoint %s is Failed: creating it again", spec.name)
                await self.delete_endpoint(spec.name, drain_seconds=0)
                state = None
            if state is None:
                changing.append(await self.create_endpoint(body, wait=False))
            elif state.config_name.lower() != spec.config_name.lower():
                log.info(
                    "declared endpoint %s: updating from %s to %s",
                    spec.name,
                    state.config_name,
                    spec.config_name,
                )
                update = {"EndpointName": spec.name, "EndpointConfigName": spec.config_name}
                changing.append(await self.update_endpoint(update, wait=False))
        failures = await asyncio.gather(*(self._settled(state) for state in changing))
        reasons = [reason for reason in failures if reason is not None]
        if reasons:
            failed = tuple(name for state in changing for name in state.failed_containers)
            raise EndpointStartupError(" | ".join(reasons), failed)

    def _unreadable(self, what: str, name: str, exc: Exception) -> ConfigError:
        detail = exc.message if isinstance(exc, RouterError) else repr(exc)
        return ConfigError(
            f"state file {self.config.state_path}: the stored {what} {name!r} cannot be read "
            f"({detail}). Was the file written by another version of mce-router?"
        )

    def _declared_conflict(self, section: str, index: int, what: str, name: str) -> ConfigError:
        return ConfigError(
            f"config.{section}[{index}]: {what} {name!r} already exists (in the state file "
            f"{self.config.state_path}) with another definition, and SageMaker {what}s cannot "
            "change. Give the new definition a new name and point the endpoint (through its "
            f"endpoint config) at it, or delete the existing {what} first."
        )

    # --- helpers -----------------------------------------------------------------------------

    def _usage_sources(self) -> list[UsageSource]:
        return [
            source
            for state in self.endpoints.values()
            for fleet in state.fleets()
            for source in fleet.usage_sources()
        ]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- admin listener ----------------------------------------------------------------------

    def _admin_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        # The SageMaker control plane (JSON 1.1): POST / with X-Amz-Target: SageMaker.<Op>.
        app.router.add_post("/", ControlApi(self).handle)
        app.router.add_get("/ping", self._admin_ping)
        app.router.add_get("/metrics", self._admin_metrics)
        app.router.add_get("/metrics/cloudwatch", self._admin_cloudwatch)
        return app

    async def _admin_ping(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _admin_metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            raise web.HTTPNotFound(text="metrics are disabled (config metrics.enabled: false)\n")
        return web.Response(
            body=self.metrics.prometheus_text(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _admin_cloudwatch(self, request: web.Request) -> web.Response:
        """``?include_current=true`` adds the unfinished minute; ``?since=EPOCH`` drops older
        minutes; ``?format=put-metric-data`` answers ready ``put_metric_data(**r)`` requests."""
        if self.metrics is None:
            raise web.HTTPNotFound(text="metrics are disabled (config metrics.enabled: false)\n")
        query = request.query
        try:
            since = float(query["since"]) if "since" in query else None
        except ValueError:
            raise web.HTTPBadRequest(text="since must be epoch seconds\n") from None
        datums = self.metrics.cloudwatch_datums(
            include_current=query.get("include_current", "").lower() in ("1", "true", "yes"),
            since=since,
        )
        if query.get("format") == "put-metric-data":
            namespaces = {"AWS/SageMaker": self.config.metrics.cloudwatch_sagemaker_namespace}
            payload: dict[str, Any] = {
                "PutMetricDataRequests": put_metric_data_requests(datums, namespaces)
            }
        else:
            payload = {"MetricData": datums}
        return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _stored_containers(body: Mapping[str, Any]) -> int:
    containers = body.get("Containers")
    return max(1, len(containers)) if isinstance(containers, list) else 1


__all__ = ["EndpointState", "ResourceNotFound", "Router", "RouterError"]


def _prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory and prove it writable, so a bad one is one clear line."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as exc:
        raise RouterStartupError(
            f"state directory {state_dir}: cannot create or write it "
            f"({exc.strerror or exc}); set state_dir (or --state-dir) to a writable directory"
        ) from exc


@contextlib.contextmanager
def _listening(what: str, host: str, port: int, setting: str) -> Iterator[None]:
    """Turn a failed bind into a line that names the listener, its address and the setting."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            flag = "--port" if setting == "port" else "--admin-port"
            hint = f" (another program has it; choose another listen.{setting} or {flag})"
        raise RouterStartupError(
            f"{what} listener: cannot listen on {host}:{port}: {reason}{hint}"
        ) from exc


def _check_listener_security(config: RouterConfig) -> None:
    """Refuse to expose an unauthenticated router by accident: beyond loopback, ``auth.mode:
    none`` must be written down, and is then logged as a warning."""
    auth = config.auth
    host = config.listener.host
    warning = auth.insecure_listener_warning(host)
    if warning is None:
        return
    if not auth.explicit:
        raise ConfigError(
            f"config.auth: the router would listen on {host or '*'} without authentication. "
            "Configure auth.mode: sigv4 with credentials, or write auth: {mode: none} to accept "
            "that anyone who can reach it may invoke and manage endpoints."
        )
    log.warning("%s", warning)
