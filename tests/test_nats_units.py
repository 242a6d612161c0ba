"""Pure parts of the NATS store: message placement from headers, liveness merging, run slots."""

from __future__ import annotations

import orjson
import pytest

from gateway.sessions.replicas import merge
from gateway.store.nats import layout
from gateway.store.nats.conn import Stored, without_secret
from gateway.store.nats.runlock import holder_of

pytestmark = pytest.mark.unit


def test_headers_place_a_message_and_a_marker() -> None:
    headers = layout.event_headers("abcdef", "p", 7, 11, 13, 500, 9)
    msg = layout.placed(12, headers, 60)
    assert msg is not None and not msg.marker
    assert (msg.sseq, msg.base, msg.first, msg.last, msg.offset, msg.end) == (12, 7, 11, 13, 500, 560)
    marker = layout.placed(7, layout.marker_headers("abcdef", "p", 1, 0), 0)
    assert marker is not None and marker.marker and marker.base == 7 and marker.last == 0
    assert layout.placed(3, {"Agui-Epoch": "abcdef"}, 10) is None  # not written by the gateway


def test_liveness_counts_fresh_replicas_only() -> None:
    parts = {
        "a": {"connections": 2, "lastSeen": 900, "at": 1000},
        "b": {"connections": 1, "lastSeen": 950, "at": 990},
        "gone": {"connections": 5, "lastSeen": 999, "at": 100},
    }
    assert merge(parts, 1000, 500) == (3, 950)
    assert merge({}, 1000, 500) == (0, None)


def test_a_run_slot_is_free_when_absent_or_released_and_held_otherwise() -> None:
    assert holder_of(None) is None
    assert holder_of(Stored(4, {"KV-Operation": "DEL"}, b"")) is None
    assert holder_of(Stored(5, {}, orjson.dumps({"run": "r1", "replica": "x"}))) == "r1"
    assert holder_of(Stored(6, {}, b"not json")) == "?"  # someone else's value: held, never overwritten


def test_urls_are_shown_without_user_or_password() -> None:
    assert without_secret("nats://gw:pw@10.0.0.1:4222") == "nats://10.0.0.1:4222"
    assert without_secret("tls://tok@nats.example") == "tls://nats.example"
    assert without_secret("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert without_secret("127.0.0.1:4222") == "127.0.0.1:4222"


def test_buckets_are_replicated_like_the_logs_stream() -> None:
    bucket = layout.kv_config("AGUI_RUNS", max_age_s=45, replicas=3)
    assert bucket["num_replicas"] == layout.stream_config("AGUI", 3)["num_replicas"] == 3
    assert bucket["name"] == "KV_AGUI_RUNS" and bucket["max_age"] == 45 * 10**9


def test_the_header_block_of_the_jetstream_api_is_read() -> None:
    raw = b"NATS/1.0\r\nAgui-Epoch: k1\r\nAgui-First:3\r\nX: a: b\r\nX: c\r\nno colon\r\n\r\n"
    assert layout.header_block(raw) == {"Agui-Epoch": "k1", "Agui-First": "3", "X": "c"}
    assert layout.header_block(b"") == {}
