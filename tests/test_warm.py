"""The compact cache extended run by run is the cache built in one pass, whatever came between.

Hypothesis writes sessions as a runner does (runs appended in pieces cut anywhere, runs that end
in the middle of a message or a tool call, state that carries from one run to the next, DELETE
between runs) and brings the sidecar up to date at random points, sometimes after a crash that
left it cut anywhere or with a torn last record. At the end its bytes must be those of a sidecar
built from scratch for the same log, and what it serves must be each finished run compacted on
its own. Also the builder's pure parts: its queue and its pacing.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.files import FileStore
from gateway.store.layout import LOG_NAME
from gateway.stream.compact import Compactor, Event, is_run_end
from gateway.stream.framing import Compact
from gateway.stream.sidecar import SIDECAR_NAME, Sidecar, pause, read_body
from gateway.stream.warm import Work, may_end_run

pytestmark = pytest.mark.unit


@st.composite
def run_lines(draw: st.DrawFn, r: int) -> list[bytes]:
    """One run: messages and tool calls streamed in deltas, state, events bigger than a record, and
    an end that may cut it short."""
    events: list[dict[str, Any]] = [{"type": "RUN_STARTED", "threadId": "t", "runId": f"r{r}"}]
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "tool", "snapshot", "patch", "patch", "big"]))
        if kind == "big":  # more than a record holds: the run's records are cut after it
            events.append({"type": "CUSTOM", "name": "big", "value": "x" * 70_000})
        elif kind == "snapshot":
            events.append({"type": "STATE_SNAPSHOT", "snapshot": {"n": i, "l": []}})
        elif kind == "patch":
            events.append({"type": "STATE_DELTA", "delta": [{"op": "add", "path": "/l/-", "value": i}]})
        else:
            start, key, delta = (("TEXT_MESSAGE_START", "messageId", "TEXT_MESSAGE_CONTENT") if kind == "text"
                                 else ("TOOL_CALL_START", "toolCallId", "TOOL_CALL_ARGS"))
            name = f"r{r}{kind}{i}"
            events.append({"type": start, key: name, **({"role": "assistant"} if kind == "text"
                                                         else {"toolCallName": "f"})})
            events += [{"type": delta, key: name, "delta": draw(st.text("ab\"\\é\n", max_size=3))}
                       for _ in range(draw(st.integers(0, 12)))]
            if draw(st.integers(0, 4)):  # else the run ends with it open
                events.append({"type": start.replace("START", "END"), key: name})
    events.append({"type": draw(st.sampled_from(["RUN_FINISHED", "RUN_ERROR"])), "threadId": "t", "runId": f"r{r}"})
    return [orjson.dumps(e) for e in events]


step = st.one_of(
    st.tuples(st.just("run"), st.integers(1, 5)),  # a run, appended in this many pieces
    st.tuples(st.just("open"), st.integers(1, 3)),  # a run not finished yet: appended, ends later
    st.tuples(st.just("update"), st.just(0)),
    # the sidecar cut at this many bytes from its end
    st.tuples(st.just("crash"), st.one_of(st.integers(0, 300), st.integers(0, 100_000))),
    st.tuples(st.just("torn"), st.integers(1, 200)),  # a torn record of this many bytes after it
    st.tuples(st.just("delete"), st.just(0)),
)


def reference(lines: list[bytes]) -> list[tuple[int, bytes]]:
    """Each finished run compacted on its own, in order (the unfinished tail is not served)."""
    out: list[tuple[int, bytes]] = []
    compactor = Compactor()
    for seq, line in enumerate(lines, 1):
        compactor.feed(seq, line)
        if is_run_end(line):
            compactor.finish()
            out += [(e.seq, e.data) for e in compactor.out if isinstance(e, Event)]
            compactor = Compactor()
    return out


def served(path: Path, records: list[Any]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    if not records:
        return out
    fd = os.open(path, os.O_RDONLY)
    try:
        for rec in records:
            body = read_body(fd, rec)
            assert isinstance(body, Compact)
            out += zip((int(s) for s in body.seqs.split(b",")), body.data.split(b"\n"), strict=True)
    finally:
        os.close(fd)
    return out


async def check(tmp: Path, steps: list[tuple[str, int]], runs: list[list[bytes]]) -> None:
    store = FileStore(tmp / "a", fsync=False, max_event_bytes=1 << 20)
    flog = await store.open("p", "s", create=True)
    sidecar = Sidecar(flog.dir, LOG_NAME)
    path = flog.dir / SIDECAR_NAME
    lines: list[bytes] = []
    pending: list[bytes] = []  # the open run's lines still to append
    for (kind, n), run in zip(steps, runs, strict=True):
        if kind in ("run", "open"):
            if pending:
                await flog.append(pending)
                lines += pending
            cut = sorted({len(run) * i // (n + 1) for i in range(1, n + 1)} | {0, len(run)})
            pieces = [run[a:b] for a, b in itertools.pairwise(cut) if b > a]
            for piece in pieces[:-1] if kind == "open" else pieces:
                await flog.append(piece)
                lines += piece
            pending = pieces[-1] if kind == "open" else []
        elif kind == "update":
            await sidecar.update(flog)
        elif kind == "crash" and path.exists():
            os.truncate(path, max(0, path.stat().st_size - n))
        elif kind == "torn" and path.exists():
            with open(path, "ab") as fh:
                fh.write(b"E 1 2 3 4 5 6 7\n" + b"x" * n)
        elif kind == "delete":
            await flog.delete()
            lines, pending = [], []
    records = await sidecar.update(flog)
    assert served(path, records) == reference(lines)
    built = path.read_bytes() if records else b""
    path.unlink(missing_ok=True)  # from scratch: the same log and epoch, no sidecar
    records = await Sidecar(flog.dir, LOG_NAME).update(flog)
    assert (path.read_bytes() if records else b"") == built
    store.close()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_extended_run_by_run_equals_built_from_scratch(tmp_path_factory: pytest.TempPathFactory,
                                                       data: st.DataObject) -> None:
    steps = data.draw(st.lists(step, min_size=1, max_size=12))
    runs = [data.draw(run_lines(r)) for r in range(len(steps))]
    anyio.run(check, tmp_path_factory.mktemp("warm"), steps, runs)


@pytest.mark.anyio
async def test_a_build_cut_inside_a_run_is_redone_from_the_run_start(tmp_path: Path) -> None:
    """A crash can leave the sidecar ending at a record boundary inside a run (the run's records
    are cut after an event bigger than a record). Extending from there would start with the state
    unknown, so the extension starts again at the run's first record."""
    run = [b'{"type":"RUN_STARTED"}', b'{"type":"STATE_SNAPSHOT","snapshot":{"l":[]}}',
           orjson.dumps({"type": "CUSTOM", "name": "big", "value": "x" * 70_000}),
           b'{"type":"STATE_DELTA","delta":[{"op":"add","path":"/l/-","value":1}]}',
           b'{"type":"STATE_DELTA","delta":[{"op":"add","path":"/l/-","value":2}]}', b'{"type":"RUN_FINISHED"}']
    await check(tmp_path, [("run", 1), ("update", 0), ("crash", 10), ("update", 0), ("run", 1), ("crash", 10)],
                [run, [], [], [], run, []])
    assert len(reference(run)) == 5  # the patches merged: the state is known across the big event


@pytest.mark.anyio
@pytest.mark.parametrize("cut", [1, 17])
async def test_a_torn_last_record_with_bytes_after_it_is_rebuilt(tmp_path: Path, cut: int) -> None:
    """A record whose header still fits the file but whose body was torn (bytes of another write
    after it; with `cut` 17 the file keeps its size) is found out before it is served."""
    run = [b'{"type":"RUN_STARTED"}', b'{"type":"RUN_FINISHED"}']
    await check(tmp_path, [("run", 1), ("update", 0), ("crash", cut), ("torn", 1)], [run, [], [], []])


def test_state_carried_over_a_run_end_is_not_merged() -> None:
    """Why a run is compacted on its own: what the cache holds for a run cannot depend on whether
    the previous one was compacted in the same build."""
    lines = [b'{"type":"STATE_SNAPSHOT","snapshot":{"l":[]}}', b'{"type":"RUN_FINISHED"}',
             b'{"type":"STATE_DELTA","delta":[{"op":"add","path":"/l/-","value":1}]}',
             b'{"type":"STATE_DELTA","delta":[{"op":"add","path":"/l/-","value":2}]}', b'{"type":"RUN_FINISHED"}']
    assert [seq for seq, _ in reference(lines)] == [1, 2, 3, 4, 5]


sessions = st.sampled_from("abcdef")
work_op = st.tuples(st.sampled_from(["ended", "want", "take"]), sessions)


@given(st.lists(work_op, max_size=40))
def test_work_hands_out_run_ends_first_and_each_session_once(ops: list[tuple[str, str]]) -> None:
    work: Work[int] = Work()
    ended: list[str] = []
    wanted: list[str] = []
    checked: set[str] = set()
    for i, (op, session) in enumerate(ops):
        if op == "ended":
            work.run_ended(session, i)
            if session not in ended:
                ended.append(session)
            if session in wanted:
                wanted.remove(session)
            checked.add(session)
        elif op == "want":
            assert work.want(session, i) == (session not in checked)
            if session not in checked:
                wanted.append(session)
                checked.add(session)
        else:
            got = work.take()
            from_ended = bool(ended)
            expect = ended.pop(0) if ended else wanted.pop(0) if wanted else None
            assert (got[0], got[2]) == (expect, from_ended) if got else expect is None
    assert list(work.ended) == ended and list(work.wanted) == wanted


@given(st.floats(1e-4, 10), st.floats(0.01, 1))
def test_pause_keeps_work_to_its_share(worked: float, share: float) -> None:
    assert worked / (worked + pause(worked, share)) == pytest.approx(share)


def test_may_end_run_is_a_byte_search() -> None:
    assert may_end_run([b'{"type":"TEXT_MESSAGE_CONTENT"}', b'{"type":"RUN_FINISHED"}'])
    assert may_end_run([b'{"type":"RUN_ERROR","message":"x"}'])
    assert not may_end_run([b'{"type":"RUN_STARTED"}', b'{"type":"TEXT_MESSAGE_CONTENT","delta":"RUN"}'])


@pytest.mark.anyio
async def test_a_build_that_saw_less_of_the_log_leaves_a_longer_sidecar_alone(tmp_path: Path) -> None:
    """Builds of one sidecar may start from different views of a growing log (a background job
    queued at an earlier append, a stream opened later): the one that saw less must not cut what
    the other built past its view."""
    store = FileStore(tmp_path, fsync=False, max_event_bytes=1 << 20)
    flog = await store.open("p", "s", create=True)
    first = [orjson.dumps({"type": "RUN_STARTED"}), orjson.dumps({"type": "RUN_FINISHED"})]
    await flog.append(first)
    old_view = flog.epoch, flog.lines, flog.end
    await flog.append(first * 3)
    sidecar = Sidecar(flog.dir, LOG_NAME)
    records = await sidecar.update(flog)
    whole = (flog.dir / SIDECAR_NAME).read_bytes()
    fd = sidecar.open()
    try:
        assert [r.last for r in sidecar.extend_file(fd, *old_view, {}, [], 0)] == [2]
    finally:
        os.close(fd)
        store.close()
    assert (flog.dir / SIDECAR_NAME).read_bytes() == whole and records[-1].last == 8
