"""Deployments: the running fleet behind one endpoint config.

A :class:`Deployment` starts every container of every instance of every variant, waits for all
of them to pass the ping health check within the startup window, builds the immutable
:class:`~mce_router.dataplane.proxy.EndpointRoute`, and from then on supervises each container
(periodic pings, restart on death or repeated failure). Stopping drains in-flight requests
first. The router swaps routes; deployments never touch the routing table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..arns import log_stream_arn
from ..config import RouterConfig
from ..dataplane.proxy import EndpointRoute, InstanceRoute, Upstream, VariantRoute
from ..errors import EndpointStartupError, ServiceUnavailable
from ..metrics import RouterMetrics, UsageSource
from ..runtime.base import ContainerLaunch, ContainerRuntime, RunningContainer
from ..spec import EndpointConfigSpec, ExecutionMode, ModelSpec
from .health import exit_reason, ping, wait_until_healthy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ContainerSlot:
    """One container position of one instance: what to launch, what runs, how the proxy sees it."""

    launch: ContainerLaunch
    startup_window: float
    container: RunningContainer | None = None
    upstream: Upstream | None = None
    restarts: int = 0
    supervisor: asyncio.Task[None] | None = field(default=None, repr=False)


class Deployment:
    def __init__(
        self,
        endpoint_name: str,
        endpoint_config: EndpointConfigSpec,
        models: Mapping[str, ModelSpec],
        config: RouterConfig,
        runtime: ContainerRuntime,
        metrics: RouterMetrics | None = None,
        synced: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.endpoint_name = endpoint_name
        #: Returns once every process serving the port routes by the latest table
        #: (RuntimeServer.synced): awaited before draining or stopping what left the table.
        self._synced = synced
        self._metrics = metrics
        self.endpoint_config = endpoint_config
        self.models = dict(models)
        self._config = config
        self._runtime = runtime
        self._slots: list[ContainerSlot] = []
        self._stopping = False
        self.route: EndpointRoute | None = None
        #: Routes replaced by a scaling change whose requests may still be in flight.
        self.replaced_routes: list[EndpointRoute] = []
        #: DesiredWeight per variant set by UpdateEndpointWeightsAndCapacities.
        self.weights: dict[str, float] = {}
        self._build_slots()

    @property
    def slots(self) -> tuple[ContainerSlot, ...]:
        return tuple(self._slots)

    def _build_slots(self) -> None:
        for variant in self.endpoint_config.variants:
            for _ in range(variant.initial_instance_count):
                self._slots.extend(self.instance_slots(variant.variant_name))

    def instance_slots(self, variant_name: str) -> list[ContainerSlot]:
        """The container slots of one new instance of the variant (not started)."""
        logs = self._config.state_dir / "logs" / self.endpoint_name
        variant = next(v for v in self.endpoint_config.variants if v.variant_name == variant_name)
        model = self.models[variant.model_name]
        window = float(
            variant.container_startup_health_check_timeout
            or self._config.health.startup_timeout_seconds
        )
        instance_id = f"i-{uuid.uuid4().hex[:12]}"
        return [
            ContainerSlot(
                ContainerLaunch(
                    endpoint_name=self.endpoint_name,
                    variant_name=variant.variant_name,
                    instance_id=instance_id,
                    container_name=container.name,
                    image=container.image,
                    environment=container.environment,
                    log_path=logs / variant.variant_name / instance_id / f"{container.name}.log",
                    # What a container engine needs beyond a command line.
                    model_data_url=_text(container.extra.get("ModelDataUrl")),
                    instance_type=_text(variant.extra.get("InstanceType")),
                    instance_containers=tuple(c.name for c in model.containers),
                ),
                window,
            )
            for container in model.containers
        ]

    async def start(self) -> EndpointRoute:
        """Start every container; all must pass /ping within their startup window, otherwise
        everything started is stopped and :class:`EndpointStartupError` names each failure."""
        try:
            failures = await self._start_all()
        except BaseException:
            # Cancelled while starting (e.g. the router is shutting down): leave nothing behind.
            await asyncio.shield(self.stop(drain_seconds=0))
            raise
        if failures:
            await self.stop(drain_seconds=0)
            names = [name for name, _ in failures]
            detail = "; ".join(
                f"{name} did not pass the ping health check ({why})" for name, why in failures
            )
            raise EndpointStartupError(
                f"Endpoint {self.endpoint_name}: {detail}. See the container logs under "
                f"{self._config.state_dir / 'logs' / self.endpoint_name}.",
                tuple(names),
            )
        self.route = self._build_route()
        for slot in self._slots:
            assert slot.upstream is not None
            slot.upstream.mark_available()
            slot.supervisor = asyncio.get_running_loop().create_task(
                self._supervise(slot), name=f"supervise {slot.launch.label}"
            )
        return self.route

    async def _start_all(self) -> list[tuple[str, str]]:
        results = await asyncio.gather(
            *(self._start_slot(slot) for slot in self._slots), return_exceptions=True
        )
        failures: list[tuple[str, str]] = []
        for slot, result in zip(self._slots, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failures.append((slot.launch.container_name, str(result) or repr(result)))
            elif result is not None:
                failures.append((slot.launch.container_name, result))
        return failures

    async def _start_slot(self, slot: ContainerSlot) -> str | None:
        slot.container = await self._runtime.start(slot.launch)
        return await wait_until_healthy(slot.container, slot.startup_window, self._config.health)

    def _build_route(self) -> EndpointRoute:
        loop = asyncio.get_running_loop()
        variants = []
        by_variant: dict[str, list[list[ContainerSlot]]] = {}
        for slot in self._slots:
            instances = by_variant.setdefault(slot.launch.variant_name, [])
            if not instances or instances[-1][0].launch.instance_id != slot.launch.instance_id:
                instances.append([])
            instances[-1].append(slot)
        for variant in self.endpoint_config.variants:
            model = self.models[variant.model_name]
            direct = model.mode is ExecutionMode.DIRECT
            instance_routes = []
            for instance_slots in by_variant.get(variant.variant_name, []):
                chain = tuple(
                    slot.upstream or self._make_upstream(slot, loop) for slot in instance_slots
                )
                instance_routes.append(
                    InstanceRoute(
                        instance_slots[0].launch.instance_id,
                        chain,
                        {u.container_name: u for u in chain},
                    )
                )
            variant_route = VariantRoute(
                variant.variant_name,
                self.weights.get(variant.variant_name, variant.initial_variant_weight),
                tuple(instance_routes),
                direct,
            )
            if self._metrics is not None:
                if direct:
                    self._metrics.direct_variant(
                        self.endpoint_name,
                        variant.variant_name,
                        [
                            self._metrics.container(
                                self.endpoint_name, variant.variant_name, c.name
                            )
                            for c in model.containers
                        ],
                    )
                else:
                    variant_route.observer = self._metrics.variant(
                        self.endpoint_name, variant.variant_name
                    )
            variants.append(variant_route)
        return EndpointRoute(self.endpoint_name, tuple(variants))

    def _make_upstream(self, slot: ContainerSlot, loop: asyncio.AbstractEventLoop) -> Upstream:
        assert slot.container is not None
        launch = slot.launch
        upstream = Upstream(
            endpoint_name=launch.endpoint_name,
            variant_name=launch.variant_name,
            instance_id=launch.instance_id,
            container_name=launch.container_name,
            host=slot.container.host,
            port=slot.container.port,
            log_stream_arn=log_stream_arn(
                self._config.region,
                self._config.account_id,
                launch.endpoint_name,
                launch.variant_name,
                launch.instance_id,
                launch.container_name,
            ),
            log_path=str(launch.log_path),
            limits=self._config.limits,
            loop=loop,
        )
        if self._metrics is not None:
            upstream.observer = self._metrics.container(
                launch.endpoint_name, launch.variant_name, launch.container_name
            )
            upstream.stream_observer = self._metrics.stream(
                launch.endpoint_name, launch.variant_name, launch.container_name
            )
        slot.upstream = upstream
        return upstream

    def usage_sources(self) -> list[UsageSource]:
        return [
            UsageSource(
                slot.launch.endpoint_name,
                slot.launch.variant_name,
                slot.launch.container_name,
                slot.container.pids(),
                # Runtimes that measure usage themselves (a container engine's stats).
                getattr(slot.container, "usage", None),
            )
            for slot in self._slots
            if slot.container is not None
            and (slot.container.pids() or hasattr(slot.container, "usage"))
        ]

    def unavailable(self) -> list[str]:
        """The serving containers that cannot take requests now (restarting, failing pings,
        their engine away), each as ``<label>: <why>``; empty when all serve."""
        return [
            f"{slot.launch.label}: {slot.upstream.unavailable_reason}"
            for slot in self._slots
            if slot.upstream is not None and not slot.upstream.available
        ]

    # --- supervision -------------------------------------------------------------------------

    async def _supervise(self, slot: ContainerSlot) -> None:
        health = self._config.health
        failures = 0
        while not self._stopping:
            await self._sleep_or_exit(slot, health.ping_interval_seconds)
            if self._stopping:
                return
            container = slot.container
            assert container is not None and slot.upstream is not None
            if container.exit_status() is not None:
                reason = exit_reason(container, "while serving")
            else:
                ping_failure = await ping(
                    container.host, container.port, health.ping_timeout_seconds
                )
                if ping_failure is None:
                    failures = 0
                    if not slot.upstream.available:
                        slot.upstream.mark_available()
                    continue
                failures += 1
                if failures < health.unhealthy_threshold:
                    continue
                reason = f"{failures} consecutive failed pings, last: {ping_failure}"
            failures = 0
            await self._recover(slot, reason)

    async def _sleep_or_exit(self, slot: ContainerSlot, seconds: float) -> None:
        waiter = getattr(slot.container, "wait", None)
        if waiter is None or slot.container is None or slot.container.exit_status() is not None:
            await asyncio.sleep(seconds)
            return
        exit_task = asyncio.ensure_future(waiter())
        try:
            await asyncio.wait([exit_task], timeout=seconds)
        finally:
            if not exit_task.done():
                exit_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exit_task

    async def _recover(self, slot: ContainerSlot, reason: str) -> None:
        upstream = slot.upstream
        assert upstream is not None and slot.container is not None
        label = slot.launch.label
        upstream.mark_unavailable(f"restarting after failure ({reason})")
        upstream.pool.fail_waiting(
            ServiceUnavailable(
                f"Container {slot.launch.container_name} of endpoint {self.endpoint_name} is "
                f"restarting ({reason}). Retry later."
            )
        )
        if not slot.container.restartable:
            log.warning("%s unhealthy (%s); waiting for it to recover", label, reason)
            return
        log.warning("%s unhealthy (%s); restarting", label, reason)
        backoff = self._config.health.restart_backoff_initial_seconds
        while not self._stopping:
            await self._runtime.stop(slot.container, self._config.process.stop_grace_seconds)
            if self._stopping:
                return
            slot.restarts += 1
            try:
                slot.container = await self._runtime.start(slot.launch, port=slot.container.port)
                failure = await wait_until_healthy(
                    slot.container, slot.startup_window, self._config.health
                )
            except OSError as exc:
                failure = str(exc)
            if failure is None:
                upstream.mark_available()
                log.warning("%s is serving again after restart %d", label, slot.restarts)
                return
            upstream.unavailable_reason = f"restart {slot.restarts} failed: {failure}"
            log.warning(
                "%s restart %d failed (%s); retrying in %.1f s",
                label,
                slot.restarts,
                failure,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._config.health.restart_backoff_max_seconds)

    # --- instances that come and go (mce_router.endpoints.scaling decides when) ---------------

    def instance_count(self, variant_name: str) -> int:
        return len(
            {s.launch.instance_id for s in self._slots if s.launch.variant_name == variant_name}
        )

    async def start_instance(self, variant_name: str) -> EndpointRoute:
        """Start one more instance of the variant (all its containers); once every one passed
        /ping, answer the new route with it (the caller swaps it into the routing table).
        :class:`EndpointStartupError` (nothing left running) when a container fails."""
        slots = self.instance_slots(variant_name)
        try:
            results = await asyncio.gather(
                *(self._start_slot(slot) for slot in slots), return_exceptions=True
            )
        except BaseException:
            await asyncio.shield(self._stop_slots(slots, 0))
            raise
        failures = [
            f"{slot.launch.container_name}: {result}"
            for slot, result in zip(slots, results, strict=True)
            if result is not None
        ]
        if failures or self._stopping:
            await self._stop_slots(slots, 0)
            raise EndpointStartupError(
                f"A new instance of variant {variant_name} of endpoint {self.endpoint_name} did "
                f"not pass the ping health check ({'; '.join(failures) or 'stopping'}).",
                tuple(f.partition(":")[0] for f in failures),
            )
        self._slots.extend(slots)
        return self._replace_route(slots)

    def detach_instance(self, variant_name: str) -> tuple[EndpointRoute, list[ContainerSlot]]:
        """Take the variant's newest instance out: the route without it (to swap in) and its
        slots (to drain, then stop with :meth:`stop_instance`)."""
        ids = [s.launch.instance_id for s in self._slots if s.launch.variant_name == variant_name]
        victim = ids[-1]
        slots = [s for s in self._slots if s.launch.instance_id == victim]
        self._slots = [s for s in self._slots if s.launch.instance_id != victim]
        return self._replace_route([]), slots

    def set_weight(self, variant_name: str, weight: float) -> EndpointRoute:
        self.weights[variant_name] = weight
        return self._replace_route([])

    def _replace_route(self, started: list[ContainerSlot]) -> EndpointRoute:
        if self.route is not None:
            self.replaced_routes.append(self.route)
        self.route = self._build_route()
        for slot in started:
            assert slot.upstream is not None
            slot.upstream.mark_available()
            slot.supervisor = asyncio.get_running_loop().create_task(
                self._supervise(slot), name=f"supervise {slot.launch.label}"
            )
        return self.route

    async def stop_instance(self, slots: list[ContainerSlot], drain_seconds: float) -> bool:
        """Drain a detached instance (no request on any of its containers, or the deadline),
        then stop it: SIGTERM, grace, SIGKILL. False when the deadline cut the drain."""
        deadline = time.monotonic() + drain_seconds
        upstreams = [s.upstream for s in slots if s.upstream is not None]
        try:
            await self._wait_synced()
            while True:
                for upstream in upstreams:
                    upstream.pool.close_idle()  # a connection back from its call is idle
                if all(upstream.idle() for upstream in upstreams):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.02)
        finally:
            # Also when cancelled (the router stops): a detached instance is no fleet's any more.
            await asyncio.shield(self._stop_slots(slots, self._config.process.stop_grace_seconds))

    async def _stop_slots(self, slots: list[ContainerSlot], grace: float) -> None:
        supervisors = [s.supervisor for s in slots if s.supervisor is not None]
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        for slot in slots:
            if slot.upstream is not None:
                slot.upstream.mark_unavailable("the instance was scaled in")
                slot.upstream.pool.close()
        await asyncio.gather(
            *(self._runtime.stop(s.container, grace) for s in slots if s.container),
            return_exceptions=True,
        )
        await self._stop_instances(slots)

    async def _stop_instances(self, slots: Sequence[ContainerSlot]) -> None:
        """What each instance's containers shared (an engine's network namespace and cgroup)
        goes once they are stopped."""
        instance_ids = dict.fromkeys(s.launch.instance_id for s in slots)
        await asyncio.gather(
            *(self._runtime.stop_instance(i) for i in instance_ids), return_exceptions=True
        )

    # --- stopping ----------------------------------------------------------------------------

    async def _wait_synced(self) -> None:
        if self._synced is not None:
            await self._synced()

    @property
    def in_flight(self) -> int:
        if self.route is None:
            return 0
        self.replaced_routes = [
            r for r in self.replaced_routes if any(v.in_flight for v in r.variants)
        ]
        routes = (self.route, *self.replaced_routes)
        return sum(v.in_flight for route in routes for v in route.variants)

    async def drain(self, seconds: float) -> bool:
        """Wait until no request of this deployment is in flight; False if the deadline hit."""
        deadline = time.monotonic() + seconds
        await self._wait_synced()
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    async def stop(self, drain_seconds: float, grace_seconds: float | None = None) -> None:
        """Drain in-flight requests (the route must already be out of the table), stop the
        supervisors, close pools and stop every container: SIGTERM, then SIGKILL after
        ``grace_seconds`` (default: the config's). Safe to call again while a stop runs: with
        ``grace_seconds=0`` that kills the containers the first call still waits for."""
        if drain_seconds > 0:
            await self.drain(drain_seconds)
        else:
            await self._wait_synced()
        self._stopping = True
        supervisors = [s.supervisor for s in self._slots if s.supervisor is not None]
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        for slot in self._slots:
            if slot.upstream is not None:
                slot.upstream.mark_unavailable("the endpoint is being deleted or replaced")
                slot.upstream.pool.fail_waiting(
                    ServiceUnavailable(f"Endpoint {self.endpoint_name} is shutting down.")
                )
                slot.upstream.pool.close()
        grace = self._config.process.stop_grace_seconds if grace_seconds is None else grace_seconds
        await asyncio.gather(
            *(self._runtime.stop(s.container, grace) for s in self._slots if s.container),
            return_exceptions=True,
        )
        await self._stop_instances(self._slots)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
