"""Container runtimes: how an image becomes a reachable container (process, external, ...)."""

from .base import ContainerLaunch, ContainerRuntime, RunningContainer
from .images import ImageRuntime

__all__ = ["ContainerLaunch", "ContainerRuntime", "ImageRuntime", "RunningContainer"]
