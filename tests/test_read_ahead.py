"""`ReadAhead`: a run's events read while the ones before are being appended come as one batch."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from gateway.runner.ahead import ReadAhead

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


async def _source(batches: list[list[bytes]], read: list[int], error: Exception | None = None,
                  ) -> AsyncIterator[list[bytes]]:
    for batch in batches:
        read.append(len(batch))
        yield batch
        await anyio.lowlevel.checkpoint()
    if error is not None:
        raise error


async def test_what_arrives_while_the_consumer_works_is_one_batch() -> None:
    read: list[int] = []
    ahead = ReadAhead()
    taken: list[list[bytes]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(ahead.fill, _source([[b"%d" % n] for n in range(50)], read))
        while (batch := await ahead.take()) is not None:
            taken.append(batch)
            for _ in range(20):  # an append waiting for its commit cycle
                await anyio.lowlevel.checkpoint()
    assert [x for batch in taken for x in batch] == [b"%d" % n for n in range(50)]
    assert len(taken) < 10, f"{len(taken)} batches for 50 events"


async def test_an_error_of_the_source_comes_after_what_was_read_before_it() -> None:
    ahead = ReadAhead()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ahead.fill, _source([[b"a"], [b"b"]], [], ConnectionError("cut")))
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert await ahead.take() == [b"a", b"b"]
        with pytest.raises(ConnectionError, match="cut"):
            await ahead.take()


async def test_the_reader_stops_past_its_limit_until_the_consumer_takes() -> None:
    read: list[int] = []
    ahead = ReadAhead(limit=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ahead.fill, _source([[b"x" * 4]] * 20, read))
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert len(read) == 3, "read until more than 10 bytes wait, then stopped"
        assert await ahead.take() == [b"x" * 4] * 3
        while await ahead.take() is not None:
            pass
    assert len(read) == 20
