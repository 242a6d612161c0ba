"""Property test of the reader over real files: any mix of lines, chunk sizes, budgets and starts.

The model is the simplest possible reader: split the file into lines and classify each one. The
real reader, cutting byte ranges out of chunks, must agree with it line for line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.cursor import Cursor
from gateway.store.files import FileStore
from gateway.store.layout import LOG_NAME
from gateway.store.lines import classify
from gateway.stream.framing import BATCH_OVERHEAD, Batch, Item, Skipped
from gateway.stream.reader import LogReader

pytestmark = pytest.mark.unit

MAX_EVENT = 2000

valid = st.builds(lambda n, pad: orjson.dumps({"type": "X", "n": n, "pad": "p" * pad}),
                  st.integers(0, 10**6), st.integers(0, 2500))
corrupt = st.sampled_from([b"", b"nope", b"[1]", b'{"type":', b"\x00\x00", b'"s"'])
lines_st = st.lists(st.one_of(valid, valid, valid, corrupt), min_size=0, max_size=120)


async def read_everything(root: Path, chunk: int, budget: int, after: int | None,
                          tail: int | None) -> tuple[list[Item], int]:
    store = FileStore(root, fsync=False, max_event_bytes=MAX_EVENT)
    try:
        flog = await store.open("p", "s", create=False)
        reader = LogReader(flog, chunk_bytes=chunk)
        await reader.seek(Cursor(flog.epoch, after) if after else None, tail)
        start = reader.seq
        out: list[Item] = []
        while items := await reader.read(budget):
            size = sum(len(i.data) + BATCH_OVERHEAD if isinstance(i, Batch) else BATCH_OVERHEAD for i in items)
            assert size <= budget or len(items) == 1, "only a single item may exceed the budget"
            out.extend(items)
        return out, start
    finally:
        store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines_st, st.integers(16, 9000), st.integers(64, 12000), st.data())
def test_reader_agrees_with_the_line_by_line_model(lines: list[bytes], chunk: int, budget: int,
                                                   data: st.DataObject) -> None:
    after = data.draw(st.one_of(st.none(), st.integers(1, max(1, len(lines)))))
    if after is not None and after > len(lines):
        after = None
    tail = data.draw(st.one_of(st.none(), st.integers(0, len(lines) + 3))) if after is None else None
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "sessions" / "s"
        session.mkdir(parents=True)
        (session / "meta.json").write_bytes(b'{"project": "p", "epoch": "abcdef1"}')
        (session / LOG_NAME).write_bytes(b"".join(line + b"\n" for line in lines))
        items, start = anyio.run(read_everything, Path(tmp), chunk, budget, after, tail)

    expected_start = after + 1 if after else (max(1, len(lines) - tail + 1) if tail is not None else 1)
    assert start == expected_start
    got: list[tuple[int, bytes | str]] = []
    for item in items:
        if isinstance(item, Batch):
            parts = item.data.split(b"\n")
            assert len(parts) == item.last - item.first + 1
            got.extend((item.first + i, part) for i, part in enumerate(parts))
        else:
            assert isinstance(item, Skipped)
            assert item.nbytes == len(lines[item.seq - 1])
            got.append((item.seq, item.reason))
    model = [(seq, reason if (reason := classify(line, MAX_EVENT)) else line)
             for seq, line in enumerate(lines, start=1) if seq >= expected_start]
    assert got == model
