"""IAM policy evaluation, table-driven: the seed document's two policies, every supported
operator, wildcards, NotAction/NotResource, several statements and policies, malformed
documents; and the Guard's authorization and audit lines."""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

import pytest

from mce_router.errors import wire_error
from mce_router.security import (
    AccessDenied,
    AuditLog,
    AuthConfig,
    AuthzRequest,
    Credential,
    Decision,
    Guard,
    PolicyDocument,
    PolicyError,
    PolicySet,
    control_plane_requests,
    endpoint_arn,
    evaluate,
    invoke_request,
)
from mce_router.security.patterns import TARGET_CONTAINER_KEY

REGION = "us-east-1"
ACCOUNT = "000000000000"
ENDPOINT = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/endpoint_name"
OTHER_ENDPOINT = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/other_endpoint"
INVOKE = "sagemaker:InvokeEndpoint"
ABSENT = None  # the target header was not sent: the condition key is absent

# The two policies of the seed document ("Security with multi-container endpoints"), with
# region and account filled in.
SEED_ALLOW_LISTED = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Allow",
            "Resource": ENDPOINT,
            "Condition": {
                "StringLike": {"sagemaker:TargetContainerHostname": ["customIps*", "common*"]}
            },
        }
    ],
}
SEED_DENY_SPECIAL = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Allow",
            "Resource": ENDPOINT,
            "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["*"]}},
        },
        {
            "Action": ["sagemaker:InvokeEndpoint"],
            "Effect": "Deny",
            "Resource": ENDPOINT,
            "Condition": {"StringLike": {"sagemaker:TargetContainerHostname": ["special*"]}},
        },
    ],
}


def request(
    target: str | None = ABSENT, *, action: str = INVOKE, resource: str = ENDPOINT, **context: str
) -> AuthzRequest:
    values = dict(context)
    if target is not None:
        values[TARGET_CONTAINER_KEY] = target
    return AuthzRequest(action, resource, values)


def decide(policies: list[dict[str, Any]], req: AuthzRequest) -> Decision:
    return evaluate([PolicyDocument.parse(p, name=f"p{i}") for i, p in enumerate(policies)], req)


def where(decision: Decision) -> tuple[int, int] | None:
    ref = decision.statement
    return None if ref is None else (ref.policy_index, ref.statement_index)


# ---------------------------------------------------------------------------------------------
# The seed policies
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("customIps1", "allow"),
        ("customIps", "allow"),  # * also matches the empty run
        ("common", "allow"),
        ("common-2", "allow"),
        ("special1", "implicit-deny"),
        ("Special1", "implicit-deny"),
        ("other", "implicit-deny"),
        ("CustomIps1", "implicit-deny"),  # values are case-sensitive
        ("customips1", "implicit-deny"),
        ("xcustomIps1", "implicit-deny"),  # whole-string match
        ("", "implicit-deny"),
        (ABSENT, "implicit-deny"),  # StringLike on an absent key is false
    ],
)
def test_seed_policy_allowing_listed_containers(target: str | None, kind: str) -> None:
    decision = decide([SEED_ALLOW_LISTED], request(target))
    assert decision.kind == kind
    assert decision.allowed is (kind == "allow")
    assert where(decision) == ((0, 0) if kind == "allow" else None)


@pytest.mark.parametrize(
    ("target", "kind", "statement"),
    [
        ("customIps1", "allow", (0, 0)),
        ("common", "allow", (0, 0)),
        ("other", "allow", (0, 0)),
        ("", "allow", (0, 0)),  # present, and * matches the empty string
        ("special1", "explicit-deny", (0, 1)),
        ("special", "explicit-deny", (0, 1)),
        ("Special1", "allow", (0, 0)),  # StringLike is case-sensitive
        ("SPECIAL", "allow", (0, 0)),
        ("notspecial", "allow", (0, 0)),
        # Neither statement matches without the header: the Allow's StringLike is false, and so
        # is the Deny's. Default deny.
        (ABSENT, "implicit-deny", None),
    ],
)
def test_seed_policy_denying_special_containers(
    target: str | None, kind: str, statement: tuple[int, int] | None
) -> None:
    decision = decide([SEED_DENY_SPECIAL], request(target))
    assert (decision.kind, where(decision)) == (kind, statement)


@pytest.mark.parametrize(
    ("req", "kind"),
    [
        (request("customIps1", resource=OTHER_ENDPOINT), "implicit-deny"),
        (request("customIps1", action="sagemaker:invokeendpoint"), "allow"),  # actions: any case
        (request("customIps1", action="SAGEMAKER:INVOKEENDPOINT"), "allow"),
        (request("customIps1", action="sagemaker:InvokeEndpointAsync"), "implicit-deny"),
        (request("customIps1", action="sagemaker:CreateModel"), "implicit-deny"),
        (request("customIps1", resource=ENDPOINT.upper()), "implicit-deny"),  # ARNs: exact case
    ],
)
def test_seed_policy_other_actions_and_resources(req: AuthzRequest, kind: str) -> None:
    assert decide([SEED_ALLOW_LISTED], req).kind == kind


def test_both_seed_policies_on_one_principal_deny_wins() -> None:
    policies = [SEED_ALLOW_LISTED, SEED_DENY_SPECIAL]
    assert where(decide(policies, request("customIps1"))) == (0, 0)
    assert decide(policies, request("other")).kind == "allow"
    denied = decide(policies, request("special1"))
    assert (denied.kind, where(denied)) == ("explicit-deny", (1, 1))


# ---------------------------------------------------------------------------------------------
# Patterns: ?, literal brackets and other regex characters, escapes
# ---------------------------------------------------------------------------------------------


def like(
    *patterns: Any, operator: str = "StringLike", version: str = "2012-10-17"
) -> dict[str, Any]:
    return {
        "Version": version,
        "Statement": {
            "Effect": "Allow",
            "Action": INVOKE,
            "Resource": "*",
            "Condition": {operator: {TARGET_CONTAINER_KEY: list(patterns)}},
        },
    }


@pytest.mark.parametrize(
    ("pattern", "target", "matches"),
    [
        ("model-?", "model-1", True),
        ("model-?", "model-", False),  # ? is exactly one character
        ("model-?", "model-12", False),
        ("??", "ab", True),
        ("a*b?c", "axxxbyc", True),
        ("[abc]", "[abc]", True),  # brackets are literal, not a character class
        ("[abc]", "a", False),
        ("model[0-9]", "model1", False),
        ("model[0-9]", "model[0-9]", True),
        ("[!a]*", "b", False),
        ("a.b", "axb", False),  # regex metacharacters are literal
        ("a.b", "a.b", True),
        ("a+", "aa", False),
        ("(x|y)", "x", False),
        ("^x$", "^x$", True),
        ("back\\slash", "back\\slash", True),
        ("multi\nline*", "multi\nline-2", True),
        ("a${*}", "a*", True),  # ${*} is a literal *
        ("a${*}", "ab", False),
        ("what${?}", "what?", True),
        ("cost${$}", "cost$", True),
        ("*", "anything at all", True),
    ],
)
def test_string_like_wildcards(pattern: str, target: str, matches: bool) -> None:
    assert decide([like(pattern)], request(target)).allowed is matches


def reference_glob(pattern: str, value: str) -> bool:
    """IAM's * and ? by dynamic programming: obviously right, quadratic, for comparison."""
    matches = [[False] * (len(value) + 1) for _ in range(len(pattern) + 1)]
    matches[0][0] = True
    for i, p in enumerate(pattern, 1):
        matches[i][0] = matches[i - 1][0] and p == "*"
        for j, v in enumerate(value, 1):
            if p == "*":
                matches[i][j] = matches[i - 1][j] or matches[i][j - 1]
            else:
                matches[i][j] = matches[i - 1][j - 1] and (p == "?" or p == v)
    return matches[-1][-1]


def test_string_like_agrees_with_a_reference_glob_matcher() -> None:
    rng = random.Random(5)
    for _ in range(300):
        pattern = "".join(rng.choice("ab*?[") for _ in range(rng.randint(1, 7)))
        policy_set = PolicySet([PolicyDocument.parse(like(pattern))])
        for _ in range(10):
            value = "".join(rng.choice("ab[") for _ in range(rng.randint(0, 9)))
            expected = reference_glob(pattern, value)
            assert policy_set.evaluate(request(value)).allowed is expected, (pattern, value)


@pytest.mark.parametrize(
    "field",
    ["condition", "resource", "action"],
)
def test_adversarial_patterns_and_values_take_linear_time(field: str) -> None:
    """Values come from the caller (a 16 KiB header, the endpoint name in the path, the
    operation in X-Amz-Target); a naive glob-to-regex takes minutes on a few hundred bytes."""
    glob = "*a*a*a*a*a*a*a*b"
    long_value = "a" * 16384
    if field == "condition":
        policy, req = like(glob), request(long_value)
    elif field == "resource":
        arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/"
        policy, req = allow(INVOKE, arn + glob), request("x", resource=arn + long_value)
    else:
        policy, req = allow("sagemaker:" + glob), request(action="sagemaker:" + long_value)
    policy_set = PolicySet([PolicyDocument.parse(policy)])
    started = time.perf_counter()
    assert not policy_set.evaluate(req).allowed
    assert time.perf_counter() - started < 0.5


def test_dollar_escapes_and_wildcards_are_literal_in_2008_documents_and_string_equals() -> None:
    old = like("a${aws:username}", version="2008-10-17")
    assert decide([old], request("a${aws:username}")).allowed
    assert decide([like("a*", operator="StringEquals")], request("a*")).allowed
    assert not decide([like("a*", operator="StringEquals")], request("ab")).allowed
    assert decide([like("a${*}", operator="StringEquals")], request("a*")).allowed


def test_version_defaults_to_2008_as_in_iam() -> None:
    doc = PolicyDocument.parse({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}})
    assert doc.version == "2008-10-17"


# ---------------------------------------------------------------------------------------------
# Condition operators
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "values", "cases"),
    [
        ("StringEquals", ["a", "b"], {"a": True, "b": True, "A": False, "c": False, ABSENT: False}),
        ("StringNotEquals", ["a", "b"], {"a": False, "b": False, "c": True, ABSENT: True}),
        (
            "StringEqualsIgnoreCase",
            ["Abc"],
            {"ABC": True, "abc": True, "abd": False, ABSENT: False},
        ),
        ("StringNotEqualsIgnoreCase", ["Abc"], {"ABC": False, "x": True, ABSENT: True}),
        (
            "StringLike",
            ["a*", "b?"],
            {"ab": True, "b1": True, "b12": False, "ca": False, ABSENT: False},
        ),
        ("StringNotLike", ["a*", "b*"], {"a1": False, "b1": False, "c": True, ABSENT: True}),
        ("StringEqualsIfExists", ["a"], {"a": True, "b": False, ABSENT: True}),
        ("StringNotEqualsIfExists", ["a"], {"a": False, "b": True, ABSENT: True}),
        ("StringEqualsIgnoreCaseIfExists", ["a"], {"A": True, "b": False, ABSENT: True}),
        ("StringLikeIfExists", ["a*"], {"ab": True, "b": False, ABSENT: True}),
        ("StringNotLikeIfExists", ["a*"], {"ab": False, "b": True, ABSENT: True}),
        ("Null", ["true"], {"x": False, "": False, ABSENT: True}),
        ("Null", ["false"], {"x": True, "": True, ABSENT: False}),
        ("Null", [True], {"x": False, ABSENT: True}),  # JSON booleans are accepted
        ("Null", ["true", "false"], {"x": True, ABSENT: True}),
    ],
)
def test_condition_operators(
    operator: str, values: list[Any], cases: dict[str | None, bool]
) -> None:
    policies = [like(*values, operator=operator)]
    for target, allowed in cases.items():
        assert decide(policies, request(target)).allowed is allowed, (operator, target)


def test_condition_keys_are_case_insensitive_and_values_are_not() -> None:
    doc = {
        "Version": "2012-10-17",
        "Statement": {
            "Effect": "Allow",
            "Action": INVOKE,
            "Resource": "*",
            "Condition": {"StringEquals": {"SageMaker:targetcontainerHOSTNAME": "Model"}},
        },
    }
    assert decide(
        [doc], AuthzRequest(INVOKE, ENDPOINT, {"SAGEMAKER:TargetContainerHostname": "Model"})
    ).allowed
    assert not decide([doc], request("model")).allowed


def test_operators_and_keys_and_together_values_or() -> None:
    doc = {
        "Version": "2012-10-17",
        "Statement": {
            "Effect": "Allow",
            "Action": INVOKE,
            "Resource": "*",
            "Condition": {
                "StringLike": {TARGET_CONTAINER_KEY: ["a*", "b*"], "test:Colour": "bl*"},
                "StringNotEquals": {TARGET_CONTAINER_KEY: "a-forbidden"},
            },
        },
    }
    cases = [
        (request("a1", **{"test:Colour": "blue"}), True),
        (request("b1", **{"test:colour": "black"}), True),
        (request("a1", **{"test:Colour": "red"}), False),  # second key of the operator fails
        (request("a1"), False),  # second key absent
        (request("a-forbidden", **{"test:Colour": "blue"}), False),  # second operator fails
        (request("c1", **{"test:Colour": "blue"}), False),
    ]
    for req, allowed in cases:
        assert decide([doc], req).allowed is allowed, req


def test_condition_values_may_be_numbers_and_booleans() -> None:
    assert decide([like(7, 1.5, False, operator="StringEquals")], request("7")).allowed
    assert decide([like(7, 1.5, False, operator="StringEquals")], request("1.5")).allowed
    assert decide([like(7, 1.5, False, operator="StringEquals")], request("false")).allowed


# ---------------------------------------------------------------------------------------------
# Actions, resources, NotAction, NotResource
# ---------------------------------------------------------------------------------------------


def allow(action: Any = INVOKE, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    statement = {"Effect": "Allow", **extra}
    if "NotAction" not in extra:
        statement["Action"] = action
    if "NotResource" not in extra:
        statement["Resource"] = resource
    return {"Version": "2012-10-17", "Statement": [statement]}


@pytest.mark.parametrize(
    ("pattern", "action", "allowed"),
    [
        ("sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpoint", True),
        ("sagemaker:Invoke*", "sagemaker:InvokeEndpoint", True),
        ("sagemaker:invoke*", "SageMaker:InvokeEndpoint", True),
        ("sagemaker:*", "sagemaker:CreateModel", True),
        ("*", "sagemaker:DeleteEndpoint", True),
        ("sagemaker:Invoke?ndpoint", "sagemaker:InvokeEndpoint", True),
        ("sagemaker:Invoke", "sagemaker:InvokeEndpoint", False),
        ("sagemaker:Invoke*", "sagemaker:CreateModel", False),
        ("s3:*", "sagemaker:InvokeEndpoint", False),
        (["s3:*", "sagemaker:Create*"], "sagemaker:CreateEndpoint", True),
    ],
)
def test_action_matching(pattern: Any, action: str, allowed: bool) -> None:
    assert decide([allow(pattern)], request(action=action)).allowed is allowed


@pytest.mark.parametrize(
    ("pattern", "resource", "allowed"),
    [
        ("*", ENDPOINT, True),
        ("*", "*", True),
        (ENDPOINT, "*", False),  # List operations (resource *) need Resource "*"
        ("arn:aws:sagemaker:*:*:endpoint/*", ENDPOINT, True),
        (f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/endpoint_*", ENDPOINT, True),
        (f"arn:aws:sagemaker:us-east-?:{ACCOUNT}:endpoint/endpoint_name", ENDPOINT, True),
        (f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/Endpoint_Name", ENDPOINT, False),
        (f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/*", ENDPOINT, False),
        (f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:*", ENDPOINT, True),
        ("arn:aws:sagemaker:*:111111111111:endpoint/*", ENDPOINT, False),
        # A wildcard in one ARN part does not reach into the next one.
        (
            f"arn:aws:sagemaker:*:{ACCOUNT}:endpoint/e",
            f"arn:aws:sagemaker:a:b:{ACCOUNT}:endpoint/e",
            False,
        ),
        # The resource part is matched as a whole, colons included.
        (
            f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/*",
            f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/a:b",
            True,
        ),
    ],
)
def test_resource_matching(pattern: str, resource: str, allowed: bool) -> None:
    assert decide([allow(resource=pattern)], request(resource=resource)).allowed is allowed


def test_not_action() -> None:
    policies = [allow(NotAction=["sagemaker:Create*", "sagemaker:Delete*"])]
    assert decide(policies, request(action=INVOKE)).allowed
    assert decide(policies, request(action="sagemaker:DescribeEndpoint")).allowed
    assert not decide(policies, request(action="sagemaker:CreateModel")).allowed
    assert not decide(policies, request(action="SAGEMAKER:deleteendpoint")).allowed


def test_not_resource_with_deny() -> None:
    public = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/public-*"
    policies = [
        allow("*", "*"),
        {
            "Version": "2012-10-17",
            "Statement": {"Effect": "Deny", "Action": "*", "NotResource": public},
        },
    ]
    assert decide(policies, request(resource=endpoint_arn(REGION, ACCOUNT, "public-a"))).allowed
    private = decide(policies, request(resource=endpoint_arn(REGION, ACCOUNT, "private")))
    assert (private.kind, where(private)) == ("explicit-deny", (1, 0))


# ---------------------------------------------------------------------------------------------
# Several statements and policies
# ---------------------------------------------------------------------------------------------

DENY_SPECIAL = {
    "Sid": "NoSpecial",
    "Effect": "Deny",
    "Action": "sagemaker:*",
    "Resource": "*",
    "Condition": {"StringLike": {TARGET_CONTAINER_KEY: "special*"}},
}
ALLOW_ALL = {"Sid": "Everything", "Effect": "Allow", "Action": "*", "Resource": "*"}


@pytest.mark.parametrize(
    "statements",
    [[DENY_SPECIAL, ALLOW_ALL], [ALLOW_ALL, DENY_SPECIAL]],
    ids=["deny-first", "deny-last"],
)
def test_explicit_deny_wins_regardless_of_order(statements: list[dict[str, Any]]) -> None:
    doc = {"Version": "2012-10-17", "Statement": statements}
    denied = decide([doc], request("special-7"))
    assert denied.kind == "explicit-deny"
    assert denied.statement is not None and denied.statement.sid == "NoSpecial"
    allowed = decide([doc], request("ordinary"))
    assert allowed.statement is not None and allowed.statement.sid == "Everything"


def test_deny_in_any_policy_wins_over_allow_in_another() -> None:
    deny_doc = {"Version": "2012-10-17", "Statement": [DENY_SPECIAL]}
    allow_doc = {"Version": "2012-10-17", "Statement": [ALLOW_ALL]}
    for policies, deny_at in (([allow_doc, deny_doc], (1, 0)), ([deny_doc, allow_doc], (0, 0))):
        decision = decide(policies, request("special"))
        assert (decision.kind, where(decision)) == ("explicit-deny", deny_at)


def test_several_policies_each_allowing_part() -> None:
    invoke_only = allow(INVOKE, endpoint_arn(REGION, ACCOUNT, "endpoint_name"))
    describe_only = allow("sagemaker:Describe*", "*")
    policies = [invoke_only, describe_only]
    assert where(decide(policies, request("x"))) == (0, 0)
    assert where(decide(policies, request(action="sagemaker:DescribeEndpoint"))) == (1, 0)
    assert decide(policies, request(action="sagemaker:DeleteEndpoint")) == Decision("implicit-deny")


def test_no_policies_is_default_deny() -> None:
    assert evaluate([], request("x")).kind == "implicit-deny"


def test_statement_reference_names_policy_statement_and_sid() -> None:
    doc = PolicyDocument.parse({"Version": "2012-10-17", "Statement": [ALLOW_ALL]}, name="a.json")
    ref = PolicySet([doc]).evaluate(request("x")).statement
    assert ref is not None
    assert (ref.policy_index, ref.statement_index, ref.sid, ref.policy_name) == (
        0,
        0,
        "Everything",
        "a.json",
    )
    assert str(ref) == 'a.json Statement[0] (Sid "Everything")'
    assert ref.label == "Everything"
    unnamed = PolicySet([PolicyDocument.parse(allow())]).evaluate(request("x")).statement
    assert unnamed is not None and unnamed.label == "policy[0].Statement[0]"


def test_parse_accepts_json_text_and_a_single_statement_object() -> None:
    text = json.dumps(SEED_DENY_SPECIAL)
    assert decide([json.loads(text)], request("special")).kind == "explicit-deny"
    assert evaluate([PolicyDocument.parse(text.encode())], request("x")).allowed
    single = PolicyDocument.parse({"Version": "2012-10-17", "Statement": ALLOW_ALL})
    assert len(single.statements) == 1


# ---------------------------------------------------------------------------------------------
# Malformed documents
# ---------------------------------------------------------------------------------------------


def statement(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"Effect": "Allow", "Action": INVOKE, "Resource": "*"}
    base.update(fields)
    return {
        "Version": "2012-10-17",
        "Statement": [ALLOW_ALL, {k: v for k, v in base.items() if v is not ...}],
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "policy: a policy document must be a JSON object"),
        ("{not json", "policy: not valid JSON"),
        ('{"Statement": [], "Statement": []}', "policy: duplicate key 'Statement'"),
        (
            '{"Version": "2012-10-17", "Statement": '
            '{"Effect": "Allow", "Effect": "Deny", "Action": "*", "Resource": "*"}}',
            "duplicate key 'Effect'",
        ),
        (
            {"Version": "2012-10-17", "Statements": []},
            "policy.Statements: unknown setting 'Statements'; did you mean 'Statement'?",
        ),
        ({"Version": "2012-10-18", "Statement": []}, "policy.Version: must be '2012-10-17'"),
        ({"Version": "2012-10-17"}, "policy: missing 'Statement'"),
        (
            {"Version": "2012-10-17", "Statement": []},
            "policy.Statement: must be an object or a non-empty list",
        ),
        (
            {"Version": "2012-10-17", "Statement": ["x"]},
            "policy.Statement[0]: a statement must be a JSON object",
        ),
        (
            statement(Effect="allow"),
            "policy.Statement[1].Effect: must be 'Allow' or 'Deny' (case-sensitive), got 'allow'",
        ),
        (statement(Effect=...), "policy.Statement[1].Effect: must be 'Allow' or 'Deny'"),
        (statement(NotAction="s3:*"), "policy.Statement[1]: has both 'Action' and 'NotAction'"),
        (statement(Action=...), "policy.Statement[1]: needs one of 'Action' and 'NotAction'"),
        (statement(Resource=...), "policy.Statement[1]: needs one of 'Resource' and 'NotResource'"),
        (
            statement(Action=5),
            "policy.Statement[1].Action: must be a non-empty string or a list of them",
        ),
        (
            statement(Action=[INVOKE, ""]),
            "policy.Statement[1].Action[1]: must be a non-empty string",
        ),
        (statement(Action=[]), "policy.Statement[1].Action: must not be empty"),
        (
            statement(Action="InvokeEndpoint"),
            "policy.Statement[1].Action[0]: 'InvokeEndpoint' is not an action",
        ),
        (
            statement(Resource="endpoint/x"),
            "policy.Statement[1].Resource[0]: 'endpoint/x' must be '*' or an ARN",
        ),
        (
            statement(Resource=["*", "arn:aws:sagemaker:*:endpoint/x"]),
            "Resource[1]: 'arn:aws:sagemaker:*:endpoint/x' must be '*' or an ARN",
        ),
        (
            statement(Resource="arn:aws:sagemaker:*:*:endpoint/${aws:username}"),
            "Resource[0]: policy variable '${aws:username}' is not supported",
        ),
        (statement(Condition="x"), "policy.Statement[1].Condition: must be an object"),
        (
            statement(Condition={"NumericEquals": {"a:b": "1"}}),
            "Statement[1].Condition.NumericEquals: condition operator 'NumericEquals' is not",
        ),
        (statement(Condition={"stringlike": {"a:b": "1"}}), "did you mean StringLike?"),
        (
            statement(Condition={"NullIfExists": {"a:b": "true"}}),
            "condition operator 'NullIfExists' is not supported",
        ),
        (
            statement(Condition={"Bool": {"aws:SecureTransport": "true"}}),
            "condition operator 'Bool' is not supported",
        ),
        (
            statement(Condition={"ForAnyValue:StringLike": {"a:b": "1"}}),
            "set operators (ForAnyValue:/ForAllValues:) are not supported",
        ),
        (
            statement(Condition={"StringLike": ["x"]}),
            "Condition.StringLike: must be a non-empty object",
        ),
        (
            statement(Condition={"StringLike": {"TargetContainerHostname": "x"}}),
            "'TargetContainerHostname' is not a condition key",
        ),
        (
            statement(Condition={"StringLike": {"a:b": {"x": 1}}}),
            "Condition.StringLike.a:b: condition values must be strings",
        ),
        (
            statement(Condition={"StringLike": {"a:b": []}}),
            "Condition.StringLike.a:b: must list at least one value",
        ),
        (
            statement(Condition={"StringLike": {"a:b": "x${aws:username}"}}),
            "policy variable '${aws:username}'",
        ),
        (
            statement(Condition={"StringLike": {"a:b": "x${unterminated"}}),
            "policy variable '${unterminated'",
        ),
        (
            statement(Condition={"Null": {"a:b": "maybe"}}),
            "Null takes 'true' or 'false', got 'maybe'",
        ),
        (
            statement(Principal={"AWS": "*"}),
            "policy.Statement[1].Principal: identity policies cannot name a principal",
        ),
        (
            statement(Effects="Allow"),
            "policy.Statement[1].Effects: unknown setting 'Effects'; did you mean 'Effect'?",
        ),
        (statement(Sid="Everything"), "policy.Statement[1].Sid: 'Everything' is used twice"),
        (statement(Sid=5), "policy.Statement[1].Sid: must be a string"),
        (
            {"Version": "2012-10-17", "Id": 5, "Statement": [ALLOW_ALL]},
            "policy.Id: must be a string",
        ),
    ],
)
def test_malformed_documents_name_the_statement_and_field(doc: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        PolicyDocument.parse(doc)
    assert message in info.value.message


def test_policy_name_prefixes_errors() -> None:
    with pytest.raises(PolicyError, match=r"^alice\.json\.Statement\[1\]\.Effect"):
        PolicyDocument.parse(statement(Effect="Maybe"), name="alice.json")


# ---------------------------------------------------------------------------------------------
# ARNs and actions for requests
# ---------------------------------------------------------------------------------------------


def test_endpoint_arns_lower_case_the_name_so_policies_must_too() -> None:
    assert endpoint_arn(REGION, ACCOUNT, "My-Endpoint") == (
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/my-endpoint"
    )
    req = invoke_request(REGION, ACCOUNT, "My-Endpoint", "c")
    lower = allow(INVOKE, f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/my-endpoint")
    upper = allow(INVOKE, f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/My-Endpoint")
    assert decide([lower], req).allowed
    assert not decide([upper], req).allowed


def test_invoke_request_without_target_has_no_condition_key() -> None:
    assert invoke_request(REGION, ACCOUNT, "e", None).context == {}
    assert invoke_request(REGION, ACCOUNT, "e", "").target_container == ""


@pytest.mark.parametrize(
    ("operation", "params", "resources"),
    [
        ("CreateModel", {"ModelName": "M1"}, ["model/m1"]),
        ("DescribeModel", {"ModelName": "m1"}, ["model/m1"]),
        ("DeleteEndpointConfig", {"EndpointConfigName": "C"}, ["endpoint-config/c"]),
        (
            "CreateEndpoint",
            {"EndpointName": "E", "EndpointConfigName": "C"},
            ["endpoint/e", "endpoint-config/c"],
        ),
        (
            "UpdateEndpoint",
            {"EndpointName": "E", "EndpointConfigName": "C2"},
            ["endpoint/e", "endpoint-config/c2"],
        ),
        ("DescribeEndpoint", {"EndpointName": "E"}, ["endpoint/e"]),
        ("DeleteEndpoint", {}, ["endpoint/"]),
        ("ListEndpoints", {}, ["*"]),
        ("ListModels", {"MaxResults": 5}, ["*"]),
        ("SomethingNew", {"EndpointName": "E"}, ["*"]),
    ],
)
def test_control_plane_requests(
    operation: str, params: dict[str, Any], resources: list[str]
) -> None:
    requests = control_plane_requests(operation, params, REGION, ACCOUNT)
    prefix = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:"
    assert [r.action for r in requests] == [f"sagemaker:{operation}"] * len(resources)
    assert [r.resource.removeprefix(prefix) for r in requests] == resources


# ---------------------------------------------------------------------------------------------
# Guard: authorization with audit
# ---------------------------------------------------------------------------------------------


def guard_for(*policies: dict[str, Any], audit: bool = True) -> tuple[Guard, Credential]:
    credential = Credential(
        "AKIDTEST",
        "secret",
        "arn:aws:iam::000000000000:user/alice",
        tuple(PolicyDocument.parse(p, name=f"p{i}") for i, p in enumerate(policies)),
    )
    config = AuthConfig(
        mode="sigv4", region=REGION, account_id=ACCOUNT, credentials=(credential,), audit=audit
    )
    guard = Guard.from_config(config)
    assert guard is not None
    return guard, credential


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "mce_router.audit"]


def test_guard_authorizes_invocations_and_audits_each_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, alice = guard_for(SEED_DENY_SPECIAL)
    caplog.set_level(logging.INFO, logger="mce_router.audit")
    assert guard.authorize_invoke(alice, "Endpoint_Name", "customIps1").allowed
    with pytest.raises(AccessDenied) as denied:
        guard.authorize_invoke(alice, "endpoint_name", "special1")
    assert denied.value.code == "AccessDeniedException" and wire_error(denied.value).status == 403
    assert "special1" not in denied.value.message
    with pytest.raises(
        AccessDenied,
        match="because no identity-based policy allows the sagemaker:InvokeEndpoint action",
    ):
        guard.authorize_invoke(alice, "endpoint_name", None)

    base = {
        "principal": alice.principal,
        "access_key_id": "AKIDTEST",
        "action": INVOKE,
        "resource": ENDPOINT,
    }
    assert audit_lines(caplog) == [
        base | {"target": "customIps1", "decision": "allow", "statement": "policy[0].Statement[0]"},
        base
        | {
            "target": "special1",
            "decision": "explicit-deny",
            "statement": "policy[0].Statement[1]",
        },
        base | {"target": None, "decision": "implicit-deny", "statement": None},
    ]
    assert all(r.audit["principal"] == alice.principal for r in caplog.records)  # type: ignore[attr-defined]


def test_guard_authorizes_control_plane_operations_on_every_resource() -> None:
    models_and_endpoints = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sagemaker:*Endpoint",
                "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/*",
            },
            {"Effect": "Allow", "Action": "sagemaker:List*", "Resource": "*"},
        ],
    }
    guard, alice = guard_for(models_and_endpoints)
    assert guard.authorize_operation(alice, "DescribeEndpoint", {"EndpointName": "e"})
    assert guard.authorize_operation(alice, "ListEndpoints", {})
    with pytest.raises(AccessDenied, match="endpoint-config/c"):
        # The endpoint is allowed, the endpoint config it names is not.
        guard.authorize_operation(
            alice, "CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "c"}
        )


def test_audit_is_silent_when_disabled_or_when_the_logger_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, alice = guard_for(SEED_DENY_SPECIAL, audit=False)
    caplog.set_level(logging.INFO, logger="mce_router.audit")
    guard.check(alice, invoke_request(REGION, ACCOUNT, "endpoint_name", "x"))
    assert audit_lines(caplog) == []

    caplog.set_level(logging.WARNING, logger="mce_router.audit")
    AuditLog(True).record("p", "k", request("x"), Decision("allow"))
    assert audit_lines(caplog) == []


def test_invoke_decision_cache_keys_on_policies_endpoint_and_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    only_endpoint_a = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": INVOKE,
                "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/a",
            },
            {
                "Effect": "Deny",
                "Action": INVOKE,
                "Resource": "*",
                "Condition": {"StringEquals": {TARGET_CONTAINER_KEY: "secret"}},
            },
        ],
    }
    guard, alice = guard_for(only_endpoint_a)
    caplog.set_level(logging.INFO, logger="mce_router.audit")
    for _ in range(2):  # the second round is answered from the cache, identically
        assert guard.authorize_invoke(alice, "a", "open").allowed
        assert guard.authorize_invoke(alice, "a", None).allowed
        with pytest.raises(AccessDenied, match="explicit deny"):
            guard.authorize_invoke(alice, "a", "secret")  # Deny for one target still denies
        with pytest.raises(AccessDenied, match="endpoint/b because no identity"):
            guard.authorize_invoke(alice, "b", "open")  # Allow for a does not leak to b
    # Another credential's policies are another key, even for the same endpoint and target.
    other = Credential("AKIDOTHER", "s", "arn:aws:iam::123456789012:user/bob")
    with pytest.raises(AccessDenied, match="user/bob"):
        guard.authorize_invoke(other, "a", "open")
    # Every request is audited, cached decision or not.
    assert [line["decision"] for line in audit_lines(caplog)] == [
        "allow",
        "allow",
        "explicit-deny",
        "implicit-deny",
    ] * 2 + ["implicit-deny"]


def test_invoke_decision_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import mce_router.security as security

    monkeypatch.setattr(security, "INVOKE_DECISION_CACHE_SIZE", 8)
    guard, alice = guard_for(SEED_DENY_SPECIAL, audit=False)
    for index in range(50):
        guard.authorize_invoke(alice, "endpoint_name", f"customIps{index}")
        assert len(guard._invoke_decisions) <= 8
