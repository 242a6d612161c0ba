"""The pure parts of the Durable Streams interface: offsets, headers, producer rules, records, state."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.durable import check_path
from gateway.ds.chain import cut_lines
from gateway.ds.meta import Fork, Meta, meta_of
from gateway.ds.protocol import (
    CURSOR_EPOCH_MS,
    CURSOR_INTERVAL_MS,
    START_TEXT,
    DsError,
    Offset,
    Producer,
    etag,
    format_offset,
    incarnation_of,
    is_true,
    judge_producer,
    parse_count,
    parse_expires_at,
    parse_offset,
    parse_producer,
    parse_ttl,
    response_cursor,
    sse_base64,
)
from gateway.ds.records import (
    byte_records,
    event_messages,
    json_array,
    json_messages,
    record_bytes,
    sse_data,
    unwrap_messages,
    wrap_messages,
)
from gateway.ds.streams import stream_key

pytestmark = pytest.mark.unit


def test_offsets_round_trip_and_sort_by_position() -> None:
    a, b = format_offset(42, 9), format_offset(42, 10)
    assert a < b and len(a) == len(b) == 33
    assert parse_offset(a) == Offset(42, 9)
    assert parse_offset("-1") == "-1" and parse_offset("now") == "now"
    assert parse_offset(START_TEXT) == Offset(0, 0)


@pytest.mark.parametrize("text", ["", "1,2", "a_b", "1_", "_1", "12345678901234567_1", " 1_1", "1_1/"])
def test_malformed_offsets_are_refused(text: str) -> None:
    with pytest.raises(DsError) as exc:
        parse_offset(text)
    assert exc.value.status == 400


def test_an_incarnation_is_fixed_by_the_epoch_and_never_zero() -> None:
    assert incarnation_of("k7q2m9ab3x") == incarnation_of("k7q2m9ab3x") != incarnation_of("p0x4aa")
    assert all(0 < incarnation_of(f"e{i}") < 10**16 for i in range(1000))


def test_header_values() -> None:
    assert is_true("true") and is_true("TRUE") and not is_true("1") and not is_true(None) and not is_true("")
    assert parse_ttl("3600") == 3600 and parse_ttl("0") == 0
    for bad in ("+1", "01", "1.0", "1e3", "-1", ""):
        with pytest.raises(DsError):
            parse_ttl(bad)
    assert parse_expires_at("2030-01-01T00:00:00Z") == 1893456000000
    assert parse_expires_at("2030-01-01T01:00:00+01:00") == 1893456000000
    for bad in ("2030-01-01T00:00:00", "tomorrow"):
        with pytest.raises(DsError):
            parse_expires_at(bad)
    assert parse_count("Producer-Seq", str(2**53 - 1)) == 2**53 - 1
    with pytest.raises(DsError):
        parse_count("Producer-Seq", str(2**53))


def test_producer_headers_go_together() -> None:
    assert parse_producer(None, None, None) is None
    assert parse_producer("p", "1", "2") == Producer("p", 1, 2)
    for partial in (("p", "1", None), (None, "1", "2"), ("", "0", "0"), ("p", "x", "0")):
        with pytest.raises(DsError):
            parse_producer(*partial)


@pytest.mark.parametrize(("state", "epoch", "seq", "verdict"), [
    (None, 0, 0, "accept"), (None, 3, 0, "accept"), (None, 0, 1, "gap"),
    ((0, 4), 0, 5, "accept"), ((0, 4), 0, 4, "duplicate"), ((0, 4), 0, 0, "duplicate"), ((0, 4), 0, 7, "gap"),
    ((2, 4), 1, 9, "stale"), ((2, 4), 3, 0, "accept"), ((2, 4), 3, 1, "bad_epoch_start"),
])
def test_producer_rules(state: tuple[int, int] | None, epoch: int, seq: int, verdict: str) -> None:
    assert judge_producer(state, Producer("p", epoch, seq)) == verdict


def test_cursors_move_on_with_time_and_never_repeat_the_clients() -> None:
    now = CURSOR_EPOCH_MS + 1000 * CURSOR_INTERVAL_MS + 5
    assert response_cursor(None, now, 7) == "1000"
    assert response_cursor("999", now, 7) == "1000"
    assert response_cursor("1000", now, 7) == "1007"
    assert response_cursor("1500", now, 0) == "1501"
    assert response_cursor("junk", now, 7) == "1000"


def test_etags_vary_with_range_and_closure() -> None:
    assert etag("k", "-1", "a", False) != etag("k", "-1", "a", True) != etag("k", "-1", "b", True)


def test_sse_encoding_by_content_type() -> None:
    assert not sse_base64("text/plain; charset=utf-8") and not sse_base64("Application/JSON")
    assert sse_base64("application/octet-stream") and sse_base64("application/ndjson")


def test_json_bodies_flatten_one_level() -> None:
    assert json_messages(b'{"a":1}', allow_empty=False) == [b'{"a":1}']
    assert json_messages(b"[[1,2],[3]]", allow_empty=False) == [b"[1,2]", b"[3]"]
    assert json_messages(b"[]", allow_empty=True) == []
    assert json_messages(b"123456789012345678901234567890", allow_empty=False) == [b"123456789012345678901234567890"]
    assert json_messages(b"\"\\ud800\"", allow_empty=False) == [b"\"\\ud800\""]
    for bad in (b"[]", b"{", b"NaN", b'{"a":1} x'):
        with pytest.raises(DsError):
            json_messages(bad, allow_empty=False)


@given(st.lists(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                             lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=5),
                min_size=1, max_size=6))
def test_json_messages_come_back_as_sent(messages: list[object]) -> None:
    lines = wrap_messages(json_messages(json.dumps(messages).encode(), allow_empty=False), 1 << 20)
    assert all(b"\n" not in line and isinstance(orjson.loads(line), dict) for line in lines)
    assert json.loads(json_array([unwrap_messages(b"\n".join(lines))])) == messages


def test_a_message_over_the_limit_is_413() -> None:
    with pytest.raises(DsError) as exc:
        wrap_messages([b'"' + b"x" * 100 + b'"'], 50)
    assert exc.value.status == 413


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_byte_records_come_back_byte_for_byte(body: bytes, size: int) -> None:
    lines = byte_records(body, size)
    assert len(lines) == -(-len(body) // size)
    assert all(isinstance(orjson.loads(line), dict) for line in lines)
    assert record_bytes(b"\n".join(lines)) == body if lines else body == b""


def test_session_lines_are_messages_as_stored() -> None:
    assert json_array([event_messages(b'{"type":"A"}\n{"type":"B"}'), b""]) == b'[{"type":"A"},{"type":"B"}]'


def test_sse_data_cannot_be_split_into_other_events() -> None:
    block = sse_data(b"a\r\nevent: control\rdata: x\nb", encoded=False)
    assert block == b"event: data\ndata:a\ndata:event: control\ndata:data: x\ndata:b\n\n"
    assert sse_data(b"\x00\xff", encoded=True) == b"event: data\ndata:" + base64.b64encode(b"\x00\xff") + b"\n\n"


def test_state_lines_round_trip() -> None:
    meta = Meta("text/plain", 7, 1, ttl=60, closed=True, closed_by=("p", 1, 2), forks=2,
                fork=Fork("ds_x", "a/b", 3, START_TEXT, 1), producers={"p": (1, 2)}, stream_seq="s9")
    assert meta_of(meta.line()) == meta
    assert meta_of(Meta("application/json", 1, 2).line()) == Meta("application/json", 1, 2)


def test_cut_lines_keeps_whole_lines() -> None:
    assert cut_lines(b"a\nbb\nccc", 2) == b"a\nbb"
    assert cut_lines(b"a\nbb\nccc", 3) == b"a\nbb\nccc"


def test_stream_names_are_per_project_and_never_session_names() -> None:
    from gateway.names import is_valid_name

    assert stream_key("a", "x") != stream_key("b", "x")
    assert not is_valid_name(stream_key("a", "x"))


@pytest.mark.parametrize("path", ["", "a//b", "a/../b", ".", "a/./b", "x\x00y", "x" * 1025])
def test_bad_stream_paths_are_400(path: str) -> None:
    with pytest.raises(DsError) as exc:
        check_path(path)
    assert exc.value.status == 400


def test_the_reserved_prefix_is_not_a_stream() -> None:
    assert check_path("chat/room-1") == "chat/room-1"
    with pytest.raises(DsError) as exc:
        check_path("__ds/subscriptions/x")
    assert exc.value.status == 404
