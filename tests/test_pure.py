"""Unit and property tests of the pure parts: names, cursors, line classification, framing."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.names import NameError_, check_name, is_valid_name
from gateway.store.cursor import Cursor, CursorError, format_cursor, is_epoch, new_epoch, parse_cursor
from gateway.store.lines import INDEX_EVERY, classify, index_points_of, scan_lines
from gateway.stream.framing import Batch, NdjsonEncoder, Reset, Skipped, SseEncoder, WebSocketEncoder, cut_batch

pytestmark = pytest.mark.unit

epochs = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=16)
seqs = st.integers(min_value=1, max_value=10**18)
values = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans())
events = st.dictionaries(st.text(max_size=8), values, max_size=4).map(lambda d: {"type": "X", **d})


@given(epochs, seqs)
def test_cursor_round_trip(epoch: str, seq: int) -> None:
    assert parse_cursor(format_cursor(epoch, seq)) == Cursor(epoch, seq)
    assert str(Cursor(epoch, seq)) == format_cursor(epoch, seq)


@pytest.mark.parametrize("bad", ["", "abc-1", "abcdef-0", "abcdef-", "ABCDEF-1", "abcdef-01", "abcdef-1-2",
                                 "abcdef--1", "abcdefabcdefabcdefg-1", "abcdef-1 ", "abcdef-１"])
def test_cursor_rejects_malformed(bad: str) -> None:
    with pytest.raises(CursorError, match="malformed cursor"):
        parse_cursor(bad)


@given(st.text(max_size=30))
def test_cursor_parse_never_crashes(text: str) -> None:
    try:
        cursor = parse_cursor(text)
    except CursorError:
        return
    assert format_cursor(cursor.epoch, cursor.seq) == text


def test_new_epoch_is_valid_and_fresh() -> None:
    made = {new_epoch() for _ in range(200)}
    assert len(made) == 200 and all(is_epoch(e) for e in made)


@pytest.mark.parametrize("name,ok", [("a", True), ("demo-1", True), ("a" * 63, True), ("a" * 64, False),
                                     ("-a", False), ("a-", False), ("A", False), ("a_b", False), ("..", False),
                                     ("a/b", False), ("", False), ("é", False)])
def test_names(name: str, ok: bool) -> None:
    assert is_valid_name(name) is ok
    if not ok:
        with pytest.raises(NameError_, match="DNS-1123"):
            check_name("session", name)


@pytest.mark.parametrize("line,expected", [
    (b'{"type":"X"}', None), (b'  {"a": 1}\r', None), (b"[1,2]", "corrupt"), (b'"x"', "corrupt"),
    (b'{"type":', "corrupt"), (b"", "corrupt"), (b"\x00\x00", "corrupt"), (b'{"a":1}}', "corrupt"),
    (b'{"type":"' + b"x" * 100 + b'"}', "oversize"),
])
def test_classify(line: bytes, expected: str | None) -> None:
    assert classify(line, 64) == expected


@given(st.lists(st.one_of(events.map(orjson.dumps), st.sampled_from([b"garbage", b"[]", b"{", b""])), max_size=3000),
       st.integers(min_value=0, max_value=10**6))
def test_scan_lines_finds_every_bad_line_and_index_point(lines: list[bytes], offset: int) -> None:
    buf = b"".join(line + b"\n" for line in lines)
    scan = scan_lines(buf, offset, 1, 10**6)
    assert scan.lines == len(lines)
    assert [b.seq for b in scan.bad] == [i + 1 for i, line in enumerate(lines) if classify(line, 10**6)]
    for bad in scan.bad:
        assert buf[bad.offset - offset: bad.offset - offset + bad.length] == lines[bad.seq - 1]
    assert scan.index_points == index_points_of(lines, offset, 1)
    assert [seq for seq, _ in scan.index_points] == list(range(INDEX_EVERY + 1, len(lines) + 1, INDEX_EVERY))
    for _seq, off in scan.index_points:
        assert buf[off - offset - 1: off - offset] == b"\n"


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=5000),
       st.integers(min_value=1, max_value=5 * INDEX_EVERY), st.integers(min_value=0, max_value=10**6))
def test_index_points_of_an_append_anywhere_in_the_log(lines: list[bytes], first_seq: int, offset: int) -> None:
    """The points an append records are those a scan of the same lines finds, wherever it starts."""
    buf = b"".join(line + b"\n" for line in lines)
    assert index_points_of(lines, offset, first_seq) == scan_lines(buf, offset, first_seq, 10**6).index_points


@given(st.lists(events, min_size=1, max_size=50), st.integers(min_value=1, max_value=2000))
def test_cut_batch_takes_whole_lines_within_room(evs: list[dict[str, object]], room: int) -> None:
    buf = b"".join(orjson.dumps(e) + b"\n" for e in evs)
    cut = cut_batch(buf, 0, room)
    if cut == -1:
        assert buf.index(b"\n") >= room
    else:
        assert cut < room and buf[cut:cut + 1] == b"\n"
        assert buf.find(b"\n", cut + 1, room) == -1


@given(epochs, st.integers(min_value=1, max_value=10**9), st.lists(events, min_size=1, max_size=20))
def test_websocket_batch_is_spliced_json(epoch: str, first: int, evs: list[dict[str, object]]) -> None:
    data = b"\n".join(orjson.dumps(e) for e in evs)
    batch = Batch(first, first + len(evs) - 1, data)
    frame = WebSocketEncoder().items(epoch, [batch, Skipped(first + len(evs), "corrupt", 5), Reset("zzzzzz")])
    lines = frame.split(b"\n")
    assert lines[0].startswith(b'{"first":%d,"last":%d,' % (first, batch.last))
    decoded = orjson.loads(lines[0])
    assert decoded == {"first": first, "last": batch.last, "cursor": f"{epoch}-{batch.last}", "events": evs}
    assert orjson.loads(lines[1]) == {"control": "skipped", "seq": batch.last + 1,
                                      "cursor": f"{epoch}-{batch.last + 1}", "reason": "corrupt", "bytes": 5}
    assert orjson.loads(lines[2]) == {"control": "reset", "epoch": "zzzzzz"}


@given(epochs, st.lists(events, min_size=1, max_size=20))
def test_sse_and_ndjson_carry_each_event_with_its_cursor(epoch: str, evs: list[dict[str, object]]) -> None:
    data = b"\n".join(orjson.dumps(e) for e in evs)
    sse = SseEncoder().items(epoch, [Batch(7, 6 + len(evs), data)]).decode()
    blocks = [b for b in sse.split("\n\n") if b]
    assert [b.split("\n")[0] for b in blocks] == [f"id: {epoch}-{7 + i}" for i in range(len(evs))]
    assert [orjson.loads(b.split("\n", 1)[1].removeprefix("data: ")) for b in blocks] == evs
    nd = NdjsonEncoder().items(epoch, [Batch(7, 6 + len(evs), data)])
    rows = [orjson.loads(line) for line in nd.splitlines()]
    assert rows == [{"seq": 7 + i, "cursor": f"{epoch}-{7 + i}", "event": e} for i, e in enumerate(evs)]


def test_sse_strips_carriage_return_and_encodes_controls() -> None:
    out = SseEncoder().items("abcdef", [Batch(1, 1, b'{"type":"X"}\r'), Skipped(2, "oversize", 99), Reset("qqqqqq")])
    assert out == (b'id: abcdef-1\ndata: {"type":"X"}\n\n: skipped seq=2 reason=oversize bytes=99\n\n'
                   b": reset epoch=qqqqqq\n\n")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4), st.sampled_from(["", " ", "\n", " \t "]),
       st.booleans())
def test_an_array_of_one_event_is_stored_as_its_exact_text(fields: dict[str, object], ws: str, pretty: bool) -> None:
    """The orjson path for an array of one gives what the careful path gives: the item's own text,
    on one line (big integers and the like go the careful way)."""
    from gateway.api.bodies import _array_items, parse_json_body
    from gateway.store.lines import one_line

    event = {"type": "X", **{k: v for k, v in fields.items() if k != "type"}}  # a valid event, whatever the keys
    item = json.dumps(event, indent=1 if pretty else None)
    text = f"[{ws}{item}{ws}]"
    stored = parse_json_body(text.encode(), 1 << 20)
    [(_, raw)] = _array_items(text)
    assert stored == [one_line(raw.encode())]
    assert json.loads(stored[0]) == json.loads(item)
