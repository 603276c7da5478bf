"""SageMaker instance types (``ProductionVariants[].InstanceType``): what one instance may use.

The table is data, ``instances.json`` beside this module, so adding a type is a one-line change.
The container-engine runtime limits the containers of one instance to its vCPUs and memory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psutil

from ..errors import ValidationError

log = logging.getLogger(__name__)
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    vcpu: int
    memory_bytes: int


@functools.cache
def instance_types() -> dict[str, InstanceType]:
    raw = json.loads(resources.files(__package__).joinpath("instances.json").read_text("utf-8"))
    return {
        name: InstanceType(name, int(spec["vcpu"]), int(float(spec["memory_gib"]) * GIB))
        for name, spec in raw.items()
        if not name.startswith("_")
    }


def lookup(name: str, field: str = "InstanceType") -> InstanceType:
    """The instance type called ``name``; ValidationError listing the known ones otherwise."""
    found = instance_types().get(name)
    if found is None:
        raise ValidationError(
            f"Value '{name}' at '{field}' failed to satisfy constraint: Member must satisfy enum "
            f"value set: [{', '.join(sorted(instance_types()))}]",
            field=field,
            rule="must be a known instance type",
        )
    return found


def warn_if_larger_than_machine(instance: InstanceType) -> bool:
    """Log a warning when the machine cannot give one instance what its type promises."""
    cpus = os.cpu_count() or 1
    memory = psutil.virtual_memory().total
    if instance.vcpu <= cpus and instance.memory_bytes <= memory:
        return False
    log.warning(
        "instance type %s (%d vCPU, %.1f GiB) is larger than this machine (%d CPUs, %.1f GiB): "
        "its containers are limited by the machine, not by the type",
        instance.name,
        instance.vcpu,
        instance.memory_bytes / GIB,
        cpus,
        memory / GIB,
    )
    return True


def check_instance_types(variants: Iterable[Any]) -> None:
    """CreateEndpointConfig: each variant's InstanceType, when given, must be a known type."""
    for index, variant in enumerate(variants):
        name = variant.extra.get("InstanceType")
        if name is not None:
            lookup(str(name), f"ProductionVariants[{index}].InstanceType")
