"""The runtime the router uses: process or external by the ``images:`` entry, else the engine.

An image with an ``images:`` entry runs as a local process (``command``) or is a container
someone else runs (``url``). With ``container_engine`` configured, every other image runs as a
real container on that engine (runtime/engine.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import ExternalImage, ImageSpec, ProcessImage, ProcessSettings, RouterConfig
from ..errors import ValidationError
from .base import ContainerLaunch, RunningContainer
from .engine import EngineContainer, EngineRuntime
from .external import ExternalContainer, ExternalRuntime
from .process import ProcessContainer, ProcessRuntime


class ImageRuntime:
    """Implements :class:`~mce_router.runtime.base.ContainerRuntime` over the ``images:`` map
    and, when configured, a container engine."""

    def __init__(
        self,
        images: Mapping[str, ImageSpec],
        settings: ProcessSettings,
        state_dir: Path,
        engine: EngineRuntime | None = None,
    ) -> None:
        self._images = images
        self._process = ProcessRuntime(settings, state_dir)
        self._external = ExternalRuntime()
        self._engine = engine

    @classmethod
    async def create(cls, config: RouterConfig) -> ImageRuntime:
        """The runtime for ``config``; connects to the container engine when one is
        configured (an unreachable engine is a start-up error naming its URL)."""
        runtime = cls(config.images, config.process, config.state_dir)
        if config.container_engine is not None:
            runtime._engine = await EngineRuntime.connect(
                config.container_engine,
                runtime._process.port_blocks,
                config.process,
                config.state_dir,
            )
        return runtime

    @property
    def engine(self) -> EngineRuntime | None:
        return self._engine

    def mounts_model_data(self, image: str) -> bool:
        """Whether a container of ``image`` gets its ``ModelDataUrl`` at /opt/ml/model: only
        the engine's do; a process or an external container gets nothing (CreateModel warns)."""
        return self._engine is not None and image not in self._images

    def check_image(self, image: str, field: str) -> None:
        if image in self._images or self._engine is not None:
            return  # an engine's image is looked at by check_model (it asks the engine)
        known = ", ".join(sorted(self._images)) or "none"
        raise ValidationError(
            f"Image '{image}' at '{field}' has no entry in the router config's 'images' "
            f"section, so there is nothing to run it with. Add it there (with 'command' for a "
            f"local process or 'url' for a running container), or configure "
            f"'container_engine' to run images as containers. Configured images: {known}.",
            field=field,
            rule="must be mapped in the router config's images",
        )

    async def check_model(self, images: Sequence[tuple[str, str]]) -> None:
        for image, field in images:
            self.check_image(image, field)
        if self._engine is not None:
            engine_images = [(i, f) for i, f in images if i not in self._images]
            await self._engine.check_model(engine_images, len(images))

    async def start(self, launch: ContainerLaunch, *, port: int | None = None) -> RunningContainer:
        self.check_image(launch.image, "Image")
        spec = self._images.get(launch.image)
        if spec is None:
            assert self._engine is not None
            return await self._engine.start(launch, port=port)
        if isinstance(spec, ExternalImage):
            return await self._external.start(launch, spec)
        assert isinstance(spec, ProcessImage)
        return await self._process.start(launch, spec, port=port)

    async def stop(self, container: RunningContainer, grace_seconds: float) -> None:
        if isinstance(container, ProcessContainer):
            await self._process.stop(container, grace_seconds)
        elif isinstance(container, ExternalContainer):
            await self._external.stop(container, grace_seconds)
        elif isinstance(container, EngineContainer) and self._engine is not None:
            # The engine's own grace (container_engine.stop_grace_seconds) applies, except
            # that 0 (a second signal cutting the drain) kills now.
            await self._engine.stop(container, 0.0 if grace_seconds == 0 else None)
        else:  # pragma: no cover - a runtime handed us a foreign container
            raise TypeError(f"unknown container type {type(container).__name__}")

    async def stop_instance(self, instance_id: str) -> None:
        if self._engine is not None:
            await self._engine.stop_instance(instance_id)

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()
