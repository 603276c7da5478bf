"""The runtime the router uses: picks process or external by how the image is configured."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import ExternalImage, ImageSpec, ProcessImage, ProcessSettings
from ..errors import ValidationError
from .base import ContainerLaunch, RunningContainer
from .external import ExternalContainer, ExternalRuntime
from .process import ProcessContainer, ProcessRuntime


class ImageRuntime:
    """Implements :class:`~mce_router.runtime.base.ContainerRuntime` over the ``images:`` map."""

    #: Neither a process nor an external container gets a container's ``ModelDataUrl`` (or
    #: ``ModelDataSource``) downloaded or mounted: CreateModel warns that it is ignored.
    mounts_model_data = False

    def __init__(
        self, images: Mapping[str, ImageSpec], settings: ProcessSettings, state_dir: Path
    ) -> None:
        self._images = images
        self._process = ProcessRuntime(settings, state_dir)
        self._external = ExternalRuntime()

    def check_image(self, image: str, field: str) -> None:
        if image not in self._images:
            known = ", ".join(sorted(self._images)) or "none"
            raise ValidationError(
                f"Image '{image}' at '{field}' has no entry in the router config's 'images' "
                f"section, so there is nothing to run it with. Add it there (with 'command' for a "
                f"local process or 'url' for a running container). Configured images: {known}.",
                field=field,
                rule="must be mapped in the router config's images",
            )

    async def start(self, launch: ContainerLaunch, *, port: int | None = None) -> RunningContainer:
        self.check_image(launch.image, "Image")
        spec = self._images[launch.image]
        if isinstance(spec, ExternalImage):
            return await self._external.start(launch, spec)
        assert isinstance(spec, ProcessImage)
        return await self._process.start(launch, spec, port=port)

    async def stop(self, container: RunningContainer, grace_seconds: float) -> None:
        if isinstance(container, ProcessContainer):
            await self._process.stop(container, grace_seconds)
        elif isinstance(container, ExternalContainer):
            await self._external.stop(container, grace_seconds)
        else:  # pragma: no cover - a runtime handed us a foreign container
            raise TypeError(f"unknown container type {type(container).__name__}")

    async def aclose(self) -> None:
        """No shared resources yet; the container-engine runtime will close its client here."""
