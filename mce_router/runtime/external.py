"""Containers someone else runs (e.g. in the same pod): the router only connects and pings."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ExternalImage
from .base import ContainerLaunch


@dataclass(slots=True)
class ExternalContainer:
    launch: ContainerLaunch
    host: str
    port: int

    def exit_status(self) -> int | None:
        return None

    def pids(self) -> tuple[int, ...]:
        return ()

    @property
    def restartable(self) -> bool:
        return False


class ExternalRuntime:
    async def start(self, launch: ContainerLaunch, image: ExternalImage) -> ExternalContainer:
        return ExternalContainer(launch, image.host, image.port)

    async def stop(self, container: ExternalContainer, grace_seconds: float) -> None:
        """Nothing to stop: the container's lifecycle belongs to whoever started it."""
