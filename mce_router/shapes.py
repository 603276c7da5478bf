"""Reading SageMaker request bodies: SageMaker-worded validation errors, typed access to
members with their wire paths (``Containers[1].Image``), the parameter names each request shape
has (botocore's service model, kept in a data file so the router needs no botocore at run time),
and the read-only copies of parameters kept without being interpreted. :mod:`mce_router.spec`
builds the model, endpoint-config and endpoint shapes on these."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any, NoReturn

from .errors import ValidationError, closest_name

SHOWN_VALUE_MAX_LENGTH = 100


# --- error construction -------------------------------------------------------------------


def show_value(value: Any) -> str:
    """A value as messages print it: strings quoted and cut short, containers summarized."""
    if isinstance(value, str):
        if len(value) > SHOWN_VALUE_MAX_LENGTH:
            value = value[:SHOWN_VALUE_MAX_LENGTH] + "..."
        # json escapes newlines and control characters that would break a one-line message.
        return "'" + json.dumps(value, ensure_ascii=False)[1:-1] + "'"
    if value is None or isinstance(value, bool | float):
        return json.dumps(value)
    if isinstance(value, int):
        # Python refuses to print integers beyond 4300 digits.
        return str(value) if value.bit_length() < 1024 else "(a very large integer)"
    if isinstance(value, Mapping):
        return f"(an object with {len(value)} members)"
    if isinstance(value, list | tuple):
        return f"(a list with {len(value)} entries)"
    return f"(a {type(value).__name__})"


def fail(field_path: str, shown_value: str, rule: str, detail: str = "") -> NoReturn:
    where = f"'{field_path}'" if field_path else "the request body"
    message = (
        f"1 validation error detected: Value {shown_value} at {where} "
        f"failed to satisfy constraint: {rule}"
    )
    if detail:
        message += f" ({detail})"
    raise ValidationError(message, field=field_path, rule=rule)


def invalid_value(field_path: str, value: Any, rule: str, detail: str = "") -> NoReturn:
    """Raise the SageMaker-style ValidationError for ``value`` at ``field_path``."""
    fail(field_path, show_value(value), rule, detail)


def missing_value(field_path: str, detail: str = "") -> NoReturn:
    fail(field_path, "null", "Member must not be null", detail)


#: Parameter names of SageMaker's request shapes (botocore's service model, kept in a data file
#: so that the router needs no botocore at run time).
SHAPE_MEMBERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        shape: frozenset(members)
        for shape, members in json.loads(
            resources.files("mce_router")
            .joinpath("data/sagemaker_members.json")
            .read_text(encoding="utf-8")
        ).items()
        if not shape.startswith("_")
    }
)


# --- typed access -------------------------------------------------------------------------


def join_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def require_mapping(value: Any, field_path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        invalid_value(field_path, value, "Member must be a JSON object")
    return value


def split_known(
    body: Mapping[str, Any], known: frozenset[str], prefix: str, shape: str
) -> Mapping[str, Any]:
    """Return the parameters outside ``known``, frozen: those SageMaker's ``shape`` has and the
    router keeps without interpreting them (ExecutionRoleArn, Tags, ...). Refuse a name the
    shape does not have (a typo like ``Enviroment`` would otherwise be kept and ignored), naming
    the closest valid one."""
    folded_known = {name.casefold(): name for name in known}
    members = SHAPE_MEMBERS[shape]
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if not isinstance(key, str):
            invalid_value(prefix, key, "Parameter names must be strings")
        if key in known:
            continue
        intended = folded_known.get(key.casefold())
        if intended is not None:
            fail(
                join_path(prefix, key),
                show_value(key),
                "Parameter names are case-sensitive",
                f"did you mean '{join_path(prefix, intended)}'?",
            )
        if key not in members:
            closest = closest_name(key, members)
            fail(
                join_path(prefix, key),
                show_value(key),
                f"Member must be a parameter of {shape.removesuffix('Input')}",
                f"did you mean '{join_path(prefix, closest)}'?"
                if closest
                else f"valid parameters: {', '.join(sorted(members))}",
            )
        extra[key] = freeze(value)
    return MappingProxyType(extra)


def required(body: Mapping[str, Any], key: str, field_path: str) -> Any:
    value = body.get(key)
    if value is None:
        missing_value(field_path)
    return value


def as_str(value: Any, field_path: str) -> str:
    if not isinstance(value, str):
        invalid_value(field_path, value, "Member must be a string")
    return value


def as_int(value: Any, field_path: str) -> int:
    # bool is an int subclass in Python, but JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        invalid_value(field_path, value, "Member must be an integer")
    return value


def as_number(value: Any, field_path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        invalid_value(field_path, value, "Member must be a number")
    if not math.isfinite(value):
        invalid_value(field_path, value, "Member must be a finite number")
    return float(value)


def as_list(value: Any, field_path: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        invalid_value(field_path, value, "Member must be a JSON array")
    return value


def check_length(items: Any, field_path: str, minimum: int, maximum: int) -> None:
    count = len(items)
    shown = f"with {count} entries"
    if count < minimum:
        fail(field_path, shown, f"Member must have length greater than or equal to {minimum}")
    if count > maximum:
        fail(field_path, shown, f"Member must have length less than or equal to {maximum}")


def check_unique(names: Iterable[tuple[str, str]], what: str) -> None:
    """Refuse the first (field path, name) whose name repeats an earlier one, ignoring case."""
    seen: dict[str, tuple[str, str]] = {}
    for field_path, name in names:
        key = name.casefold()
        earlier = seen.get(key)
        if earlier is not None:
            earlier_path, earlier_name = earlier
            invalid_value(
                field_path,
                name,
                f"Member must be unique among {what} values, compared case-insensitively",
                f"'{earlier_name}' at '{earlier_path}' has the same name",
            )
        seen[key] = (field_path, name)


# --- freezing extras ----------------------------------------------------------------------


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(item) for item in value]
    return value


def thaw_mapping(extra: Mapping[str, Any]) -> dict[str, Any]:
    return {key: thaw(value) for key, value in extra.items()}
