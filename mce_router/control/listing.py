"""ListModels / ListEndpointConfigs / ListEndpoints: filters, sorting and paging.

Paging is by key, not by offset: ``NextToken`` names the sort key and name of the last item
returned, so resources created or deleted between two pages neither repeat nor skip the items
the paginator has not seen yet. The token also carries a fingerprint of the filters and sort
order it was issued for; reusing it with other ones is refused rather than answered with an
inconsistent page. Defaults follow SageMaker: newest first (``SortBy=CreationTime``,
``SortOrder=Descending``), 10 per page. ``NameContains`` matches ignoring case, as names are
unique ignoring case.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ValidationError
from . import validation
from .status import EndpointStatus

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
_TOKEN_VERSION = 1

#: Every endpoint status SageMaker defines (StatusEquals accepts any of them).
ENDPOINT_STATUSES = tuple(str(status) for status in EndpointStatus)


@dataclass(frozen=True, slots=True)
class ListItem:
    """One resource as the List operations see it; ``summary`` is its wire entry."""

    name: str
    created: float
    summary: dict[str, Any]
    modified: float = 0.0
    status: str = ""


@dataclass(frozen=True, slots=True)
class ListRequest:
    operation: str
    result_key: str
    name_contains: str | None
    sort_by: str
    descending: bool
    created_before: float | None
    created_after: float | None
    modified_before: float | None
    modified_after: float | None
    status: str | None
    max_results: int
    next_token: str | None

    def fingerprint(self) -> str:
        """Identifies the filters and the order a token was issued for (not the page size)."""
        identity = orjson.dumps(
            [
                self.operation,
                (self.name_contains or "").lower(),
                self.sort_by,
                self.descending,
                self.created_before,
                self.created_after,
                self.modified_before,
                self.modified_after,
                self.status,
            ]
        )
        return hashlib.sha256(identity).hexdigest()[:16]


def parse_list_request(
    params: Mapping[str, Any],
    *,
    operation: str,
    result_key: str,
    sort_keys: Sequence[str],
    with_modified_and_status: bool = False,
) -> ListRequest:
    """Validate a List request's parameters (those of ``operation``'s botocore input shape)."""
    extended = with_modified_and_status
    return ListRequest(
        operation=operation,
        result_key=result_key,
        name_contains=validation.optional_name_fragment(params, "NameContains"),
        sort_by=validation.optional_enum(params, "SortBy", sort_keys) or "CreationTime",
        descending=(
            validation.optional_enum(params, "SortOrder", ("Ascending", "Descending"))
            or "Descending"
        )
        == "Descending",
        created_before=validation.optional_timestamp(params, "CreationTimeBefore"),
        created_after=validation.optional_timestamp(params, "CreationTimeAfter"),
        modified_before=(
            validation.optional_timestamp(params, "LastModifiedTimeBefore") if extended else None
        ),
        modified_after=(
            validation.optional_timestamp(params, "LastModifiedTimeAfter") if extended else None
        ),
        status=(
            validation.optional_enum(params, "StatusEquals", ENDPOINT_STATUSES)
            if extended
            else None
        ),
        max_results=validation.optional_int(params, "MaxResults", 1, MAX_PAGE_SIZE)
        or DEFAULT_PAGE_SIZE,
        next_token=validation.optional_token(params, "NextToken"),
    )


def list_page(items: Iterable[ListItem], request: ListRequest) -> dict[str, Any]:
    """The response of a List operation: one page of matching items, in order, and a
    ``NextToken`` when more follow."""
    matching = sorted(
        (item for item in items if _matches(item, request)),
        key=lambda item: _position(item, request.sort_by),
        reverse=request.descending,
    )
    if request.next_token is not None:
        after = _decode_token(request)
        if request.descending:
            matching = [i for i in matching if _position(i, request.sort_by) < after]
        else:
            matching = [i for i in matching if _position(i, request.sort_by) > after]
    page = matching[: request.max_results]
    response: dict[str, Any] = {request.result_key: [item.summary for item in page]}
    if len(matching) > len(page):
        response["NextToken"] = _encode_token(request, _position(page[-1], request.sort_by))
    return response


def _matches(item: ListItem, request: ListRequest) -> bool:
    if request.name_contains is not None and request.name_contains.lower() not in (
        item.name.lower()
    ):
        return False
    if request.created_before is not None and not item.created < request.created_before:
        return False
    if request.created_after is not None and not item.created > request.created_after:
        return False
    if request.modified_before is not None and not item.modified < request.modified_before:
        return False
    if request.modified_after is not None and not item.modified > request.modified_after:
        return False
    return request.status is None or item.status == request.status


def _position(item: ListItem, sort_by: str) -> tuple[Any, str]:
    """Total order of items: the sort key, then the name (unique ignoring case)."""
    name = item.name.lower()
    if sort_by == "Name":
        return (name, name)
    if sort_by == "Status":
        return (item.status, name)
    return (item.created, name)


def _encode_token(request: ListRequest, position: tuple[Any, str]) -> str:
    raw = orjson.dumps([_TOKEN_VERSION, request.fingerprint(), *position])
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_token(request: ListRequest) -> tuple[Any, str]:
    token = request.next_token
    assert token is not None
    try:
        version, fingerprint, key, name = orjson.loads(base64.urlsafe_b64decode(token))
        valid = (
            version == _TOKEN_VERSION
            and isinstance(name, str)
            and isinstance(key, str | float | int)
            and not isinstance(key, bool)
        )
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        valid = False
    if not valid:
        raise ValidationError(
            f"Invalid NextToken for {request.operation}: pass the NextToken of the previous "
            f"{request.operation} response unchanged, or omit it to start from the first page.",
            field="NextToken",
            rule="must be a token this operation returned",
        )
    if fingerprint != request.fingerprint():
        raise ValidationError(
            f"This NextToken was issued for a {request.operation} request with other filters or "
            "another sort order; repeat the original SortBy, SortOrder and filters with it, or "
            "omit it to start from the first page.",
            field="NextToken",
            rule="must be used with the filters it was issued for",
        )
    expected_type = str if request.sort_by in ("Name", "Status") else (int, float)
    if not isinstance(key, expected_type):
        raise ValidationError(
            f"Invalid NextToken for {request.operation}.", field="NextToken", rule="malformed"
        )
    return (float(key) if isinstance(key, int) else key, name)
