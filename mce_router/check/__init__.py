"""``mce-router check``: a container checked against SageMaker's container contract before it
is deployed, each rule with its evidence (``contract.py``), for a command line or an image
(``subjects.py``), observed from the kernel and over real sockets (``probes.py``)."""

from __future__ import annotations

from .contract import CheckOptions, CheckReport, RuleResult, check_container
from .subjects import CommandSubject, ImageSubject, Subject

__all__ = [
    "CheckOptions",
    "CheckReport",
    "CommandSubject",
    "ImageSubject",
    "RuleResult",
    "Subject",
    "check_container",
]
