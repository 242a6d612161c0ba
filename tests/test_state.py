"""`LogState`, the bookkeeping of a log without I/O: what readers may see, and when."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.index import DIRTY
from gateway.store.lines import INDEX_EVERY, BadLine, index_points_of
from gateway.store.state import RECENT_BYTES, LogState

pytestmark = pytest.mark.unit


def lines_of(n: int, start_id: int = 0) -> list[bytes]:
    return [b'{"type":"X","id":%d}' % (start_id + i) for i in range(n)]


def write(state: LogState, lines: list[bytes]) -> int:
    """What the driver does after a successful write; returns the append's end offset."""
    start, first = state.written_end, state.written_lines + 1
    data = b"\n".join(lines) + b"\n"
    state.wrote(start, data, len(lines), index_points_of(lines, start, first))
    return state.written_end


def test_appends_stay_invisible_until_synced_and_publish_in_order() -> None:
    state = LogState("e1")
    first_end = write(state, lines_of(2))
    second_end = write(state, lines_of(3, 2))
    assert (state.end, state.lines, state.changes.version) == (0, 0, 0)
    assert state.recent(0, 100) == b""  # nothing published yet: a reader is at the end
    state.synced(first_end)
    assert (state.end, state.lines, state.changes.version) == (first_end, 2, 1)
    assert state.recent(0, 1000) == b'{"type":"X","id":0}\n{"type":"X","id":1}\n'
    state.synced(second_end - 1)  # a sync that ends inside an append publishes nothing of it
    assert state.lines == 2
    state.synced(second_end)
    assert (state.end, state.lines) == (second_end, 5)
    assert state.commit.synced_to == second_end and not state.commit.unsynced


def test_index_points_are_recorded_once_per_block_and_flag_bad_lines() -> None:
    state = LogState("e1")
    for _ in range(3):
        write(state, lines_of(INDEX_EVERY))
    new = state.synced(state.written_end)
    assert [k for k, _, _ in new] == [0, 1] and len(state.records) == 2  # 3 blocks: 2 points after block 1, 2
    assert all(flags == 0 for _, _, flags in new)

    other = LogState("e2")
    other.add_bad(BadLine(5, 0, 3, "corrupt"))
    new = other.took_in(10_000, INDEX_EVERY + 1, [], [(INDEX_EVERY + 1, 9_000)])
    assert new == [(0, 9_000, DIRTY)]
    assert other.next_bad(1) == BadLine(5, 0, 3, "corrupt") and other.next_bad(6) is None
    assert other.commit.synced_to == 10_000 and other.lines == INDEX_EVERY + 1


def test_seek_point_starts_at_the_nearest_index_point() -> None:
    state = LogState("e1")
    state.restore([1000, 2000])
    assert state.lines == 2 * INDEX_EVERY and state.end == 2000
    assert state.seek_point(1) == (0, 0)
    assert state.seek_point(INDEX_EVERY + 1) == (1000, 0)
    assert state.seek_point(INDEX_EVERY + 5) == (1000, 4)
    with pytest.raises(ValueError):
        state.seek_point(2 * INDEX_EVERY + 1)


def test_reset_retires_the_commit_and_forgets_the_log() -> None:
    state = LogState("e1")
    end = write(state, lines_of(2))
    old = state.commit
    state.reset("e2")
    assert old.retired and state.commit is not old and not state.commit.retired
    assert (state.epoch, state.end, state.written_end, state.records) == ("e2", 0, 0, [])
    assert state.changes.version == 1 and state.recent(0, 10) is None
    assert old.unsynced and old.synced_to < end  # the waiter decides from the old commit alone


def test_recent_holds_only_the_latest_bytes() -> None:
    state = LogState("e1")
    big = [b'{"type":"X","pad":"' + b"x" * (RECENT_BYTES // 4) + b'"}']
    for _ in range(6):
        write(state, big)
    state.synced(state.written_end)
    line = len(big[0]) + 1
    assert state.recent(0, 10) is None  # evicted: read it from the file
    assert state.recent(5 * line, line) == big[0] + b"\n"
    write(state, [b"x" * (RECENT_BYTES + 1)])  # larger than the cache: nothing is kept
    assert state.recent(5 * line, line) is None


def test_recent_joins_the_appends_it_holds_up_to_a_gap() -> None:
    """A replay or a seek through the last appends takes one call, not one per append; lines that
    another process appended (taken in, not held) end what one call returns."""
    state = LogState("e1")
    ends = [write(state, lines_of(1, i)) for i in range(50)]
    state.synced(state.written_end)
    assert state.recent(0, 1 << 20) == b"".join(line + b"\n" for line in lines_of(50))
    assert state.recent(ends[9], ends[11] - ends[9] - 1) == (b"\n".join(lines_of(2, 10)))
    state.took_in(100, 1, [], [])  # another writer's line: not held
    after = write(state, lines_of(1, 99))
    state.synced(after)
    assert state.recent(ends[48], 1 << 20) == lines_of(1, 49)[0] + b"\n"
    assert state.recent(ends[-1], 1 << 20) is None
    assert state.recent(ends[-1] + 100, 1 << 20) == lines_of(1, 99)[0] + b"\n"


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5)), min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 4000), st.integers(-5, 4000)), min_size=1, max_size=20))
def test_recent_returns_only_published_bytes_of_the_log_as_written(
        steps: list[tuple[bool, int]], reads: list[tuple[int, int]]) -> None:
    state, log, n = LogState("e1"), bytearray(), 0
    for ours, count in steps:
        if ours:
            lines = lines_of(count, n)
            write(state, lines)
            log += b"\n".join(lines) + b"\n"
        else:  # another process's lines: our own are synced first, then these are taken in
            state.synced(state.written_end)
            foreign = b"".join(b'{"type":"Y","id":%d}\n' % (n + i) for i in range(count))
            state.took_in(len(foreign), count, [], [])
            log += foreign
        n += count
        if n % 3 == 0:
            state.synced(state.written_end)
    for offset, size in reads:
        got = state.recent(offset, size)
        if got is not None:
            assert got == log[offset : offset + len(got)] and len(got) <= max(size, 0)
            assert not got or offset + len(got) <= state.end


@pytest.mark.anyio
async def test_wait_change_returns_on_the_next_visible_change() -> None:
    state = LogState("e1")
    version = state.changes.version
    async with anyio.create_task_group() as tg:
        tg.start_soon(state.changes.wait, version)
        await anyio.sleep(0.01)
        assert state.changes.waiters == 1
        state.synced(write(state, lines_of(1)))
    assert state.changes.waiters == 0 and state.changes.version == version + 1


@given(st.lists(st.tuples(st.integers(1, 300), st.booleans()), min_size=1, max_size=40))
def test_published_prefix_is_always_whole_synced_appends(ops: list[tuple[int, bool]]) -> None:
    state = LogState("e1")
    ends: list[tuple[int, int]] = []  # (end offset, lines) of each append
    for n, sync_now in ops:
        ends.append((write(state, lines_of(n, state.written_lines)), state.written_lines))
        if sync_now:
            state.synced(state.written_end)
        assert (state.end, state.lines) in [(0, 0), *ends]  # never inside an append
        assert state.end <= state.written_end and state.lines <= state.written_lines
        assert len(state.records) == max(0, (state.lines - 1) // INDEX_EVERY)  # one per whole block behind
