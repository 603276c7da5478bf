"""IAM patterns and conditions, compiled once when a policy document is parsed (the matching
rules are :mod:`~mce_router.security.policy`'s docstring's): Action and Resource globs into
:class:`PatternSet`, Condition blocks into tests over a request context.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import PolicyError

#: The condition key SageMaker sets from the ``X-Amzn-SageMaker-Target-Container-Hostname``
#: header (absent from the request context when the header is absent).
TARGET_CONTAINER_KEY: Final = "sagemaker:TargetContainerHostname"

#: A request's condition keys (lower-cased) and their values.
Context = Mapping[str, str]


# Wildcard tokens; every other token is one literal character.
_STAR: Final = object()
_ONE: Final = object()
_Token = object  # a 1-char str, _STAR or _ONE

# IAM's escapes for characters that would otherwise be special (2012-10-17 only).
_VARIABLE_ESCAPES: Final = {"*": "*", "?": "?", "$": "$"}


def _tokens(value: str, *, wildcards: bool, variables: bool, where: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(value)
    while i < n:
        if variables and value.startswith("${", i):
            end = value.find("}", i + 2)
            name = value[i + 2 : end] if end != -1 else None
            if name is not None and name in _VARIABLE_ESCAPES:
                tokens.append(_VARIABLE_ESCAPES[name])
                i = end + 1
                continue
            shown = value[i : end + 1] if end != -1 else value[i:]
            raise PolicyError(
                f"{where}: policy variable {shown!r} is not supported (the router has no values "
                "for policy variables; only the escapes ${*}, ${?} and ${$} are allowed)"
            )
        char = value[i]
        if wildcards and char == "*":
            tokens.append(_STAR)
        elif wildcards and char == "?":
            tokens.append(_ONE)
        else:
            tokens.append(char)
        i += 1
    return tokens


def _is_literal(tokens: list[_Token]) -> bool:
    return all(isinstance(token, str) for token in tokens)


def _literal(tokens: list[_Token]) -> str:
    return "".join(token for token in tokens if isinstance(token, str))


def _regex(tokens: list[_Token], *, any_char: str = ".") -> str:
    """A regex (for ``fullmatch``) equivalent to the glob ``tokens``, that cannot backtrack
    catastrophically: the values matched (target header, endpoint name from the path, action
    from X-Amz-Target) come from the caller, and a naive ``.*a.*a.*b`` takes minutes on a few
    hundred characters.

    The glob is split at each ``*`` into fixed-length segments (``?`` is one ``any_char``).
    The first segment is anchored at the start, the last at the end, and each middle segment
    is matched at its leftmost possible position and committed there (an atomic group, Python
    3.11+). Committing leftmost is always safe: it leaves the most room for what follows, which
    is why the classic greedy glob matcher is correct. Matching is then O(len(value) * len(glob)).
    """
    segments: list[str] = [""]
    for token in tokens:
        if token is _STAR:
            segments.append("")
        elif token is _ONE:
            segments[-1] += any_char
        else:
            assert isinstance(token, str)
            segments[-1] += re.escape(token)
    if len(segments) == 1:
        return segments[0]
    first, *middle, last = segments
    committed = "".join(f"(?>{any_char}*?{segment})" for segment in middle if segment)
    return f"{first}{committed}{any_char}*{last}"


@dataclass(frozen=True, slots=True)
class PatternSet:
    """A list of IAM patterns compiled once: literal values in a set, the wildcard ones in a
    single alternation matched with ``fullmatch``."""

    match_all: bool
    exact: frozenset[str]
    regex: re.Pattern[str] | None

    def matches(self, value: str) -> bool:
        if self.match_all or value in self.exact:
            return True
        return self.regex is not None and self.regex.fullmatch(value) is not None

    @classmethod
    def build(cls, literals: Iterable[str], regexes: Sequence[str], flags: int = 0) -> PatternSet:
        exact = frozenset(literals)
        if ".*" in regexes:  # the glob "*" alone
            return cls(True, exact, None)
        combined = re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL | flags)
        return cls(False, exact, combined if regexes else None)


_ACTION_SYNTAX: Final = re.compile(r"[A-Za-z0-9*?_-]+:[A-Za-z0-9*?_-]+")


def compile_actions(values: list[str], where: str) -> PatternSet:
    literals: list[str] = []
    regexes: list[str] = []
    for i, value in enumerate(values):
        if value != "*" and not _ACTION_SYNTAX.fullmatch(value):
            raise PolicyError(
                f"{where}[{i}]: {value!r} is not an action; expected '*' or "
                "'service:Operation' (e.g. 'sagemaker:InvokeEndpoint', 'sagemaker:Invoke*')"
            )
        # Actions are case-insensitive: patterns and request actions are both lower-cased.
        tokens = _tokens(value.lower(), wildcards=True, variables=False, where=f"{where}[{i}]")
        if _is_literal(tokens):
            literals.append(_literal(tokens))
        else:
            regexes.append(_regex(tokens))
    return PatternSet.build(literals, regexes)


def compile_resources(values: list[str], where: str, *, variables: bool) -> PatternSet:
    literals: list[str] = []
    regexes: list[str] = []
    for i, value in enumerate(values):
        here = f"{where}[{i}]"
        if value == "*":
            regexes.append(".*")
            continue
        parts = value.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            raise PolicyError(
                f"{here}: {value!r} must be '*' or an ARN "
                "'arn:partition:service:region:account:resource' "
                "(e.g. 'arn:aws:sagemaker:us-east-1:123456789012:endpoint/my-endpoint')"
            )
        part_tokens = [_tokens(p, wildcards=True, variables=variables, where=here) for p in parts]
        if all(_is_literal(tokens) for tokens in part_tokens):
            literals.append(":".join(_literal(tokens) for tokens in part_tokens))
            continue
        # A wildcard in partition..account stays within its part; the resource part is free.
        head = [_regex(tokens, any_char="[^:]") for tokens in part_tokens[:5]]
        regexes.append(":".join([*head, _regex(part_tokens[5])]))
    return PatternSet.build(literals, regexes)


# ---------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------

ConditionTest = Callable[[Context], bool]

_STRING_OPERATORS: Final = {
    # name: (negated, pattern matching, ignore case)
    "StringEquals": (False, False, False),
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, False, True),
    "StringNotEqualsIgnoreCase": (True, False, True),
    "StringLike": (False, True, False),
    "StringNotLike": (True, True, False),
}
SUPPORTED_OPERATORS: Final = tuple(
    sorted([*_STRING_OPERATORS, *(f"{op}IfExists" for op in _STRING_OPERATORS), "Null"])
)


def _operator_spec(operator: str, where: str) -> tuple[bool, bool, bool, bool]:
    """(negated, pattern matching, ignore case, if exists) of a supported string operator."""
    base, if_exists = operator, False
    if operator.endswith("IfExists"):
        base, if_exists = operator[: -len("IfExists")], True
    spec = _STRING_OPERATORS.get(base)
    if spec is None and operator != "Null":
        near = [op for op in SUPPORTED_OPERATORS if op.lower() == operator.lower()]
        hint = f"; did you mean {near[0]}?" if near else ""
        raise PolicyError(
            f"{where}: condition operator {operator!r} is not supported{hint} "
            f"(supported: {', '.join(SUPPORTED_OPERATORS)})"
        )
    return (*(spec or (False, False, False)), if_exists)


def _make_condition(
    key: str, positive: Callable[[str], bool], absent: bool, negated: bool
) -> ConditionTest:
    def test(context: Context) -> bool:
        value = context.get(key)
        if value is None:
            return absent
        return positive(value) is not negated

    return test


def _condition_values(raw: Any, where: str) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise PolicyError(f"{where}: must list at least one value")
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str):
            values.append(item)
        elif isinstance(item, int | float):
            values.append(json.dumps(item))
        else:
            raise PolicyError(
                f"{where}: condition values must be strings (or numbers/booleans), "
                f"got {type(item).__name__}"
            )
    return values


def compile_condition_block(raw: Any, where: str, *, variables: bool) -> tuple[ConditionTest, ...]:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must be an object mapping operators to {{key: values}}")
    tests: list[ConditionTest] = []
    for operator, keys in raw.items():
        here = f"{where}.{operator}"
        if not isinstance(operator, str):
            raise PolicyError(f"{where}: operator names must be strings")
        if ":" in operator:
            raise PolicyError(
                f"{here}: set operators (ForAnyValue:/ForAllValues:) are not supported; the "
                "router's condition keys are single-valued"
            )
        _operator_spec(operator, here)
        if not isinstance(keys, Mapping) or not keys:
            raise PolicyError(
                f"{here}: must be a non-empty object mapping condition keys to values"
            )
        for key, raw_values in keys.items():
            if not isinstance(key, str) or ":" not in key:
                raise PolicyError(
                    f"{here}: {key!r} is not a condition key (expected 'service:Name', "
                    f"e.g. '{TARGET_CONTAINER_KEY}')"
                )
            tests.append(
                _compile_condition(operator, key, raw_values, f"{here}.{key}", variables=variables)
            )
    return tuple(tests)


def _compile_condition(
    operator: str, key: str, raw_values: Any, where: str, *, variables: bool
) -> ConditionTest:
    lookup = key.lower()
    values = _condition_values(raw_values, where)
    if operator == "Null":
        wanted: set[bool] = set()
        for value in values:
            if value.lower() not in ("true", "false"):
                raise PolicyError(f"{where}: Null takes 'true' or 'false', got {value!r}")
            wanted.add(value.lower() == "true")
        absent_wanted = frozenset(wanted)
        return lambda context: (context.get(lookup) is None) in absent_wanted
    negated, like, ignore_case, if_exists = _operator_spec(operator, where)
    # Absent key: ordinary operators are false, negated ones true, ...IfExists true.
    absent = negated or if_exists
    if like:
        tokens = [_tokens(v, wildcards=True, variables=variables, where=where) for v in values]
        patterns = PatternSet.build(
            [_literal(t) for t in tokens if _is_literal(t)],
            [_regex(t) for t in tokens if not _is_literal(t)],
        )
        positive: Callable[[str], bool] = patterns.matches
    else:
        literals = [
            _literal(_tokens(v, wildcards=False, variables=variables, where=where)) for v in values
        ]
        if ignore_case:
            folded = frozenset(v.lower() for v in literals)

            def positive(value: str) -> bool:
                return value.lower() in folded

        else:
            positive = frozenset(literals).__contains__
    return _make_condition(lookup, positive, absent, negated)
