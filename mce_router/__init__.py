"""mce_router: SageMaker-compatible multi-container endpoints on your own machines.

Embed it::

    async with Router(RouterConfig.from_file("router.yaml")) as router:
        ...  # POST {router.runtime_url}/endpoints/{name}/invocations

or run the sidecar: ``mce-router serve --config router.yaml``.
"""

from .config import RouterConfig
from .errors import (
    ConfigError,
    EndpointStartupError,
    ModelError,
    RouterError,
    ValidationError,
)
from .router import Router

__all__ = [
    "ConfigError",
    "EndpointStartupError",
    "ModelError",
    "Router",
    "RouterConfig",
    "RouterError",
    "ValidationError",
]
