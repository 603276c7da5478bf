"""IAM identity-policy documents: parsing with clear errors, and evaluation as IAM does it.

Evaluation (IAM's identity-policy logic, single account, no boundaries or SCPs):

- a statement matches when its Action (or NotAction), its Resource (or NotResource) and every
  condition in its Condition block match;
- any matching ``Deny`` decides (explicit deny), whatever the order of statements or policies;
- otherwise any matching ``Allow`` decides (allow);
- otherwise the request is denied (implicit deny).

Matching rules:

- Action: case-insensitive; ``*`` matches any run of characters, ``?`` exactly one.
- Resource: case-sensitive ARNs; ``*`` alone matches everything; otherwise each of the first five
  colon-separated ARN parts is matched on its own (a wildcard there does not reach past a
  colon), and the sixth part (the resource, which may itself contain colons) as a whole.
- Condition keys are case-insensitive; values are case-sensitive except for the ``IgnoreCase``
  operators. ``StringLike`` patterns use ``*`` and ``?`` only: ``[``, ``]`` and every other
  character are literal (this is not :mod:`fnmatch`). Operators AND together, keys under one
  operator AND, the values listed for one key OR (for negated operators: none may match).
- A key absent from the request: ``StringEquals``/``StringLike`` (and ``...IgnoreCase``) are false,
  the negated operators are true, every ``...IfExists`` form is true, and ``Null`` tests
  presence (``"true"``: the key must be absent).

Supported condition operators: StringEquals, StringNotEquals, StringEqualsIgnoreCase,
StringNotEqualsIgnoreCase, StringLike, StringNotLike (each also as ...IfExists), and Null.
Anything else (Numeric*, Date*, Bool, IpAddress, Arn*, ForAnyValue:/ForAllValues:) is rejected
when the document is parsed, never silently ignored: a Deny that cannot be evaluated must not
quietly stop denying.

Policy variables: in a ``2012-10-17`` document, ``${*}``, ``${?}`` and ``${$}`` are the literal
characters ``*``, ``?`` and ``$`` (as in IAM); any other ``${...}`` (``${aws:username}``, ...)
is rejected, because the router has no values for them and a Deny using one would silently
never match. In a ``2008-10-17`` document (also the version of a document without ``Version``,
as in IAM) ``${...}`` is literal text.

Every pattern is compiled once, when the document is parsed; :class:`PolicySet` flattens the
statements of one principal's policies so that evaluating a request allocates nothing.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from ..errors import refuse_unknown_keys
from .errors import PolicyError
from .patterns import (
    TARGET_CONTAINER_KEY,
    ConditionTest,
    Context,
    PatternSet,
    compile_actions,
    compile_condition_block,
    compile_resources,
)

#: Condition keys the router puts in a request context; a policy may name others (they are then
#: always absent, which IAM semantics define precisely), but a config warns about them.
KNOWN_CONTEXT_KEYS: Final = frozenset({TARGET_CONTAINER_KEY.lower()})

VERSION_2012: Final = "2012-10-17"
VERSION_2008: Final = "2008-10-17"

DecisionKind = Literal["allow", "explicit-deny", "implicit-deny"]
Effect = Literal["Allow", "Deny"]


# ---------------------------------------------------------------------------------------------
# Requests and decisions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """What is being asked: an action on a resource, with condition keys from the request.

    Context keys are case-insensitive in IAM, so they are lower-cased here once; values are kept
    as given (they are case-sensitive)."""

    action: str
    resource: str
    context: Context = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        context = self.context
        if any(key != key.lower() for key in context):
            object.__setattr__(self, "context", {key.lower(): v for key, v in context.items()})

    @property
    def target_container(self) -> str | None:
        return self.context.get(TARGET_CONTAINER_KEY.lower())


@dataclass(frozen=True, slots=True)
class StatementRef:
    """Which statement decided: its position (policy, statement) and its Sid if it has one."""

    policy_index: int
    statement_index: int
    sid: str | None = None
    #: Where the policy came from (a file name, ``credentials[0].policies[1]``), if known.
    policy_name: str = ""

    @property
    def label(self) -> str:
        """Short form for audit lines: the Sid, else ``policy[i].Statement[j]``."""
        if self.sid:
            return self.sid
        return f"policy[{self.policy_index}].Statement[{self.statement_index}]"

    def __str__(self) -> str:
        policy = self.policy_name or f"policy[{self.policy_index}]"
        sid = f' (Sid "{self.sid}")' if self.sid else ""
        return f"{policy} Statement[{self.statement_index}]{sid}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating a request: ``statement`` is the one that decided (None for an
    implicit deny, where no statement matched)."""

    kind: DecisionKind
    statement: StatementRef | None = None

    @property
    def allowed(self) -> bool:
        return self.kind == "allow"


IMPLICIT_DENY: Final = Decision("implicit-deny")


def access_denied_message(principal: str, request: AuthzRequest, decision: Decision) -> str:
    """AWS's wording for a denied request. It names the action and the resource the caller
    asked for and nothing about the target container or whether anything exists, so a caller
    who may not invoke a container cannot learn from the answer whether it is there."""
    head = (
        f"User: {principal} is not authorized to perform: {request.action} "
        f"on resource: {request.resource}"
    )
    if decision.kind == "explicit-deny":
        return f"{head} with an explicit deny in an identity-based policy"
    return f"{head} because no identity-based policy allows the {request.action} action"


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

_DOCUMENT_KEYS: Final = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS: Final = frozenset(
    {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}
)


@dataclass(frozen=True, slots=True, eq=False)
class Statement:
    """One compiled statement. ``index`` is its position in the document's Statement list."""

    index: int
    sid: str | None
    effect: Effect
    actions: PatternSet
    not_action: bool
    resources: PatternSet
    not_resource: bool
    conditions: tuple[ConditionTest, ...]
    condition_keys: frozenset[str]

    def matches(self, action_lower: str, resource: str, context: Context) -> bool:
        # `matches(...) is not_x` inverts the test for NotAction/NotResource without a branch.
        if self.actions.matches(action_lower) is self.not_action:
            return False
        if self.resources.matches(resource) is self.not_resource:
            return False
        # A plain loop: all() over a generator costs more than the usual one or two conditions.
        for condition in self.conditions:  # noqa: SIM110
            if not condition(context):
                return False
        return True


@dataclass(frozen=True, slots=True, eq=False)
class PolicyDocument:
    """A parsed, validated, compiled IAM identity policy."""

    version: str
    statements: tuple[Statement, ...]
    #: Where it came from (file name, config position); used in messages and statement refs.
    name: str = ""
    #: The document as given (after JSON decoding), e.g. to print it back.
    source: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def condition_keys(self) -> frozenset[str]:
        """Every condition key the document tests, lower-cased."""
        keys: set[str] = set()
        for statement in self.statements:
            keys |= statement.condition_keys
        return frozenset(keys)

    @classmethod
    def parse(cls, doc: Mapping[str, Any] | str | bytes, *, name: str = "") -> PolicyDocument:
        """Validate and compile ``doc`` (a JSON text or an already decoded object).

        Raises :class:`PolicyError` naming the policy, the statement index and the field."""
        where = name or "policy"
        if isinstance(doc, str | bytes):
            try:
                decoded = json.loads(doc, object_pairs_hook=_reject_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise PolicyError(f"{where}: not valid JSON: {exc}") from exc
            except _DuplicateKey as exc:
                raise PolicyError(f"{where}: duplicate key {exc.args[0]!r} in one object") from exc
            doc = decoded
        if not isinstance(doc, Mapping):
            raise PolicyError(f"{where}: a policy document must be a JSON object")
        refuse_unknown_keys(doc, _DOCUMENT_KEYS, where, PolicyError)
        version = _version(doc.get("Version", VERSION_2008), where)
        if "Id" in doc and not isinstance(doc["Id"], str):
            raise PolicyError(f"{where}.Id: must be a string")
        if "Statement" not in doc:
            raise PolicyError(f"{where}: missing 'Statement'")
        raw_statements = doc["Statement"]
        if isinstance(raw_statements, Mapping):
            raw_statements = [raw_statements]
        if not isinstance(raw_statements, list) or not raw_statements:
            raise PolicyError(f"{where}.Statement: must be an object or a non-empty list of them")
        statements: list[Statement] = []
        sids: set[str] = set()
        for index, raw in enumerate(raw_statements):
            statement = _parse_statement(
                raw, index, f"{where}.Statement[{index}]", variables=version == VERSION_2012
            )
            if statement.sid is not None:
                if statement.sid in sids:
                    raise PolicyError(
                        f"{where}.Statement[{index}].Sid: {statement.sid!r} is used twice; "
                        "statement IDs must be unique within a policy"
                    )
                sids.add(statement.sid)
            statements.append(statement)
        return cls(version, tuple(statements), name, doc)


class _DuplicateKey(Exception):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys; a dropped "Condition" or "Effect" would silently
    # change what a statement means, so a duplicate is an error.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _version(raw: Any, where: str) -> str:
    # YAML reads an unquoted 2012-10-17 as a date; accept it as the string it was meant to be.
    if isinstance(raw, datetime.date):
        raw = raw.isoformat()
    if raw not in (VERSION_2012, VERSION_2008):
        raise PolicyError(
            f"{where}.Version: must be '{VERSION_2012}' (or '{VERSION_2008}'), got {raw!r}"
        )
    return str(raw)


def _string_list(raw: Any, where: str) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise PolicyError(f"{where}: must not be empty")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise PolicyError(
                f"{where}[{i}]: must be a non-empty string, got {item!r}"
                if isinstance(raw, list)
                else f"{where}: must be a non-empty string or a list of them, got {item!r}"
            )
    return items


def _one_of(raw: Mapping[str, Any], names: tuple[str, str], where: str) -> tuple[str, Any]:
    present = [n for n in names if n in raw]
    if len(present) != 1:
        problem = "has both" if present else "needs one of"
        raise PolicyError(f"{where}: {problem} '{names[0]}' and '{names[1]}'")
    return present[0], raw[present[0]]


def _parse_statement(raw: Any, index: int, where: str, *, variables: bool) -> Statement:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: a statement must be a JSON object")
    for principal in ("Principal", "NotPrincipal"):
        if principal in raw:
            raise PolicyError(
                f"{where}.{principal}: identity policies cannot name a principal (the principal "
                "is the credential the policy is attached to)"
            )
    refuse_unknown_keys(raw, _STATEMENT_KEYS, where, PolicyError)
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise PolicyError(f"{where}.Sid: must be a string")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(
            f"{where}.Effect: must be 'Allow' or 'Deny' (case-sensitive), got {effect!r}"
        )
    action_field, action_raw = _one_of(raw, ("Action", "NotAction"), where)
    actions = compile_actions(
        _string_list(action_raw, f"{where}.{action_field}"), f"{where}.{action_field}"
    )
    resource_field, resource_raw = _one_of(raw, ("Resource", "NotResource"), where)
    resources = compile_resources(
        _string_list(resource_raw, f"{where}.{resource_field}"),
        f"{where}.{resource_field}",
        variables=variables,
    )
    condition_raw = raw.get("Condition", {})
    conditions = compile_condition_block(condition_raw, f"{where}.Condition", variables=variables)
    keys = frozenset(
        str(key).lower() for keys_by_op in condition_raw.values() for key in keys_by_op
    )
    return Statement(
        index=index,
        sid=sid or None,
        effect=effect,
        actions=actions,
        not_action=action_field == "NotAction",
        resources=resources,
        not_resource=resource_field == "NotResource",
        conditions=conditions,
        condition_keys=keys,
    )


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


class PolicySet:
    """The policies of one principal, flattened for evaluation: Deny statements first (any match
    decides), then Allow statements. Decisions are built once per statement, so
    :meth:`evaluate` allocates nothing."""

    __slots__ = ("_allows", "_denies", "policies")

    def __init__(self, policies: Iterable[PolicyDocument]) -> None:
        self.policies: tuple[PolicyDocument, ...] = tuple(policies)
        denies: list[tuple[Statement, Decision]] = []
        allows: list[tuple[Statement, Decision]] = []
        for policy_index, policy in enumerate(self.policies):
            for statement in policy.statements:
                ref = StatementRef(policy_index, statement.index, statement.sid, policy.name)
                if statement.effect == "Deny":
                    denies.append((statement, Decision("explicit-deny", ref)))
                else:
                    allows.append((statement, Decision("allow", ref)))
        self._denies = tuple(denies)
        self._allows = tuple(allows)

    def evaluate(self, request: AuthzRequest) -> Decision:
        action = request.action.lower()
        resource = request.resource
        context = request.context
        for statement, decision in self._denies:
            if statement.matches(action, resource, context):
                return decision
        for statement, decision in self._allows:
            if statement.matches(action, resource, context):
                return decision
        return IMPLICIT_DENY


def evaluate(policies: Sequence[PolicyDocument] | PolicySet, request: AuthzRequest) -> Decision:
    """Evaluate ``request`` against ``policies`` (all of one principal). For repeated
    evaluation, build a :class:`PolicySet` once and call its ``evaluate``."""
    policy_set = policies if isinstance(policies, PolicySet) else PolicySet(policies)
    return policy_set.evaluate(request)
