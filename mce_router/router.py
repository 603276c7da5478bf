"""The Router: the composition root. It opens the state file, builds the parts (catalog,
endpoint manager, data-plane server, admin app), listens, and stops them all.

Safe to embed: ``async with Router(config) as router:`` runs in the caller's event loop, keeps no
global state, installs no signal handler and no event-loop policy, and on exit stops everything
it started (listeners, connections, tasks, container processes).

The resource methods (``create_model`` ... ``delete_endpoint``) are the one code path for the
SageMaker control plane: the JSON 1.1 API on the admin port (:mod:`mce_router.admin`) and the
declarative ``models``/``endpoint_configs``/``endpoints`` of the config both call them; they
live in :class:`~mce_router.control.catalog.Catalog` (models, endpoint configs) and
:class:`~mce_router.endpoints.manager.EndpointManager` (endpoints, their statuses and fleets).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .admin.app import AdminApp
from .admin.autoscaling_api import AutoScalingApi
from .admin.control_api import ControlApi
from .admin.sts import StsApi
from .aio import cancelled, finished_before
from .arns import Arns, ResourceKind
from .config import RouterConfig
from .control.autoscaling import AutoScaling
from .control.catalog import Catalog
from .control.resources import EndpointConfigRecord, ModelRecord, NameMap
from .control.status import EndpointStatus
from .control.store import Store, acquire_lock
from .control.tags import Tagging
from .dataplane.proxy import RuntimeServer
from .dataplane.stream_client import invoke_stream
from .dataplane.streaming import StreamInvocation
from .endpoints.manager import EndpointManager
from .endpoints.recovery import apply_declared_resources, recover_endpoints
from .endpoints.scaling import Scaler
from .endpoints.state import EndpointState
from .errors import ConfigError, ResourceNotFound, RouterError, RouterStartupError
from .metrics import RouterMetrics
from .runtime import ContainerRuntime, ImageRuntime
from .security import Guard
from .spec import EndpointConfigSpec, ModelSpec
from .tracing import TracingHooks, build_hooks
from .workers.pool import WorkerPool

log = logging.getLogger(__name__)

#: Statuses in which an endpoint answers invocations.
_SERVING = frozenset({str(EndpointStatus.IN_SERVICE), str(EndpointStatus.UPDATING)})


@dataclass(slots=True, eq=False)
class _Running:
    """What start() built; every part gets what it uses when it is made."""

    store: Store
    runtime: ContainerRuntime
    server: RuntimeServer
    #: The runtime listener of this process, or the worker processes that serve it instead.
    listener: asyncio.Server | WorkerPool
    catalog: Catalog
    endpoints: EndpointManager
    admin: web.AppRunner
    scaler: Scaler


class Router:
    """A multi-container endpoint router.

    :param config: the frozen router configuration.
    :param runtime: how images become containers; defaults to the ``images:`` of ``config``
        (local processes or external URLs) and, with ``container_engine``, real containers
        of every other image. Inject another runtime (e.g. a fake in tests) here.
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        runtime: ContainerRuntime | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.config = config
        #: An OpenTelemetry TracerProvider for the request and container-call spans, instead
        #: of the OTLP exporter ``config.tracing`` describes (which is then not needed).
        self._tracer_provider = tracer_provider
        #: Spans and the hop log; None when ``config.tracing`` asks for neither.
        self.tracing: TracingHooks | None = None
        self._runtime_override = runtime
        self._arns = Arns(config.region, config.account_id)
        self._running: _Running | None = None
        self._started = False
        self._stopping = False
        #: Undone in reverse order by stop(); filled by start() as each part comes up.
        self._exit = contextlib.AsyncExitStack()
        self._drain_seconds = 0.0
        #: Set by abort_drain(): stop() then waits neither for the drain nor the stop grace.
        self._drain_cut = asyncio.Event()
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
        try:
            running = await self._build()
            catalog, endpoints = running.catalog, running.endpoints
            catalog.load()
            recovering = recover_endpoints(running.store, endpoints)
            await asyncio.gather(*(endpoints.settled(state) for state in recovering))
            running.scaler.restore()
            await apply_declared_resources(self.config, catalog, endpoints)
        except BaseException:
            await self.stop(drain_seconds=0)
            raise

    async def _build(self) -> _Running:
        """Bring the parts up in order; each pushes its own undoing onto ``self._exit``."""
        loop = asyncio.get_running_loop()
        config, stack = self.config, self._exit
        _check_listener_security(config)
        _prepare_state_dir(config.state_dir)
        # Before the runtime reaps "orphans" in state_dir/run: a second router on the same
        # state directory would otherwise kill the first one's containers.
        lock = acquire_lock(
            config.state_dir / "run" / "router.lock", f"state directory {config.state_dir}"
        )
        stack.callback(os.close, lock)
        store = Store.open(config.state_path)
        stack.callback(store.close)
        runtime = self._runtime_override
        if runtime is None:
            # With container_engine: connects to it (one line naming the URL if it does not
            # answer) and removes the containers a crashed run of this router left behind.
            runtime = await ImageRuntime.create(config)
            stack.push_async_callback(runtime.aclose)
        hooks = self.tracing = build_hooks(
            config.tracing,
            auth_enabled=self.guard is not None,
            tracer_provider=self._tracer_provider,
        )
        if hooks is not None and hooks.otel is not None:
            # Last at stop: the final spans are exported (off the loop: it may wait on the
            # network up to the exporter's timeout).
            stack.push_async_callback(asyncio.to_thread, hooks.otel.close)
        server = RuntimeServer(
            config.limits,
            loop,
            account_id=config.account_id,
            guard=self.guard,
            answers=self.metrics.answers if self.metrics is not None else None,
            hooks=hooks,
            sample_new_traces=config.tracing.sample_new_traces,
            stream_type=StreamInvocation,
        )
        stack.callback(server.close)  # its sweeper timer must not outlive the router
        stack.callback(server.abort_all)
        tls = config.listener.ssl_context()
        listener: asyncio.Server | WorkerPool
        if config.listener.workers > 1:
            listener = WorkerPool(config, server, config.listener.workers)
            server.mirror = listener
            if self.metrics is not None:
                self.metrics.refresh = listener.refresh
            with _listening("runtime API", config.listener.host, config.listener.port, "port"):
                await listener.start()
            # (Normally stopped with a drain by _close_runtime_listener; this is for a failed
            # start.)
            stack.push_async_callback(listener.stop, 0.0, self._drain_cut)
        else:
            with _listening("runtime API", config.listener.host, config.listener.port, "port"):
                listener = await loop.create_server(
                    server.protocol_factory,
                    config.listener.host,
                    config.listener.port,
                    backlog=4096,
                    reuse_address=True,
                    ssl=tls,
                )
            stack.push_async_callback(listener.wait_closed)
            stack.callback(listener.close)  # (wait_closed waits forever on a listener left open)
        catalog = Catalog(store, runtime, config.limits, self._arns)
        endpoints = EndpointManager(
            config,
            store=store,
            catalog=catalog,
            runtime=runtime,
            server=server,
            metrics=self.metrics,
            arns=self._arns,
        )
        # After the admin listener: no control-plane call may start new work once the
        # operations are cancelled.
        stack.push_async_callback(endpoints.stop, self._drain_cut)
        namespaces = {"AWS/SageMaker": config.metrics.cloudwatch_sagemaker_namespace}
        tagging = Tagging(
            store,
            self._arns,
            {
                "model": catalog.models,
                "endpoint-config": catalog.endpoint_configs,
                "endpoint": endpoints.endpoints,
            },
        )
        scaler = Scaler(config, endpoints, server, self.metrics, store)
        # Before the endpoints stop: a scale-in's instance is stopped by its own task.
        stack.push_async_callback(scaler.stop)
        scaler.autoscaling = AutoScaling(store, scaler, config.region, config.account_id)
        control = ControlApi(catalog, endpoints, tagging, self.guard, self._arns, scaler)
        admin = web.AppRunner(
            AdminApp(
                control.handle,
                StsApi(self.guard, config.account_id).handle,
                self.metrics,
                namespaces,
                self.readiness,
                AutoScalingApi(scaler.autoscaling, self.guard).handle,
                hop_log=hooks.hop_log if hooks is not None else None,
                guard=self.guard,
            ).build(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5.0,
        )
        await admin.setup()
        stack.push_async_callback(admin.cleanup)
        site = web.TCPSite(
            admin,
            config.listener.host,
            config.listener.admin_port,
            reuse_address=True,
            ssl_context=tls,
        )
        admin_port = config.listener.admin_port
        with _listening("admin and control-plane", config.listener.host, admin_port, "admin_port"):
            await site.start()
        # First of all at stop: stop accepting and let in-flight requests finish.
        stack.push_async_callback(self._close_runtime_listener, listener, server)
        self._running = _Running(
            store, runtime, server, listener, catalog, endpoints, admin, scaler
        )
        tracking = loop.create_task(scaler.run(), name="target tracking")
        stack.push_async_callback(cancelled, tracking)
        if self.metrics is not None:
            sampler = loop.create_task(
                self.metrics.run_sampler(
                    endpoints.usage_sources, config.metrics.usage_sample_seconds
                ),
                name="resource usage sampler",
            )
            stack.push_async_callback(cancelled, sampler)
            if config.metrics.emf_enabled:
                write, close = _emf_output(config.metrics.emf_path)
                stack.callback(close)
                emf = loop.create_task(
                    self.metrics.run_emf_writer(
                        write, config.metrics.emf_interval_seconds, namespaces
                    ),
                    name="CloudWatch EMF writer",
                )
                stack.push_async_callback(cancelled, emf)
        return self._running

    async def _close_runtime_listener(
        self, listener: asyncio.Server | WorkerPool, server: RuntimeServer
    ) -> None:
        if isinstance(listener, WorkerPool):
            await listener.stop(self._drain_seconds, self._drain_cut)
            return
        listener.close()
        server.accepting = False
        server.close_idle_connections()
        idle = asyncio.ensure_future(server.wait_idle())
        await finished_before(idle, self._drain_cut, self._drain_seconds)
        await cancelled(idle)
        server.abort_all()

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_seconds``), then stop
        every endpoint's containers and close everything. The state file keeps every endpoint
        as it was: the next start brings them back."""
        self._stopping = True
        if self._running is not None:
            self._running.store.closing = True
        self._drain_seconds = drain_seconds
        await self._exit.aclose()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the router should get traffic: started, not stopping, and every endpoint
        the config declares serving (InService, or Updating: the old fleet serves until the
        new one takes over). Details name each declared endpoint's status."""
        declared = [str(body["EndpointName"]) for body in self.config.endpoints]
        endpoints = self.endpoints
        statuses = {
            name: str(state.status) if (state := endpoints.get(name)) else "NotCreated"
            for name in declared
        }
        details: dict[str, Any] = {"endpoints": statuses}
        if self._stopping:
            details["reason"] = "the router is draining"
        elif self._running is None:
            details["reason"] = "the router is starting"
        else:
            waiting = [name for name, status in statuses.items() if status not in _SERVING]
            if waiting:
                details["reason"] = f"declared endpoints not serving: {', '.join(waiting)}"
        return "reason" not in details, details

    def abort_drain(self) -> None:
        """Cut a running :meth:`stop` short (a second Ctrl-C): in-flight requests are aborted
        and the containers killed now instead of after their stop grace period; the state file
        is still closed cleanly. Safe to call at any time."""
        self._drain_cut.set()

    def _parts(self) -> _Running:
        if self._running is None:
            raise RuntimeError("Router not started: call start() or use 'async with Router'")
        return self._running

    @property
    def runtime_port(self) -> int:
        listener = self._parts().listener
        if isinstance(listener, WorkerPool):
            return listener.port
        return int(listener.sockets[0].getsockname()[1])

    @property
    def workers(self) -> WorkerPool | None:
        """The data-plane worker processes (``listen.workers`` > 1), else None."""
        listener = self._parts().listener
        return listener if isinstance(listener, WorkerPool) else None

    @property
    def admin_port(self) -> int:
        return int(self._parts().admin.addresses[0][1])

    @property
    def runtime_url(self) -> str:
        return f"{self._scheme()}://{self._url_host()}:{self.runtime_port}"

    @property
    def admin_url(self) -> str:
        return f"{self._scheme()}://{self._url_host()}:{self.admin_port}"

    def _scheme(self) -> str:
        return "https" if self.config.listener.tls else "http"

    def _url_host(self) -> str:
        host = self.config.listener.host
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def scaler(self) -> Scaler:
        """Instance counts, weights and target tracking (Application Auto Scaling)."""
        return self._parts().scaler

    @property
    def runtime_server(self) -> RuntimeServer:
        return self._parts().server

    def invoke_endpoint_with_response_stream(
        self, endpoint_name: str, body: bytes, **options: str | None
    ) -> AsyncIterator[bytes]:
        """InvokeEndpointWithResponseStream from this process: an async iterator of the parts'
        bytes, in order, each as soon as the container sent it. ``options``: ``content_type``,
        ``accept``, ``target_container_hostname``, ``target_variant``, ``custom_attributes``,
        ``inference_id`` (boto3's parameters, snake-cased; an unknown one raises
        :class:`~mce_router.errors.ValidationError` naming the closest). Errors before the first
        part raise as for InvokeEndpoint (:class:`~mce_router.errors.ModelError`,
        :class:`~mce_router.errors.ValidationError`, ...); after it,
        :class:`~mce_router.errors.StreamError` while iterating. The call goes through the
        runtime listener like any client's, so with ``auth.mode: sigv4`` it is refused (sign
        with boto3 instead)."""
        return invoke_stream(self.runtime_url, endpoint_name, body, options)

    def arn(self, kind: ResourceKind, name: str) -> str:
        return self._arns.of(kind, name)

    # --- the resources (names compare ignoring case, as in SageMaker) -------------------------

    @property
    def models(self) -> NameMap[ModelRecord]:
        return NameMap() if self._running is None else self._running.catalog.models

    @property
    def endpoint_configs(self) -> NameMap[EndpointConfigRecord]:
        return NameMap() if self._running is None else self._running.catalog.endpoint_configs

    @property
    def endpoints(self) -> NameMap[EndpointState]:
        return NameMap() if self._running is None else self._running.endpoints.endpoints

    async def check_model(self, body: Mapping[str, Any]) -> None:
        """CreateModel's checks that ask the runtime about the images (a container engine
        inspects or pulls each and applies the accept-bind-to-port rule); the control plane
        calls it before :meth:`create_model`, embedders should too."""
        await self._parts().catalog.check_model(body)

    def create_model(self, body: Mapping[str, Any]) -> ModelSpec:
        """CreateModel: validate (spec rules, every image mapped), persist, return the model."""
        return self._parts().catalog.create_model(body)

    def describe_model(self, name: str) -> dict[str, Any]:
        return self._parts().catalog.describe_model(name)

    def list_models(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._parts().catalog.list_models(params)

    def delete_model(self, name: str) -> None:
        """DeleteModel (endpoints keep serving their snapshot of it)."""
        self._parts().catalog.delete_model(name)

    def create_endpoint_config(self, body: Mapping[str, Any]) -> EndpointConfigSpec:
        """CreateEndpointConfig: every variant's model must exist."""
        return self._parts().catalog.create_endpoint_config(body)

    def describe_endpoint_config(self, name: str) -> dict[str, Any]:
        return self._parts().catalog.describe_endpoint_config(name)

    def list_endpoint_configs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._parts().catalog.list_endpoint_configs(params)

    def delete_endpoint_config(self, name: str) -> None:
        """DeleteEndpointConfig (endpoints using it keep serving)."""
        self._parts().catalog.delete_endpoint_config(name)

    async def create_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """CreateEndpoint; see :meth:`EndpointManager.create_endpoint`."""
        return await self._parts().endpoints.create_endpoint(body, wait=wait)

    async def update_endpoint(self, body: Mapping[str, Any], *, wait: bool = True) -> EndpointState:
        """UpdateEndpoint, blue/green; see :meth:`EndpointManager.update_endpoint`."""
        return await self._parts().endpoints.update_endpoint(body, wait=wait)

    async def delete_endpoint(
        self, name: str, *, wait: bool = True, drain_seconds: float | None = None
    ) -> None:
        """DeleteEndpoint; see :meth:`EndpointManager.delete_endpoint`."""
        await self._parts().endpoints.delete_endpoint(name, wait=wait, drain_seconds=drain_seconds)

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        return self._parts().endpoints.describe_endpoint(name)

    def list_endpoints(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._parts().endpoints.list_endpoints(params)

    async def wait_settled(self, name: str) -> str | None:
        """Wait until the endpoint's background operation (if any) ends; None if it
        succeeded, else why it failed."""
        endpoints = self._parts().endpoints
        failure = await endpoints.settled(endpoints.get(name))
        return None if failure is None else failure.message


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


def _emf_output(path: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    """Where EMF lines go: ``-`` is stdout (a container's log, which the CloudWatch agent or
    the awslogs driver ships), anything else a file appended to (the agent tails it)."""
    if path == "-":

        def write_stdout(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        return write_stdout, lambda: None
    try:
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by the exit stack)
    except OSError as exc:
        raise ConfigError(
            f"config.metrics.emf_path: cannot open {path} for appending: {exc.strerror}"
        ) from exc

    def write_file(text: str) -> None:
        handle.write(text)
        handle.flush()

    return write_file, handle.close


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


__all__ = ["EndpointState", "ResourceNotFound", "Router", "RouterError"]
