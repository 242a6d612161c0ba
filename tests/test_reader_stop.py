"""A reader with a stop condition (a run's stream): it ends at the stopping line, and its cursor
is that line's, however the lines fall into batches."""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson
import pytest

from gateway.runner.runs import Run
from gateway.store.filelog import FileLog
from gateway.store.files import FileStore
from gateway.stream.framing import Batch, Item
from gateway.stream.reader import LogReader

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


def line(kind: str, run: str = "r1") -> bytes:
    return orjson.dumps({"type": kind, "runId": run})


def seqs(items: list[Item]) -> list[int]:
    return [seq for item in items if isinstance(item, Batch) for seq in range(item.first, item.last + 1)]


async def opened(tmp_path: Path) -> tuple[FileStore, FileLog]:
    store = FileStore(tmp_path, fsync=False, max_event_bytes=4096)
    return store, await store.open("p", "s", create=True)


def run_of(flog: FileLog) -> Run:
    return Run("p", "s", "r1", "t1", flog, None, 0)


@pytest.mark.parametrize("budget", [200, 100_000])
async def test_stops_at_the_runs_terminal_event(tmp_path: Path, budget: int) -> None:
    store, flog = await opened(tmp_path)
    try:
        await flog.append([line("RUN_STARTED"), line("RUN_FINISHED", "other"), line("TEXT"),
                           line("RUN_FINISHED"), line("RUN_STARTED", "r2")])
        reader = LogReader(flog, until=run_of(flog))
        await reader.seek()
        got: list[Item] = []
        while items := await reader.read(budget):
            got.extend(items)
        assert seqs(got) == [1, 2, 3, 4]  # another run's RUN_FINISHED does not stop it
        assert reader.stopped and reader.cursor == f"{flog.epoch}-4"
        assert await reader.read(budget) == []
    finally:
        store.close()


async def test_a_run_that_ends_without_a_terminal_event_stops_once_caught_up(tmp_path: Path) -> None:
    store, flog = await opened(tmp_path)
    try:
        await flog.append([line("RUN_STARTED")])
        run = run_of(flog)
        reader = LogReader(flog, until=run)
        await reader.seek()
        assert seqs(await reader.read(4096)) == [1]
        assert await reader.read(4096) == [] and not reader.stopped  # caught up, the run goes on
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.wait)
                run.done.set()  # the run ended and its RUN_ERROR could not be stored
        assert await reader.read(4096) == [] and reader.stopped
        assert reader.cursor == f"{flog.epoch}-1"
    finally:
        store.close()


async def test_without_a_stop_condition_a_reader_never_stops(tmp_path: Path) -> None:
    store, flog = await opened(tmp_path)
    try:
        await flog.append([line("RUN_STARTED"), line("RUN_FINISHED")])
        reader = LogReader(flog)
        await reader.seek()
        assert seqs(await reader.read(4096)) == [1, 2]
        assert await reader.read(4096) == [] and not reader.stopped
    finally:
        store.close()
