"""Validation of the control-plane parameters that are not resource bodies (those are spec.py's):
names given to Describe/Delete, and the filters and paging of the List operations.

Messages read like SageMaker's and like :mod:`mce_router.spec`'s::

    1 validation error detected: Value '0' at 'MaxResults' failed to satisfy constraint:
    Member must have value greater than or equal to 1
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from ..shapes import invalid_value as fail
from ..spec import NAME_MAX_LENGTH, NAME_PATTERN

_NAME_PATTERN_TEXT = NAME_PATTERN.pattern.removesuffix("$")


def check_name(value: Any, field: str) -> str:
    """A ModelName / EndpointConfigName / EndpointName: present, a string, 1..63 characters of
    the SageMaker name pattern."""
    if value is None:
        fail(field, None, "Member must not be null")
    if not isinstance(value, str):
        fail(field, value, "Member must be a string")
    if len(value) > NAME_MAX_LENGTH:
        fail(field, value, f"Member must have length less than or equal to {NAME_MAX_LENGTH}")
    if NAME_PATTERN.fullmatch(value) is None:
        fail(field, value, f"Member must satisfy regular expression pattern: {_NAME_PATTERN_TEXT}")
    return value


def required_name(params: Mapping[str, Any], field: str) -> str:
    return check_name(params.get(field), field)


def optional_enum(params: Mapping[str, Any], field: str, allowed: Collection[str]) -> str | None:
    value = params.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        fail(field, value, f"Member must satisfy enum value set: [{', '.join(allowed)}]")
    return value


def optional_int(params: Mapping[str, Any], field: str, low: int, high: int) -> int | None:
    value = params.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, value, "Member must be an integer")
    if value < low:
        fail(field, value, f"Member must have value greater than or equal to {low}")
    if value > high:
        fail(field, value, f"Member must have value less than or equal to {high}")
    return value


_CONTAINS_PATTERN = re.compile(r"[a-zA-Z0-9-]+")


def optional_name_fragment(params: Mapping[str, Any], field: str) -> str | None:
    """``NameContains``: up to 63 letters, digits and hyphens."""
    value = params.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        fail(field, value, "Member must be a string")
    if len(value) > NAME_MAX_LENGTH:
        fail(field, value, f"Member must have length less than or equal to {NAME_MAX_LENGTH}")
    if _CONTAINS_PATTERN.fullmatch(value) is None:
        fail(field, value, "Member must satisfy regular expression pattern: [a-zA-Z0-9-]+")
    return value


def optional_token(params: Mapping[str, Any], field: str) -> str | None:
    value = params.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        fail(field, value, "Member must be a string")
    if len(value) > 8192:
        fail(field, value, "Member must have length less than or equal to 8192")
    return value


def optional_timestamp(params: Mapping[str, Any], field: str) -> float | None:
    """Epoch seconds (what boto3 sends for the JSON protocol) or an ISO 8601 string with a
    time zone (what a hand-written client may send)."""
    value = params.get(field)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            fail(field, value, "Member must be a finite number of seconds since the epoch")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    fail(
        field,
        value,
        "Member must be a timestamp",
        "seconds since the epoch, or ISO 8601 with a time zone such as 2024-01-31T12:00:00Z",
    )
