"""The small protocol every runtime implements; the proxy never sees a runtime, only ports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ContainerLaunch:
    """Everything needed to start one container of one endpoint instance."""

    endpoint_name: str
    variant_name: str
    instance_id: str
    container_name: str
    image: str
    #: The model's ``Environment`` for this container (the runtime adds its own variables).
    environment: Mapping[str, str]
    log_path: Path
    #: The container's ``ModelDataUrl`` (runtimes that mount model data use it).
    model_data_url: str | None = None
    #: The variant's ``InstanceType`` (runtimes that enforce an instance's limits use it).
    instance_type: str | None = None
    #: Every container name of this instance, in model order (shared namespaces and ports).
    instance_containers: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.endpoint_name}/{self.variant_name}/{self.instance_id}/{self.container_name}"


class RunningContainer(Protocol):
    launch: ContainerLaunch
    host: str
    port: int

    def exit_status(self) -> int | None:
        """The exit code once the container has stopped; None while it runs (or when unknown)."""

    def pids(self) -> tuple[int, ...]:
        """Root process ids for resource sampling; empty when the router cannot see them."""

    @property
    def restartable(self) -> bool:
        """Whether the router may stop and start this container again on failure."""


class ContainerRuntime(Protocol):
    def check_image(self, image: str, field: str) -> None:
        """Raise ValidationError naming ``field`` when ``image`` cannot be run."""

    async def check_model(self, images: Sequence[tuple[str, str]]) -> None:
        """CreateModel's checks that look at the images themselves, for the (image, field)
        pairs of one model (a container engine: present or pullable, SageMaker's labels)."""

    async def start(self, launch: ContainerLaunch, *, port: int | None = None) -> RunningContainer:
        """Start a container; ``port`` asks for the same port as a previous run (restarts)."""

    async def stop(self, container: RunningContainer, grace_seconds: float) -> None:
        """Stop it: SIGTERM (or the engine's equivalent), then kill after the grace period."""

    async def stop_instance(self, instance_id: str) -> None:
        """Every container of the instance is stopped: release what they shared."""

    async def aclose(self) -> None:
        """Release runtime resources; containers have been stopped already."""


def exit_detail(container: RunningContainer) -> str:
    """What a runtime knows about why the container exited beyond its exit code (a container
    engine: killed for memory); empty when it knows nothing more."""
    detail = getattr(container, "exit_detail", None)
    return str(detail()) if callable(detail) else ""
