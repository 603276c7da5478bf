"""W3C Trace Context in the request headers: which traceparent/tracestate are forwarded as sent,
which are rewritten, and which are dropped (then the proxy starts a trace of its own)."""

from __future__ import annotations

import pytest

from mce_router.dataplane.headers import RequestHeaders, parse_traceparent

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def finished(*pairs: tuple[bytes, bytes]) -> RequestHeaders:
    headers = RequestHeaders()
    for name, value in pairs:
        assert headers.add(name, value) is None
    assert headers.finish() is None
    return headers


def test_valid_traceparent_and_tracestate_are_forwarded_as_sent() -> None:
    headers = finished((b"traceparent", VALID), (b"tracestate", b"congo=t61rcWkgMzE"))
    assert headers.trace_block == (
        b"traceparent: " + VALID + b"\r\ntracestate: congo=t61rcWkgMzE\r\n"
    )


def test_tracestate_copies_are_joined_in_order() -> None:
    headers = finished((b"Traceparent", VALID), (b"tracestate", b"a=1"), (b"TraceState", b" b=2 "))
    assert headers.trace_block.endswith(b"tracestate: a=1,b=2\r\n")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 is exact
        b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",  # separators
        b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # no dash after prefix
    ],
)
def test_malformed_traceparent_is_not_forwarded_nor_its_tracestate(value: bytes) -> None:
    assert parse_traceparent(value) is None
    headers = finished((b"traceparent", value), (b"tracestate", b"a=1"))
    assert headers.trace_block == b""


def test_higher_version_is_read_as_its_version_00_prefix() -> None:
    future = b"cc" + VALID[2:] + b"-what-the-future-adds"
    assert parse_traceparent(future) == VALID


def test_two_traceparents_make_it_invalid_not_a_rejection() -> None:
    headers = finished((b"traceparent", VALID), (b"traceparent", VALID))
    assert headers.trace_block == b""


def test_unprintable_or_oversized_tracestate_is_dropped_alone() -> None:
    for state in (b"a=\x01", b"a=" + b"x" * 511):
        headers = finished((b"traceparent", VALID), (b"tracestate", state))
        assert headers.trace_block == b"traceparent: " + VALID + b"\r\n"


def test_trace_context_named_in_connection_is_hop_by_hop() -> None:
    headers = finished((b"traceparent", VALID), (b"Connection", b"traceparent"))
    assert headers.trace_block == b""
