"""The Router: owns the listeners, the resources, the deployments and the routing table.

Safe to embed: ``async with Router(config) as router:`` runs in the caller's event loop, keeps no
global state, installs no signal handler and no event-loop policy, and on exit stops everything
it started (listeners, connections, tasks, container processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from .config import RouterConfig
from .dataplane.proxy import RuntimeServer
from .endpoints import Deployment
from .errors import (
    EndpointNotFound,
    EndpointStartupError,
    ResourceInUse,
    ResourceNotFound,
    RouterError,
    ValidationError,
)
from .metrics import RouterMetrics, UsageSource, put_metric_data_requests
from .runtime import ContainerRuntime, ImageRuntime
from .spec import EndpointConfigSpec, EndpointSpec, ModelSpec

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EndpointState:
    spec: EndpointSpec
    config_name: str
    status: str = "Creating"
    failure_reason: str | None = None
    #: Containers that did not start or did not pass the ping health check (when Failed).
    failed_containers: tuple[str, ...] = ()
    deployment: Deployment | None = None
    created_at: float = field(default_factory=time.time)
    modified_at: float = field(default_factory=time.time)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


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
        self.models: dict[str, ModelSpec] = {}
        self.endpoint_configs: dict[str, EndpointConfigSpec] = {}
        self.endpoints: dict[str, EndpointState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        #: None when ``config.metrics.enabled`` is false: the hot path then records nothing.
        self.metrics: RouterMetrics | None = RouterMetrics() if config.metrics.enabled else None

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
        if self._started:
            raise RuntimeError("Router already started")
        self._started = True
        loop = asyncio.get_running_loop()
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self._runtime is None:
                self._runtime = ImageRuntime(config.images, config.process, config.state_dir)
            self._server = RuntimeServer(config.limits, loop, account_id=config.account_id)
            self._listener = await loop.create_server(
                self._server.protocol_factory,
                config.listener.host,
                config.listener.port,
                backlog=4096,
                reuse_address=True,
            )
            self._admin = web.AppRunner(self._admin_app(), access_log=None, handle_signals=False)
            await self._admin.setup()
            self._admin_site = web.TCPSite(
                self._admin, config.listener.host, config.listener.admin_port, reuse_address=True
            )
            await self._admin_site.start()
            if self.metrics is not None:
                self._spawn(
                    self.metrics.run_sampler(
                        self._usage_sources, config.metrics.usage_sample_seconds
                    ),
                    "resource usage sampler",
                )
            await self._apply_declared_resources()
        except BaseException:
            await self.stop(drain_seconds=0)
            raise

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_seconds``), then stop
        every endpoint's containers and close everything."""
        server = self._server
        if self._listener is not None:
            self._listener.close()
        if server is not None:
            server.accepting = False
            server.close_idle_connections()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await server.wait_idle()
            server.abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        deployments = [s.deployment for s in self.endpoints.values() if s.deployment is not None]
        await asyncio.gather(
            *(d.stop(drain_seconds=0) for d in deployments), return_exceptions=True
        )
        for state in self.endpoints.values():
            state.deployment = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        if self._runtime is not None and self._runtime is not self._runtime_override:
            await self._runtime.aclose()

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

    # --- resources ---------------------------------------------------------------------------

    def create_model(self, body: Mapping[str, Any]) -> ModelSpec:
        model = ModelSpec.from_request(
            body, max_containers=self.config.limits.max_containers_per_model
        )
        assert self._runtime is not None
        for index, container in enumerate(model.containers):
            self._runtime.check_image(container.image, f"Containers[{index}].Image")
        if model.name in self.models:
            raise ValidationError(
                f'Cannot create already existing model "{model.name}".',
                field="ModelName",
                rule="must be unique",
            )
        self.models[model.name] = model
        return model

    def create_endpoint_config(self, body: Mapping[str, Any]) -> EndpointConfigSpec:
        endpoint_config = EndpointConfigSpec.from_request(body)
        for index, variant in enumerate(endpoint_config.variants):
            if variant.model_name not in self.models:
                raise ValidationError(
                    f'Could not find model "{variant.model_name}" (ProductionVariants[{index}]'
                    ".ModelName); create it first.",
                    field=f"ProductionVariants[{index}].ModelName",
                    rule="must name an existing model",
                )
        if endpoint_config.name in self.endpoint_configs:
            raise ValidationError(
                f'Cannot create already existing endpoint configuration "{endpoint_config.name}".',
                field="EndpointConfigName",
                rule="must be unique",
            )
        self.endpoint_configs[endpoint_config.name] = endpoint_config
        return endpoint_config

    async def create_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """Create an endpoint: ``Creating`` at once, containers start in the background, then
        ``InService`` or ``Failed``. With ``wait`` (the default) returns once it settled and
        raises :class:`EndpointStartupError` when it failed."""
        spec = EndpointSpec.from_request(body)
        endpoint_config = self.endpoint_configs.get(spec.config_name)
        if endpoint_config is None:
            raise ValidationError(
                f'Could not find endpoint configuration "{spec.config_name}".',
                field="EndpointConfigName",
                rule="must name an existing endpoint configuration",
            )
        if spec.name in self.endpoints:
            raise ResourceInUse(
                f'Cannot create already existing endpoint "{self._endpoint_arn(spec.name)}".'
            )
        state = EndpointState(spec, spec.config_name)
        self.endpoints[spec.name] = state
        models = {v.model_name: self.models[v.model_name] for v in endpoint_config.variants}
        assert self._runtime is not None
        deployment = Deployment(
            spec.name, endpoint_config, models, self.config, self._runtime, self.metrics
        )
        state.deployment = deployment
        self._spawn(self._bring_up(state, deployment), f"create endpoint {spec.name}")
        if wait:
            await state.ready.wait()
            if state.status == "Failed":
                raise EndpointStartupError(
                    state.failure_reason or "endpoint failed", state.failed_containers
                )
        return state

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _usage_sources(self) -> list[UsageSource]:
        return [
            source
            for state in self.endpoints.values()
            if state.deployment is not None
            for source in state.deployment.usage_sources()
        ]

    async def _bring_up(self, state: EndpointState, deployment: Deployment) -> None:
        try:
            route = await deployment.start()
        except EndpointStartupError as exc:
            state.status, state.failure_reason = "Failed", exc.message
            state.failed_containers = exc.failed_containers
            state.deployment = None
            log.error("%s", exc.message)
        except Exception as exc:  # a runtime bug must not leave the endpoint "Creating" forever
            state.status, state.failure_reason = "Failed", f"Internal error: {exc!r}"
            state.deployment = None
            log.exception("endpoint %s failed to start", state.spec.name)
        else:
            server = self.runtime_server
            server.table = server.table.with_endpoint(route)
            state.status = "InService"
            log.info("endpoint %s is InService", state.spec.name)
        finally:
            state.modified_at = time.time()
            state.ready.set()

    async def delete_endpoint(self, name: str, *, drain_seconds: float = 30.0) -> None:
        state = self.endpoints.get(name)
        if state is None:
            raise EndpointNotFound(f'Could not find endpoint "{self._endpoint_arn(name)}".')
        state.status = "Deleting"
        server = self.runtime_server
        server.table = server.table.without_endpoint(name)
        deployment, state.deployment = state.deployment, None
        if deployment is not None:
            await deployment.stop(drain_seconds=drain_seconds)
        self.endpoints.pop(name, None)

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        state = self.endpoints.get(name)
        if state is None:
            raise EndpointNotFound(f'Could not find endpoint "{self._endpoint_arn(name)}".')
        described: dict[str, Any] = {
            "EndpointName": name,
            "EndpointArn": self._endpoint_arn(name),
            "EndpointConfigName": state.config_name,
            "EndpointStatus": state.status,
            "CreationTime": state.created_at,
            "LastModifiedTime": state.modified_at,
        }
        if state.failure_reason:
            described["FailureReason"] = state.failure_reason
        return described

    def _endpoint_arn(self, name: str) -> str:
        config = self.config
        return f"arn:aws:sagemaker:{config.region}:{config.account_id}:endpoint/{name.lower()}"

    async def _apply_declared_resources(self) -> None:
        for body in self.config.models:
            self.create_model(body)
        for body in self.config.endpoint_configs:
            self.create_endpoint_config(body)
        states = [await self.create_endpoint(body, wait=False) for body in self.config.endpoints]
        await asyncio.gather(*(s.ready.wait() for s in states))
        failed = [s for s in states if s.status == "Failed"]
        if failed:
            raise EndpointStartupError(" | ".join(s.failure_reason or s.spec.name for s in failed))

    # --- admin listener ----------------------------------------------------------------------

    def _admin_app(self) -> web.Application:
        app = web.Application()
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


__all__ = ["EndpointState", "ResourceNotFound", "Router", "RouterError"]
