"""The endpoint state machine's table of moves, and the typed failure of an operation."""

from __future__ import annotations

import pytest

from mce_router.control.listing import ENDPOINT_STATUSES
from mce_router.control.status import TRANSITIONS, EndpointStatus
from mce_router.endpoints.state import (
    EndpointState,
    Failure,
    FailureKind,
    InvalidTransition,
)
from mce_router.spec import EndpointSpec

S = EndpointStatus


def _state(status: EndpointStatus) -> EndpointState:
    spec = EndpointSpec.from_request({"EndpointName": "e", "EndpointConfigName": "c"})
    return EndpointState(spec, "c", status)


@pytest.mark.parametrize(
    "path",
    [
        (S.CREATING, S.IN_SERVICE, S.UPDATING, S.IN_SERVICE, S.DELETING),
        (S.CREATING, S.FAILED, S.DELETING),
        (S.IN_SERVICE, S.SYSTEM_UPDATING, S.FAILED),
        (S.UPDATING, S.IN_SERVICE, S.SYSTEM_UPDATING, S.IN_SERVICE),
        (S.SYSTEM_UPDATING, S.DELETING),
    ],
)
def test_the_moves_the_router_makes_are_allowed(path: tuple[EndpointStatus, ...]) -> None:
    state = _state(path[0])
    for status in path[1:]:
        state.move_to(status)
    assert state.status is path[-1]


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (S.FAILED, S.IN_SERVICE),
        (S.DELETING, S.CREATING),
        (S.CREATING, S.UPDATING),
        (S.UPDATING, S.FAILED),
        (S.OUT_OF_SERVICE, S.IN_SERVICE),
    ],
)
def test_any_other_move_is_refused(start: EndpointStatus, target: EndpointStatus) -> None:
    state = _state(start)
    with pytest.raises(InvalidTransition, match=f"{start} -> {target}"):
        state.move_to(target)
    assert state.status is start


def test_staying_is_not_a_move() -> None:
    state = _state(S.DELETING)
    state.move_to(S.DELETING)
    assert state.status is S.DELETING


def test_every_status_is_written_once() -> None:
    assert tuple(str(status) for status in EndpointStatus) == ENDPOINT_STATUSES
    assert len(set(ENDPOINT_STATUSES)) == 9
    for source, targets in TRANSITIONS.items():
        assert source not in targets
    assert _state(S.UPDATING).stored().status == "Updating"


def test_a_failure_keeps_its_kind_when_reworded() -> None:
    failure = Failure(FailureKind.STARTUP, "bravo did not pass", ("bravo",))
    reworded = failure.reworded("Update failed: " + failure.message)
    assert reworded.kind is FailureKind.STARTUP
    assert reworded.failed_containers == ("bravo",)
    assert reworded.message == "Update failed: bravo did not pass"
