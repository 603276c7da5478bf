"""mce_router: SageMaker-compatible multi-container endpoints on your own machines.

Embed it::

    async with Router(RouterConfig.from_file("router.yaml")) as router:
        ...  # POST {router.runtime_url}/endpoints/{name}/invocations

or run the sidecar: ``mce-router serve --config router.yaml``.
"""

from importlib import metadata as _metadata

from .config import RouterConfig
from .errors import (
    ConfigError,
    EndpointStartupError,
    ModelError,
    RouterError,
    StreamError,
    ValidationError,
)
from .router import Router

try:
    __version__ = _metadata.version("mce-router")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "ConfigError",
    "EndpointStartupError",
    "ModelError",
    "Router",
    "RouterConfig",
    "RouterError",
    "StreamError",
    "ValidationError",
]
