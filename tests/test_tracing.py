"""W3C Trace Context level 1: continue a valid traceparent, restart on anything else."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.tracing import TraceContext, continue_or_start

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
TRACEPARENT_SHAPE = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


def assert_started(trace: TraceContext) -> None:
    assert trace.trace_id != TRACE_ID
    assert re.fullmatch(r"[0-9a-f]{32}", trace.trace_id) and trace.trace_id != "0" * 32
    assert re.fullmatch(r"[0-9a-f]{16}", trace.span_id) and trace.span_id != "0" * 16
    assert trace.flags == "01"
    assert trace.tracestate is None


def test_valid_traceparent_is_continued_with_same_trace_id_and_new_span() -> None:
    trace = continue_or_start(VALID, None)
    assert trace.trace_id == TRACE_ID
    assert trace.span_id != PARENT_ID
    assert re.fullmatch(r"[0-9a-f]{16}", trace.span_id)
    assert trace.flags == "01"


def test_each_request_gets_its_own_span() -> None:
    assert continue_or_start(VALID, None).span_id != continue_or_start(VALID, None).span_id


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("00", "00"),
        ("01", "01"),
        ("03", "01"),  # level 2's random-trace-id bit: undefined in level 1, so zeroed ("Other Flags")
        ("ff", "01"),
        ("fe", "00"),
        ("08", "00"),
        ("09", "01"),
    ],
)
def test_continued_trace_keeps_only_the_sampled_flag(flags: str, expected: str) -> None:
    assert continue_or_start(f"00-{TRACE_ID}-{PARENT_ID}-{flags}".encode(), None).flags == expected


@pytest.mark.parametrize(
    "traceparent",
    [
        pytest.param(None, id="absent"),
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage", id="garbage"),
        pytest.param(VALID[:-1], id="too-short"),
        pytest.param(VALID + b"0", id="too-long"),
        pytest.param(VALID + b"-extra", id="version-00-with-extra-field"),
        pytest.param(f"00-{TRACE_ID.upper()}-{PARENT_ID}-01".encode(), id="uppercase-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID.upper()}-01".encode(), id="uppercase-parent-id"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-0A".encode(), id="uppercase-flags"),
        pytest.param(f"0A-{TRACE_ID}-{PARENT_ID}-01".encode(), id="uppercase-version"),
        pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01".encode(), id="all-zero-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01".encode(), id="all-zero-parent-id"),
        pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01".encode(), id="version-ff"),
        pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01-extra".encode(), id="version-ff-with-extra"),
        pytest.param(f"0g-{TRACE_ID}-{PARENT_ID}-01".encode(), id="non-hex-version"),
        pytest.param(f"00-{TRACE_ID[:-1]}g-{PARENT_ID}-01".encode(), id="non-hex-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID[:-1]}z-01".encode(), id="non-hex-parent-id"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-0x".encode(), id="non-hex-flags"),
        pytest.param(f"00_{TRACE_ID}-{PARENT_ID}-01".encode(), id="wrong-first-delimiter"),
        pytest.param(f"00-{TRACE_ID}_{PARENT_ID}-01".encode(), id="wrong-second-delimiter"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}_01".encode(), id="wrong-third-delimiter"),
        pytest.param(f"00-{TRACE_ID[:-1]}-{PARENT_ID}0-01".encode(), id="fields-shifted"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01".encode().replace(b"-", b" "), id="spaces-for-dashes"),
        pytest.param(f"01-{TRACE_ID}-{PARENT_ID}-01x".encode(), id="future-version-fourth-field-not-ended-by-dash"),
        pytest.param(f"01-{TRACE_ID}-{PARENT_ID}".encode(), id="future-version-too-short"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01".encode("utf-16"), id="not-ascii"),
    ],
)
def test_invalid_traceparent_starts_a_new_trace(traceparent: bytes | None) -> None:
    assert_started(continue_or_start(traceparent, b"congo=t61rcWkgMzE"))


@pytest.mark.parametrize(
    "traceparent",
    [
        pytest.param(f"01-{TRACE_ID}-{PARENT_ID}-01".encode(), id="future-version-four-fields"),
        pytest.param(f"01-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds".encode(), id="future-version-extra-fields"),
        pytest.param(f"fe-{TRACE_ID}-{PARENT_ID}-01-x".encode(), id="version-fe"),
        pytest.param(b" " + VALID + b"\t", id="surrounding-whitespace"),
    ],
)
def test_future_versions_and_ows_are_continued(traceparent: bytes) -> None:
    trace = continue_or_start(traceparent, None)
    assert trace.trace_id == TRACE_ID
    # We answer in the highest version we know, 00 ("Versioning of traceparent").
    assert trace.traceparent().startswith(f"00-{TRACE_ID}-".encode())


def test_tracestate_passes_through_unchanged_with_a_valid_traceparent() -> None:
    tracestate = b"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"
    assert continue_or_start(VALID, tracestate).tracestate == tracestate


@pytest.mark.parametrize("traceparent", [None, b"", f"00-{'0' * 32}-{PARENT_ID}-01".encode(), b"ff-nonsense"])
def test_tracestate_is_dropped_without_a_valid_traceparent(traceparent: bytes | None) -> None:
    assert continue_or_start(traceparent, b"congo=t61rcWkgMzE").tracestate is None


def test_empty_tracestate_is_not_sent() -> None:
    assert continue_or_start(VALID, b"").tracestate is None


def test_started_trace_is_sampled_and_well_formed() -> None:
    trace = continue_or_start(None, None)
    assert_started(trace)
    assert TRACEPARENT_SHAPE.fullmatch(trace.traceparent())


def test_traceparent_renders_version_00() -> None:
    trace = TraceContext(trace_id=TRACE_ID, span_id="b7ad6b7169203331", flags="01", tracestate=None)
    assert trace.traceparent() == f"00-{TRACE_ID}-b7ad6b7169203331-01".encode()


def test_trace_context_is_immutable() -> None:
    trace = continue_or_start(VALID, None)
    with pytest.raises(AttributeError):
        trace.trace_id = "0" * 32  # type: ignore[misc]


@given(st.binary(max_size=80))
def test_any_input_yields_a_valid_traceparent(traceparent: bytes) -> None:
    trace = continue_or_start(traceparent, b"k=v")
    assert TRACEPARENT_SHAPE.fullmatch(trace.traceparent())
    assert continue_or_start(trace.traceparent(), None).trace_id == trace.trace_id
