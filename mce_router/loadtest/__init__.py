"""Load-testing harness for SageMaker-compatible endpoints (``mce-router loadtest``).

Library first::

    from mce_router.loadtest import Phase, config_from_document, run_load

    config = config_from_document(yaml.safe_load(open("mix.yaml")), Path("."),
                                  {"url": "http://127.0.0.1:8080", "endpoint": "e1",
                                   "rate": 200, "duration": 30})
    report = run_load(config)
    print(report.summary()); report.write_html(Path("report.html"))

``run_load`` blocks (it runs its own uvloop event loop); call it in a thread from async code.
"""

from typing import TYPE_CHECKING, Any

from .config import (
    PIPELINE,
    Credentials,
    FindLimit,
    LoadConfig,
    LoadTestError,
    Mix,
    Phase,
    Target,
    Thresholds,
    config_from_document,
    parse_mix,
    read_document,
)

if TYPE_CHECKING:
    from .report import SCHEMA, Report
    from .runner import run_load

# The generator needs the ``loadtest`` extra (hdrhistogram); importing the package must not,
# because ``mce-router`` registers the subcommand at every start.
_LAZY = {"SCHEMA": ".report", "Report": ".report", "run_load": ".runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PIPELINE",
    "SCHEMA",
    "Credentials",
    "FindLimit",
    "LoadConfig",
    "LoadTestError",
    "Mix",
    "Phase",
    "Report",
    "Target",
    "Thresholds",
    "config_from_document",
    "parse_mix",
    "read_document",
    "run_load",
]
