"""Tags: AddTags / ListTags / DeleteTags on models, endpoint configs and endpoints, and the
``Tags`` parameter of their Create* calls.

Rules as SageMaker states them (botocore's model and the AddTags reference): at most 50 tags per
resource; a key is 1..128 and a value 0..256 characters of letters, separators, digits and
``_.:/=+-@``; keys are case-sensitive and ``aws:`` keys are AWS's own. AddTags overwrites the
value of a key the resource has; DeleteTags ignores keys it does not have. A resource is named
by its ARN (:mod:`mce_router.arns`), of this router's region and account; one that does not
exist is a ``ValidationException``, as SageMaker answers. The tags are durable in the state
file and go away with their resource.

Choices where SageMaker is silent: a key given twice in one call is refused (rather than the
last one winning); ListTags never pages, since MaxResults is at least 50 and a resource has at
most 50 tags.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container, Mapping
from typing import Any, Final, cast, get_args

from ..arns import Arns, ResourceKind
from ..errors import ValidationError
from ..shapes import as_list, as_str, fail, invalid_value, missing_value, require_mapping, required
from .store import Store, Tags
from .validation import check_name, optional_int

MAX_TAGS: Final = 50
KEY_MAX_LENGTH: Final = 128
VALUE_MAX_LENGTH: Final = 256
ARN_MAX_LENGTH: Final = 256
#: botocore's ResourceArn pattern (SageMaker prints it in its messages as is).
ARN_PATTERN_TEXT: Final = "arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:[0-9]{12}:.+"
_ARN_PATTERN = re.compile(ARN_PATTERN_TEXT)
_TAG_PATTERN_TEXT = r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)"
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
_KINDS: Final = frozenset(get_args(ResourceKind))


def _tag_text_ok(text: str) -> bool:
    # Python's re has no \p{...}: the same classes by Unicode category (L*, Z*, N*).
    return all(char in _TAG_PUNCTUATION or unicodedata.category(char)[0] in "LZN" for char in text)


def _check_text(value: Any, path: str, minimum: int, maximum: int) -> str:
    text = as_str(value, path)
    if len(text) < minimum:
        invalid_value(path, text, f"Member must have length greater than or equal to {minimum}")
    if len(text) > maximum:
        invalid_value(path, text, f"Member must have length less than or equal to {maximum}")
    if not _tag_text_ok(text):
        invalid_value(
            path, text, f"Member must satisfy regular expression pattern: {_TAG_PATTERN_TEXT}"
        )
    return text


def _check_key(value: Any, path: str) -> str:
    key = _check_text(value, path, 1, KEY_MAX_LENGTH)
    if key.lower().startswith("aws:"):
        invalid_value(
            path, key, "Tag keys must not start with 'aws:'", "the aws: prefix is reserved for AWS"
        )
    return key


def _check_unique_keys(keys: list[str], path: str) -> None:
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key in seen:
            invalid_value(f"{path}[{index}]", key, "Tag keys must be unique within one request")
        seen.add(key)


def parse_tags(value: Any, path: str = "Tags", *, required_list: bool = False) -> Tags:
    """A Create* ``Tags`` or AddTags ``Tags`` parameter as (Key, Value) pairs; absent is no
    tags unless ``required_list``."""
    if value is None:
        if required_list:
            missing_value(path)
        return ()
    items = as_list(value, path)
    if len(items) > MAX_TAGS:
        invalid_value(path, value, f"Member must have length less than or equal to {MAX_TAGS}")
    tags: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        tag = require_mapping(item, item_path)
        for member in tag:
            if member not in ("Key", "Value"):
                invalid_value(f"{item_path}.{member}", member, "Tag has no member but Key, Value")
        key = _check_key(required(tag, "Key", f"{item_path}.Key"), f"{item_path}.Key")
        text = _check_text(
            required(tag, "Value", f"{item_path}.Value"), f"{item_path}.Value", 0, VALUE_MAX_LENGTH
        )
        tags.append((key, text))
    _check_unique_keys([key for key, _ in tags], path)
    return tuple(tags)


def _parse_keys(value: Any, path: str = "TagKeys") -> list[str]:
    if value is None:
        missing_value(path)
    items = as_list(value, path)
    if not 1 <= len(items) <= MAX_TAGS:
        invalid_value(path, value, f"Member must have length between 1 and {MAX_TAGS}")
    keys = [_check_key(item, f"{path}[{index}]") for index, item in enumerate(items)]
    _check_unique_keys(keys, path)
    return keys


def _as_output(tags: Tags) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags]


class Tagging:
    """The tag operations of one router.

    :param resources: per ARN resource type, the names that exist now (compared as the
        router's names are, ignoring case): a tag call on anything else is refused.
    """

    def __init__(
        self, store: Store, arns: Arns, resources: Mapping[ResourceKind, Container[str]]
    ) -> None:
        self._store = store
        self._arns = arns
        self._resources = resources

    def add_tags(self, params: Mapping[str, Any]) -> dict[str, Any]:
        kind, name = self._resource(params)
        tags = parse_tags(params.get("Tags"), required_list=True)
        current = dict(self._store.list_tags(kind, name))
        added = [key for key, _ in tags if key not in current]
        if len(current) + len(added) > MAX_TAGS:
            raise ValidationError(
                f"Adding {len(added)} tags to {params['ResourceArn']} would give it "
                f"{len(current) + len(added)}; a resource has at most {MAX_TAGS} tags. Delete "
                "some with DeleteTags first.",
                field="Tags",
                rule=f"at most {MAX_TAGS} tags per resource",
            )
        self._store.for_change().add_tags(kind, name, tags)
        return {"Tags": _as_output(tags)}

    def list_tags(self, params: Mapping[str, Any]) -> dict[str, Any]:
        kind, name = self._resource(params)
        optional_int(params, "MaxResults", MAX_TAGS, 2**31 - 1)
        if params.get("NextToken") is not None:
            # No answer of ListTags carries a NextToken (see the module docstring).
            invalid_value(
                "NextToken",
                params["NextToken"],
                "Member must be a NextToken of an earlier ListTags answer",
                "this router answers every tag in one page",
            )
        return {"Tags": _as_output(self._store.list_tags(kind, name))}

    def delete_tags(self, params: Mapping[str, Any]) -> dict[str, Any]:
        kind, name = self._resource(params)
        keys = _parse_keys(params.get("TagKeys"))
        self._store.for_change().delete_tags(kind, name, keys)
        return {}

    def _resource(self, params: Mapping[str, Any]) -> tuple[ResourceKind, str]:
        """The (kind, name) of ``ResourceArn``, which must be of an existing resource."""
        arn = as_str(required(params, "ResourceArn", "ResourceArn"), "ResourceArn")
        if len(arn) > ARN_MAX_LENGTH:
            invalid_value(
                "ResourceArn",
                arn,
                f"Member must have length less than or equal to {ARN_MAX_LENGTH}",
            )
        if _ARN_PATTERN.fullmatch(arn) is None:
            invalid_value(
                "ResourceArn",
                arn,
                f"Member must satisfy regular expression pattern: {ARN_PATTERN_TEXT}",
            )
        _arn, _partition, _service, region, account, resource = arn.split(":", 5)
        kind, _, name = resource.partition("/")
        if kind not in _KINDS:
            fail(
                "ResourceArn",
                f"'{arn}'",
                "Member must be the ARN of a model, endpoint-config or endpoint",
                "those are the resources this router has",
            )
        resource_kind = cast(ResourceKind, kind)
        what = {"model": "model", "endpoint-config": "endpoint configuration"}.get(kind, kind)
        if (region, account) != (self._arns.region, self._arns.account_id):
            raise ValidationError(
                f'Could not find {what} "{arn}": this router serves region '
                f"{self._arns.region} of account {self._arns.account_id}.",
                field="ResourceArn",
                rule="must be of this router's region and account",
            )
        check_name(name, "ResourceArn")
        if name not in self._resources[resource_kind]:
            raise ValidationError(
                f'Could not find {what} "{self._arns.of(resource_kind, name)}".',
                field="ResourceArn",
                rule="must name an existing resource",
            )
        return resource_kind, name
