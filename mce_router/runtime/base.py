"""The small protocol every runtime implements; the proxy never sees a runtime, only ports."""

from __future__ import annotations

from collections.abc import Mapping
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

    async def start(self, launch: ContainerLaunch, *, port: int | None = None) -> RunningContainer:
        """Start a container; ``port`` asks for the same port as a previous run (restarts)."""

    async def stop(self, container: RunningContainer, grace_seconds: float) -> None:
        """Stop it: SIGTERM (or the engine's equivalent), then kill after the grace period."""

    async def aclose(self) -> None:
        """Release runtime resources; containers have been stopped already."""
