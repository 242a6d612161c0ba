"""`client_frame` (the WebSocket fast lane's frame cutter) against websockets' own parser.

Client frames are built by websockets itself (`Frame.serialize(mask=True)`), strung together and
cut at random points, as TCP may deliver them. The lane's rule is checked on every stream: whole
text messages come out with websockets' payload, control frames are handed on whole, and
anything else stops the lane at the first byte of that frame, which websockets then parses.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway.stream.framing import CONTROL_FRAME, OTHER_FRAME, TEXT_FRAME, client_frame

pytestmark = pytest.mark.unit

LIMIT = 300


def _frame(kind: str, data: bytes, fin: bool = True) -> Frame:
    opcode = {"text": Opcode.TEXT, "binary": Opcode.BINARY, "cont": Opcode.CONT, "ping": Opcode.PING,
              "pong": Opcode.PONG, "close": Opcode.CLOSE}[kind]
    return Frame(opcode, data, fin)


frames = st.lists(st.one_of(
    st.builds(lambda d: ("text", d, True), st.binary(max_size=LIMIT + 20)),
    st.builds(lambda d: ("text", d, False), st.binary(max_size=40)),
    st.builds(lambda k, d: (k, d, True), st.sampled_from(["ping", "pong"]), st.binary(max_size=125)),
    st.builds(lambda d: ("binary", d, True), st.binary(max_size=40)),
    st.just(("close", b"\x03\xe8", True)),
), min_size=1, max_size=12)


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


@given(frames, st.lists(st.integers(min_value=0), max_size=20))
def test_the_lane_takes_what_it_may_and_stops_where_it_must(spec: list[tuple[str, bytes, bool]],
                                                           cuts: list[int]) -> None:
    encoded = [_frame(k, d, fin).serialize(mask=True) for k, d, fin in spec]
    stream = b"".join(encoded)
    taken: list[tuple[int, bytes]] = []
    buf, stopped_at, offset = b"", None, 0
    for piece in _cut(stream, cuts):
        buf += piece
        pos = 0
        while (found := client_frame(buf, pos, LIMIT)) is not None:
            kind, end, payload = found
            if kind == OTHER_FRAME:
                assert end == pos
                stopped_at = offset + pos
                break
            taken.append((kind, payload if kind == TEXT_FRAME else buf[pos:end]))
            pos = end
        if stopped_at is not None:
            break
        offset += pos
        buf = buf[pos:]
    assert stopped_at is not None or buf == b""  # everything was cut, nothing half-held at the end
    # What the lane should have done, frame by frame, from the spec alone:
    expected: list[tuple[int, bytes]] = []
    boundary = 0
    for (kind, data, fin), raw in zip(spec, encoded, strict=True):
        if kind == "text" and fin and len(data) <= LIMIT:
            expected.append((TEXT_FRAME, data))
        elif kind in ("ping", "pong", "close"):
            expected.append((CONTROL_FRAME, raw))
        else:
            assert stopped_at == boundary, (kind, fin, len(data))
            break
        boundary += len(raw)
    else:
        assert stopped_at is None
    assert taken == expected


def test_unmasked_and_rsv_frames_and_reserved_opcodes_are_left_to_websockets() -> None:
    unmasked = Frame(Opcode.TEXT, b"hi").serialize(mask=False)
    rsv = bytearray(Frame(Opcode.TEXT, b"hi").serialize(mask=True))
    rsv[0] |= 0x40
    reserved = bytearray(Frame(Opcode.TEXT, b"hi").serialize(mask=True))
    reserved[0] = (reserved[0] & 0xF0) | 0x3
    for raw in (unmasked, bytes(rsv), bytes(reserved)):
        assert client_frame(raw, 0, LIMIT) == (OTHER_FRAME, 0, b"")


def test_a_big_frame_is_told_from_its_header_alone() -> None:
    raw = Frame(Opcode.TEXT, b"x" * 70000).serialize(mask=True)
    assert client_frame(raw[:10], 0, 65536) == (OTHER_FRAME, 0, b"")  # 8-byte length: no payload needed
    assert client_frame(raw[:9], 0, 65536) is None  # the length is not whole yet
    medium = Frame(Opcode.TEXT, b"y" * 1000).serialize(mask=True)
    assert client_frame(medium[:-1], 0, 65536) is None
    assert client_frame(medium, 0, 65536) == (TEXT_FRAME, len(medium), b"y" * 1000)
