"""Real load: S sessions, each written by its own runner and watched by F browser tabs.

    python bench/sessions.py [--sessions 200] [--followers 2] [--rate 20] [--seconds 10] [--rounds 3]
                             [--writer ws|post|stream|runs] [--inflight 1] [--sweep 50,100,200,400]
                             [--servers gateway,nchan] [--workers 1] [--fsync always|never]
                             [--out docs/benchmarks.md] [--plot docs/sessions-p99.svg]

An agent platform has hundreds of sessions streaming at once, each written by its own runner
(token deltas, about 20 events/s of 100-150 bytes) and watched by one to three tabs. Here every
session has one writer, paced: event n is due at start + n/R (sessions staggered over 1/R), and
carries its number and its send time (`{"type":"CUSTOM","name":"tick","value":{"n","t","delta"}}`,
`t` from CLOCK_MONOTONIC, one clock for every process of the machine). Writers run in
`--writer-procs` processes on raw asyncio protocols; a writer that cannot send an event when it is
due sends it as soon as it can (its lag behind schedule is reported), and stops at the end of the
window: events not sent by then are not kept. Writer modes (`--writer`):

- `ws`: `{"append":[event]}` on the session's events WebSocket (`?subscribe=0`: it answers the
  appends and streams no events, like Nchan's publisher socket), at most `--inflight` appends
  awaiting their `appended` answer (0: none awaited, only TCP flow control holds the writer).
- `post`: one keep-alive connection per session, a POST per event, the next one after the answer.
- `stream`: one `POST ...?stream=1` per session, one NDJSON line per chunk; only TCP flow
  control holds the writer (the answer comes at the end, and its count is checked).
- `runs`: `POST .../runs` per session, to a gateway whose GATEWAY_RUNNER_URL is a lean AG-UI
  runner of this script (its own processes, their CPU not the gateway's) that streams one run per
  session over SSE at R events/s, from when the gateway asks for it to the end of the window.

Followers: F per session, raw WebSocket clients (bench/wsload.py's Follower) in
`--follower-procs` processes, connected once every session has more than 50 events: each asks
for the last 50 (`?tail=50`; an Nchan subscriber gets its channel's buffer, which the
publishers' location keeps at 50 messages), then follows. Events sent before a follower started
to connect are its replay: counted (the table shows the fewest any follower got), not timed.
Latency (the writer's send to the follower's receipt) and dup count the events sent after the
follower started to connect, lost those of them the server took (answered: ws, post; the count a
stream's answer gives; runs: the events the log holds once it stops growing, at most 30 s after
the window), from the first event the follower received on (a handshake served more than 50
events after its TCP connection opened leaves the events before those 50 out of its replay, as
`?tail=50` asks): each must arrive exactly once (dup also counts a replayed event received
twice); one still missing 10 s after the window is lost. Events never answered (5 s after the window)
are reported as unanswered.

Measured over the window (`--seconds`, from the moment every follower is connected): appends/s
kept against the events due in it (kept: the answers the server gave in the window to `ws` and
`post` writers; `stream` and `runs` get no answer per event, so there the events the writers got
out in it, which TCP buffers may hold for a while: their latency tells), latency p50/p99/p99.9
of the events sent in it, beside p99/max of those sent while the followers connected (after a
follower's TCP connection opened, before the window: the connection storm, whose handshakes and
replays the live events of that time wait behind), lost and dup (sums over followers), the
writers' lag behind schedule (every event, warm-up included), server CPU-seconds per kept
append and per delivery (the server's processes, `--workers` children included, over the
window; deliveries are the events the followers received in it, whose replays are over when it
starts; not the writers' own echo).

The peer is nginx + Nchan (one worker, Debian's packages): WebSocket publishers on
`/pub50/<session>` (HTTP POSTs with `--writer post`; Nchan has no streaming append and no
runs), answered per message, followers on the channel. Rounds alternate the servers, the table
gives medians of the rounds. `--sweep` runs every S of the list and reports, per server, the
largest S kept at >= 95% with p99 <= 100 ms (the window's p99); `--plot` draws p99 against S per
server, the window's and while the followers connect (matplotlib). `--timeline` prints each
run's latency by send time in quarter-second slices from the window's start, the slices before
it being the connection storm: where a window's tail comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, Server, available, free_port, percentile, report, start
from wsload import TICK, Follower, Tally

PROJECT = "bench"
TAIL = 50  # events a follower gets before following (Nchan: the channel's buffer, /pub50/ in bench/common.py)
DRAIN = 10.0  # seconds after the window a follower may take to get the events sent in it
TEXT = ("the answer streams token by token while the agent reads the docs and calls a tool then "
        "writes a summary of what it found in the log for every tab that follows the session")
WORDS = TEXT.split() * 2
DELTAS = [" " + " ".join(WORDS[(i * 7) % 34:][:6 + i % 6]) for i in range(64)]  # 25-60 characters
SECTION = "Real load: sessions x followers (bench/sessions.py)"


def tick(n: int, t: float) -> bytes:
    """Event n of a session, sent at t: 110-150 bytes, like a token delta."""
    return b'{"type":"CUSTOM","name":"tick","value":{"n":%d,"t":%.6f,"delta":"%s"}}' % (
        n, t, DELTAS[n % len(DELTAS)].encode())


def masked(payload: bytes, opcode: int = 1) -> bytes:
    """A client's WebSocket frame (FIN, masked with a fresh key, as RFC 6455 requires of clients)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = random.getrandbits(32).to_bytes(4, "big")
    body = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + key + body


# ---------------------------------------------------------------------------------------------
# Writers: one per session, in writer processes. Each protocol has `wait_ready()` (may it send
# now?), `send(n, t)` and `finish()`; `pace` paces them.


class Writer(asyncio.Protocol):
    """What every writer shares: the connection, TCP flow control, the tally of its session."""

    answers = False  # whether the server answers each event (then `acked` counts the answers)

    def __init__(self, session: str, path: str, port: int) -> None:
        self.session, self.path, self.port = session, path, port
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent = array("d")  # send time of event n, n = 0..
        self.lags = array("d")
        self.acked = 0
        self.window = [0, 0]  # `acked` when the window started and when it ended
        self.errors: list[str] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.start()

    def start(self) -> None:
        self.opened.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed"))
        self.on_lost()

    def on_lost(self) -> None:
        pass

    def fail(self, why: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(why)

    def can_send(self) -> bool:
        return self.writable.is_set()

    async def wait_ready(self) -> None:
        await self.writable.wait()

    def send(self, n: int, t: float) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """After the last event: wait (a little) for what is owed, then close."""
        if self.transport is not None:
            self.transport.close()

    def result(self) -> tuple[str, bytes, bytes, int, int, list[str]]:
        """Send times, lags, events answered (-1: no answers), answered in the window, errors."""
        answered = self.window[1] - self.window[0] if self.answers else -1
        return self.session, self.sent.tobytes(), self.lags.tobytes(), self.acked, answered, self.errors


class AckedWriter(Writer):
    """A writer whose server answers each event: at most `inflight` unanswered (0: no limit)."""

    answers = True

    def __init__(self, session: str, path: str, port: int, inflight: int) -> None:
        super().__init__(session, path, port)
        self.inflight = inflight
        self.answered = asyncio.Event()

    def on_answer(self, count: int = 1) -> None:
        self.acked += count
        self.answered.set()

    def on_lost(self) -> None:
        self.answered.set()

    def can_send(self) -> bool:
        return (not self.inflight or len(self.sent) - self.acked < self.inflight) and self.writable.is_set()

    async def wait_ready(self) -> None:
        while self.inflight and len(self.sent) - self.acked >= self.inflight and not self.closed:
            self.answered.clear()
            await self.answered.wait()
        await self.writable.wait()

    async def finish(self) -> None:
        deadline = time.monotonic() + 5
        while self.acked < len(self.sent) and not self.closed and time.monotonic() < deadline:
            self.answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), max(0.01, deadline - time.monotonic()))
        await super().finish()


class WsWriter(AckedWriter):
    """`{"append":[event]}` frames (gateway) or the bare event (Nchan's WebSocket publisher) on one
    WebSocket; counts the server's answers in the frames it gets back (and answers pings)."""

    def __init__(self, session: str, path: str, port: int, inflight: int, wrap: bool, answer: bytes) -> None:
        super().__init__(session, path, port, inflight)
        self.wrap, self.answer, self.error = wrap, answer, b'"control":"error"'
        self.buf = bytearray()
        self.open = False

    def start(self) -> None:
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write((f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:200]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.open = True
            self.opened.set_result(None)
        while len(buf) >= 2:
            n, head = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, head = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, head = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < head + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[head: head + n])
            del buf[: head + n]
            if opcode == 1:
                if count := payload.count(self.answer):
                    self.on_answer(count)
                if self.error in payload:
                    self.fail(payload[:300].decode(errors="replace"))
            elif opcode == 9 and self.transport is not None:
                self.transport.write(masked(payload, 0xA))
            elif opcode == 8:
                self.fail(f"closed by the server: {payload[:200]!r}")

    def send(self, n: int, t: float) -> None:
        assert self.transport is not None
        event = tick(n, t)
        self.transport.write(masked(b'{"append":[' + event + b"]}" if self.wrap else event))


class PostWriter(AckedWriter):
    """One keep-alive connection, one POST per event, the next one after the answer."""

    def __init__(self, session: str, path: str, port: int) -> None:
        super().__init__(session, path, port, 1)
        self.buf = bytearray()
        self.head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(buf[:end]).lower()
            length = int(m[1]) if (m := re.search(rb"content-length: *(\d+)", head)) else 0
            if len(buf) < end + 4 + length:
                return
            if not head.startswith((b"http/1.1 20", b"http/1.0 20")):
                self.fail(bytes(buf[: end + 4 + length])[:300].decode(errors="replace"))
            del buf[: end + 4 + length]
            self.on_answer()

    def send(self, n: int, t: float) -> None:
        assert self.transport is not None
        body = tick(n, t)
        self.transport.write(self.head + b"%d\r\n\r\n" % len(body) + body)


class StreamWriter(Writer):
    """One long `POST ...?stream=1` with a chunked NDJSON body, a line per chunk."""

    def __init__(self, session: str, path: str, port: int) -> None:
        super().__init__(session, path + "?stream=1", port)
        self.answer = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write((f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                              "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        super().start()

    def data_received(self, data: bytes) -> None:
        self.answer += data
        if b"\r\n\r\n" in self.answer and b"}" in self.answer.split(b"\r\n\r\n", 1)[1] and not self.done.done():
            self.done.set_result(None)

    def on_lost(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def send(self, n: int, t: float) -> None:
        assert self.transport is not None
        line = tick(n, t) + b"\n"
        self.transport.write(b"%x\r\n%s\r\n" % (len(line), line))

    async def finish(self) -> None:
        assert self.transport is not None
        if not self.closed:
            self.transport.write(b"0\r\n\r\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done, 15)
        answer = bytes(self.answer)
        if m := re.search(rb'"count":(\d+)', answer):
            self.acked = int(m[1])
        if not answer.startswith(b"HTTP/1.1 20") or self.acked != len(self.sent):
            self.fail(f"answer {answer[-300:]!r}, {len(self.sent)} sent")
        self.transport.close()


class Control:
    """A writer process's link to the main process: `status` and `end` requests, read in a thread."""

    def __init__(self, pipe: Connection, loop: asyncio.AbstractEventLoop, status: Callable[[], tuple[int, int]],
                 writers: Sequence[Writer] = ()) -> None:
        self.pipe, self.loop, self.status, self.writers = pipe, loop, status, writers
        self.end = math.inf
        self.ended = asyncio.Event()
        self.go: asyncio.Future[float] = loop.create_future()
        self.cpu0 = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.pipe.recv()
            except EOFError:
                return
            self.loop.call_soon_threadsafe(self._handle, msg)
            if msg[0] == "end":
                return

    def _handle(self, msg: tuple[str, float]) -> None:
        if msg[0] == "go":
            self.go.set_result(msg[1])
        elif msg[0] == "status":
            self.pipe.send(("status", *self.status()))
        elif msg[0] == "end":  # sent when the window starts
            self.end = msg[1]
            self.cpu0 = time.process_time()
            self.ended.set()
            for w in self.writers:
                w.window[0] = w.acked
            self.loop.call_later(self.end - time.monotonic(), self._window_ended)

    def _window_ended(self) -> None:
        for w in self.writers:
            w.window[1] = w.acked


async def pace(writer: Writer, first_due: float, rate: float, control: Control) -> None:
    """Send event n at first_due + n/rate (as soon as the writer may, when late) until the end."""
    n = 0
    sent, lags = writer.sent, writer.lags
    while not writer.closed:
        due = first_due + n / rate
        if due >= control.end:
            break
        if (ahead := due - time.monotonic()) > 0:
            await asyncio.sleep(ahead)
        while not writer.can_send() and not writer.closed and time.monotonic() < control.end:
            with contextlib.suppress(TimeoutError):  # the end may come while the writer waits
                await asyncio.wait_for(writer.wait_ready(), 0.5)
        now = time.monotonic()
        if now >= control.end or writer.closed:
            break
        writer.send(n, now)
        sent.append(now)
        lags.append(now - due)
        n += 1


@dataclass
class WriterSpec:
    """How writer processes reach a server: the mode, the paths, the inflight limit."""

    mode: str  # ws, post, stream
    port: int
    gateway: bool
    inflight: int
    rate: float
    sessions: int  # in all: the stagger of session i is i / sessions / rate

    def path(self, session: str) -> str:
        if not self.gateway:
            return f"/pub50/{session}"
        base = f"/v1/projects/{PROJECT}/sessions/{session}/events"
        return base + "?subscribe=0" if self.mode == "ws" else base

    def make(self, session: str) -> Writer:
        path = self.path(session)
        if self.mode == "ws":
            answer = b'"control":"appended"' if self.gateway else b"queued messages:"
            return WsWriter(session, path, self.port, self.inflight, self.gateway, answer)
        if self.mode == "post":
            return PostWriter(session, path, self.port)
        return StreamWriter(session, path, self.port)


def writer_process(spec: WriterSpec, sessions: list[tuple[int, str]], pipe: Connection) -> None:
    """Connect a writer per session, say ready, get the start time, pace until the end, report."""
    asyncio.run(_writers(spec, sessions, pipe))


async def _writers(spec: WriterSpec, sessions: list[tuple[int, str]], pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    writers = []
    for _, session in sessions:
        _, w = await loop.create_connection(lambda s=session: spec.make(s), "127.0.0.1", spec.port)  # type: ignore[misc]
        await asyncio.wait_for(w.opened, 60)
        writers.append(w)
    control = Control(pipe, loop, lambda: (len(writers), min((len(w.sent) for w in writers), default=0)), writers)
    pipe.send(("ready",))
    t0 = await control.go
    await asyncio.gather(*(pace(w, t0 + i / spec.sessions / spec.rate, spec.rate, control)
                           for (i, _), w in zip(sessions, writers, strict=True)))
    cpu = time.process_time() - control.cpu0
    await asyncio.gather(*(w.finish() for w in writers))
    pipe.send(("result", [w.result() for w in writers], cpu))


# ---------------------------------------------------------------------------------------------
# The runs path: a lean AG-UI runner (raw asyncio, SSE over chunked HTTP), in runner processes
# sharing one port (SO_REUSEPORT). A run's input names its session (threadId), the session's
# index and the start time in `forwardedProps`; the run streams ticks until the end of the window.


class Run(Writer):
    """One run: the runner's side of the gateway's POST, its SSE answer paced like a writer."""

    def __init__(self, runner: Runner) -> None:
        super().__init__("", "", 0)
        self.runner = runner
        self.buf = bytearray()
        self.run_id = ""

    def start(self) -> None:
        pass  # opened once the request is read

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.opened.done() and (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).lower()
            length = int(m[1]) if (m := re.search(rb"content-length: *(\d+)", head)) else 0
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4: end + 4 + length])
            del self.buf[: end + 4 + length]
            assert self.transport is not None
            if head.startswith(b"post / "):
                self.run(body)
            else:  # capabilities and the rest: none
                self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    def run(self, body: bytes) -> None:
        assert self.transport is not None
        self.session = _json_str(body, "threadId")
        self.run_id = _json_str(body, "runId")
        props = re.search(rb'"forwardedProps":\{"i":(\d+),"t0":([0-9.]+)\}', body)
        assert props, body[:300]
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
        self._event(b'{"type":"RUN_STARTED","threadId":"%s","runId":"%s"}' % (
            self.session.encode(), self.run_id.encode()))
        self.opened.set_result(None)
        self.runner.started(self, int(props[1]), float(props[2]))

    def _event(self, data: bytes) -> None:
        assert self.transport is not None
        frame = b"data: " + data + b"\n\n"
        self.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))

    def send(self, n: int, t: float) -> None:
        self._event(tick(n, t))

    async def finish(self) -> None:
        if not self.closed:
            self._event(b'{"type":"RUN_FINISHED","threadId":"%s","runId":"%s"}' % (
                self.session.encode(), self.run_id.encode()))
            assert self.transport is not None
            self.transport.write(b"0\r\n\r\n")
            self.acked = len(self.sent)
            await asyncio.sleep(0.5)
            self.transport.close()


def _json_str(body: bytes, key: str) -> str:
    m = re.search(rb'"%s":"([^"]*)"' % key.encode(), body)
    return m[1].decode() if m else ""


class Runner:
    """The runs of one runner process."""

    def __init__(self, rate: float, sessions: int, control: Callable[[], Control]) -> None:
        self.rate, self.sessions, self.control = rate, sessions, control
        self.runs: list[Run] = []
        self.tasks: list[asyncio.Task[None]] = []

    def started(self, run: Run, index: int, t0: float) -> None:
        if time.monotonic() >= self.control().end:  # after the window: finished at once, not counted
            asyncio.get_running_loop().create_task(run.finish())
            return
        self.runs.append(run)
        # a runner streams from when it is asked: a run the gateway starts late is not a late writer
        first = max(t0 + index / self.sessions / self.rate, time.monotonic())
        self.tasks.append(asyncio.get_running_loop().create_task(pace(run, first, self.rate, self.control())))


def runner_process(port: int, rate: float, sessions: int, pipe: Connection) -> None:
    asyncio.run(_runner(port, rate, sessions, pipe))


async def _runner(port: int, rate: float, sessions: int, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    control: list[Control] = []
    runner = Runner(rate, sessions, lambda: control[0])
    await loop.create_server(lambda: Run(runner), "127.0.0.1", port, reuse_port=True, backlog=4096)
    control.append(Control(pipe, loop, lambda: (len(runner.runs), min((len(r.sent) for r in runner.runs),
                                                                         default=0))))
    pipe.send(("ready",))  # the start time ("go") is not needed: the runs bring their own
    await control[0].ended.wait()
    while runner.tasks:
        tasks, runner.tasks = runner.tasks, []
        await asyncio.gather(*tasks)
    cpu = time.process_time() - control[0].cpu0
    runs = list(runner.runs)
    await asyncio.gather(*(r.finish() for r in runs))
    pipe.send(("result", [r.result() for r in runs], cpu))
    await asyncio.Event().wait()  # a run the gateway starts late still gets an answer, until terminated


# ---------------------------------------------------------------------------------------------
# Followers


class SessionFollower(Follower):
    """bench/wsload.py's follower, told apart replay (sent before it connected: counted, not timed)
    and live events (timed, with their send times; each must come once), with a count of receipts
    per 10 ms."""

    def __init__(self, session: str, path: str, port: int, ready: asyncio.Future[None],
                 live_marker: bytes | None, tally: Tally, buckets: array[int], base: float,
                 sent_at: array[float]) -> None:
        super().__init__(path, f"127.0.0.1:{port}", ready, live_marker, tally, 0)
        self.session, self.buckets, self.base, self.sent_at = session, buckets, base, sent_at
        self.seen = bytearray(1024)
        self.connected_at = math.inf
        self.replayed = 0
        self.first = -1  # the first event received: the replay (the last 50 when the handshake was served) starts there

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_at = time.monotonic()
        super().connection_made(transport)

    def _text(self, payload: bytes, now: float) -> None:
        if self.live_marker is not None and not self.ready.done() and self.live_marker in payload:
            self._settle(None)
        seen, lat, since, got = self.seen, self.tally.latencies, self.connected_at, 0
        for m in TICK.finditer(payload):
            n, t = int(m[1]), float(m[2])
            if n >= len(seen):
                seen.extend(bytes(n + 1024 - len(seen)))
            if seen[n]:
                self.tally.dup += 1
            seen[n] = 1
            got += 1
            if self.first < 0:
                self.first = n
            if t >= since:
                lat.append(now - t)
                self.sent_at.append(t)
            else:
                self.replayed += 1
        if got:
            slot = int((now - self.base) * 100)
            if slot >= len(self.buckets):
                self.buckets.extend(array("l", bytes(8 * (slot + 100 - len(self.buckets)))))
            self.buckets[slot] += got

    def missing(self, sent: array[float]) -> int:
        """Events sent since the connection opened and not received, from the first one received
        on: a handshake served more than 50 events after the TCP connection leaves the earlier ones
        out of `?tail=50` by design (nothing received yet: every event since the connection)."""
        since, seen, first = self.connected_at, self.seen, max(self.first, 0)
        return sum(1 for n, t in enumerate(sent) if t >= since and n >= first and (n >= len(seen) or not seen[n]))


def follower_process(port: int, targets: list[tuple[str, str]], live_marker: bytes | None,
                     pipe: Connection) -> None:
    asyncio.run(_follow(port, targets, live_marker, pipe))


async def _follow(port: int, targets: list[tuple[str, str]], live_marker: bytes | None, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    tally, buckets, base = Tally(followers=len(targets)), array("l", bytes(8 * 10000)), time.monotonic()
    sent_at: array[float] = array("d")  # the send time of each of tally.latencies

    async def one(session: str, path: str) -> SessionFollower:
        ready: asyncio.Future[None] = loop.create_future()
        _, f = await loop.create_connection(
            lambda: SessionFollower(session, path, port, ready, live_marker, tally, buckets, base, sent_at),
            "127.0.0.1", port)
        await asyncio.wait_for(ready, 120)
        return f  # type: ignore[return-value]

    followers: list[SessionFollower] = []
    for i in range(0, len(targets), 50):  # 50 handshakes at a time, like tabs opening
        followers += await asyncio.gather(*(one(s, p) for s, p in targets[i: i + 50]))
    pipe.send(("ready",))
    cpu0 = time.process_time()
    _, window, sent_of = await loop.run_in_executor(None, pipe.recv)
    sent = {s: array("d", raw) for s, raw in sent_of.items()}
    none = array("d")  # a session whose writer never started (a run that never reached the runner)
    deadline = time.monotonic() + DRAIN
    while time.monotonic() < deadline and any(f.missing(sent.get(f.session, none)) for f in followers):
        await asyncio.sleep(0.2)
    tally.lost = sum(f.missing(sent.get(f.session, none)) for f in followers)
    tally.cpu = time.process_time() - cpu0
    lo, hi = (int((t - base) * 100) for t in window)
    delivered = sum(buckets[max(lo, 0): hi])
    for f in followers:
        if f.transport is not None:
            f.transport.abort()
    pipe.send((tally.latencies.tobytes(), sent_at.tobytes(), tally.lost, tally.dup, delivered,
               [f.replayed for f in followers], tally.cpu))


# ---------------------------------------------------------------------------------------------
# One run


@dataclass
class Result:
    """One run of one server at one S."""

    server: str
    writer: str
    sessions: int
    followers: int
    rate: float
    seconds: float  # the window
    due: int  # events due in the window
    appended: int  # events the server answered in the window (stream, runs: events sent in it)
    sent: int  # events the writers sent in the window
    latencies: array[float] = field(repr=False)  # every delivery of an event sent in the window, s, sorted
    connecting: array[float] = field(repr=False)  # those of events sent before it, while followers connected
    lags: array[float] = field(repr=False)  # every event's lag behind its due time, s, sorted
    lost: int = 0
    dup: int = 0
    deliveries: int = 0  # follower receipts in the window
    cpu: float = 0.0  # server CPU-seconds in the window
    writer_cpu: float = 0.0
    follower_cpu: float = 0.0
    replayed: tuple[int, int] = (0, 0)  # fewest and median events replayed to a follower
    unacked: int = 0  # events sent but not answered by the server (ws, post, stream)
    errors: tuple[str, ...] = ()
    writing: int = 0  # sessions whose writer sent events in the window (runs: whose run streamed)
    slices: tuple[Slice, ...] = ()  # latency by send time (`--timeline`)

    @property
    def kept(self) -> float:
        return self.appended / self.due if self.due else 0.0

    @property
    def rate_kept(self) -> float:
        return self.appended / self.seconds

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def connecting_ms(self, q: float) -> float:
        return percentile(self.connecting, q) * 1000

    def lag_ms(self, q: float) -> float:
        return percentile(self.lags, q) * 1000

    @property
    def us_per_append(self) -> float:
        return 1e6 * self.cpu / self.appended if self.appended else math.nan

    @property
    def us_per_delivery(self) -> float:
        return 1e6 * self.cpu / self.deliveries if self.deliveries else math.nan

    def line(self) -> str:
        return (f"kept {self.appended / self.seconds:,.0f} of {self.due / self.seconds:,.0f}/s ({self.kept:.0%}), "
                f"sent {self.sent / self.seconds:,.0f}/s, "
                f"lag p99 {self.lag_ms(0.99):.0f} ms, p50/p99/p99.9 {self.ms(0.5):.1f}/{self.ms(0.99):.1f}/"
                f"{self.ms(0.999):.1f} ms (connecting: p99/max {self.connecting_ms(0.99):.0f}/"
                f"{self.connecting_ms(1.0):.0f} ms), lost {self.lost}, dup {self.dup}, "
                f"replayed min {self.replayed[0]}, "
                f"CPU {self.cpu / self.seconds:.2f} ({self.us_per_append:.0f} us/append, "
                f"{self.us_per_delivery:.1f} us/delivery), writers {self.writer_cpu / self.seconds:.2f}, "
                f"followers {self.follower_cpu / self.seconds:.2f}"
                + (f", {self.unacked} unanswered" if self.unacked else "")
                + (f", only {self.writing} sessions written" if self.writing < self.sessions else "")
                + (f", errors: {'; '.join(self.errors[:2])}" if self.errors else ""))


def _fork(target: Callable[..., None], *args: object) -> tuple[Connection, object]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    return parent, proc


def _expect(pipe: Connection, what: str, timeout: float) -> tuple[object, ...]:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a client process did not say {what} within {timeout:g} s")
    msg = pipe.recv()
    if msg[0] != what:
        raise RuntimeError(f"a client process said {msg!r}, not {what}")
    return tuple(msg[1:])


@dataclass
class Setup:
    """The load of a run: sizes, the writer mode and the client processes."""

    sessions: int
    followers: int
    rate: float
    seconds: float
    writer: str
    inflight: int
    writer_procs: int
    follower_procs: int


def writer_of(server: str, writer: str) -> str:
    """The writer mode a server gets: Nchan has no streaming append and no runs (WebSocket publishers)."""
    return writer if server == "gateway" or writer == "post" else "ws"


def session_names(count: int) -> list[str]:
    return [f"s{i:04d}" for i in range(count)]


def create_sessions(server: Server, sessions: list[str]) -> None:
    """A gateway session exists before its writer's WebSocket and its followers come."""
    async def create() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:
            sem = asyncio.Semaphore(16)

            async def one(s: str) -> None:
                async with sem:
                    r = await http.post(server.pub_url(s), json={"type": "CUSTOM", "name": "created"})
                    r.raise_for_status()

            await asyncio.gather(*(one(s) for s in sessions))
    asyncio.run(create())


def stored_ticks(server: Server, sessions: list[str]) -> dict[str, int]:
    """Ticks each session's log holds (runs: no answer per event), once the logs stop growing
    (at most 30 s): every line but the session's first event and RUN_STARTED (RUN_FINISHED too
    when it is there: the count is capped by what the run sent)."""
    async def counts(http: httpx.AsyncClient) -> dict[str, int]:
        async def one(s: str) -> int:
            r = await http.get(f"http://127.0.0.1:{server.port}/v1/projects/{PROJECT}/sessions/{s}")
            return int(r.json()["events"]) - 2

        return dict(zip(sessions, await asyncio.gather(*(one(s) for s in sessions)), strict=True))

    async def settle() -> dict[str, int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:
            last, deadline = await counts(http), time.monotonic() + 30
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                now = await counts(http)
                if now == last:
                    break
                last = now
            return last
    return asyncio.run(settle())


def start_runs(server: Server, sessions: list[str], t0: float) -> None:
    async def post() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:
            sem = asyncio.Semaphore(16)

            async def one(i: int, s: str) -> None:
                body = (b'{"threadId":"%s","runId":"r-%s","state":{},"messages":[],"tools":[],"context":[],'
                        b'"forwardedProps":{"i":%d,"t0":%.6f}}' % (s.encode(), s.encode(), i, t0))
                async with sem:
                    r = await http.post(f"http://127.0.0.1:{server.port}/v1/projects/{PROJECT}/sessions/{s}/runs",
                                        content=body, headers={"content-type": "application/json"})
                    if r.status_code != 202:
                        raise RuntimeError(f"run of {s}: {r.status_code} {r.text[:300]}")

            await asyncio.gather(*(one(i, s) for i, s in enumerate(sessions)))
    asyncio.run(post())


def one_run(server: Server, setup: Setup, runner: list[Connection] | None = None) -> Result:
    """The load of `setup` against a started server (for `runs`, `runner` are the runner processes'
    pipes, started before the gateway, which needs their port)."""
    gateway = server.name == "gateway"
    mode = writer_of(server.name, setup.writer)
    names = session_names(setup.sessions)
    if gateway:
        create_sessions(server, names)
    if mode == "runs":
        assert runner is not None
        writers = runner
    else:
        spec = WriterSpec(mode, server.port, gateway, setup.inflight, setup.rate, setup.sessions)
        indexed = list(enumerate(names))
        writers = [_fork(writer_process, spec, indexed[i:: setup.writer_procs])[0]
                   for i in range(min(setup.writer_procs, setup.sessions))]
        for pipe in writers:
            _expect(pipe, "ready", 120)
    t0 = time.monotonic() + 0.3
    for pipe in writers:
        pipe.send(("go", t0))
    if mode == "runs":
        start_runs(server, names, t0)
    # followers come once every session has more events than they replay
    deadline = time.monotonic() + max(10.0, 4 * (TAIL + 1) / setup.rate)
    while True:
        time.sleep(0.25)
        counts = []
        for pipe in writers:
            pipe.send(("status",))
            counts.append(_expect(pipe, "status", 30))
        if (sum(int(c[0]) for c in counts) == setup.sessions and min(int(c[1]) for c in counts) > TAIL) \
                or time.monotonic() > deadline:
            break
    paths = [(s, f"/v1/projects/{PROJECT}/sessions/{s}/events?tail={TAIL}" if gateway else f"/sub/{s}")
             for s in names for _ in range(setup.followers)]
    followers = [_fork(follower_process, server.port, paths[i:: setup.follower_procs], server.live_marker)[0]
                 for i in range(min(setup.follower_procs, len(paths)))]
    for pipe in followers:
        _expect(pipe, "ready", 300)
    time.sleep(0.2)  # a replay that follows the handshake (Nchan) is not the window's
    ready = time.monotonic()
    cpu0 = server.cpu_seconds()
    end = ready + setup.seconds
    for pipe in writers:
        pipe.send(("end", end))
    time.sleep(max(0.0, end - time.monotonic()))
    cpu = server.cpu_seconds() - cpu0
    sent_of: dict[str, bytes] = {}
    lags, sent_in, answered, due, unacked, errors, writer_cpu, writing = array("d"), 0, 0, 0, 0, [], 0.0, 0
    index = {s: i for i, s in enumerate(names)}
    results = []
    for pipe in writers:
        part, cpu_w = _expect(pipe, "result", 120)
        writer_cpu += float(cpu_w)  # type: ignore[arg-type]
        results += part  # type: ignore[operator]
    # a run's events have no answer: the stored ones are those the gateway's log holds once it settles
    stored = stored_ticks(server, names) if mode == "runs" else {}
    for session, raw_sent, raw_lags, acked, answered_, errs in results:
        sent, lag = array("d", raw_sent), array("d", raw_lags)
        if session in stored:
            acked = min(len(sent), stored[session])
        sent_of[session] = sent[:acked].tobytes()  # answers come in order: the events stored
        lags.extend(lag)
        in_window = sum(1 for t in sent if t >= ready)  # late or not: what the writer got out
        sent_in += in_window
        answered += in_window if answered_ < 0 else answered_
        writing += in_window > 0
        unacked += len(sent) - acked
        errors += [f"{session}: {e}" for e in errs]
    for s in names:  # events due in the window: n with ready <= t0 + stagger + n/R < end
        first = t0 + index[s] / setup.sessions / setup.rate
        due += max(0, math.ceil((end - first) * setup.rate)) - max(0, math.ceil((ready - first) * setup.rate))
    latencies, sent_at, lost, dup, deliveries, replayed, follower_cpu = array("d"), array("d"), 0, 0, 0, [], 0.0
    for pipe in followers:
        pipe.send(("done", (ready, end), sent_of))
    for pipe in followers:
        if not pipe.poll(DRAIN + 120):
            raise RuntimeError("a follower process did not report")
        raw, raw_sent, lost_, dup_, delivered, replayed_, cpu_f = pipe.recv()
        latencies.frombytes(raw)
        sent_at.frombytes(raw_sent)
        lost, dup, deliveries = lost + lost_, dup + dup_, deliveries + delivered
        replayed += replayed_
        follower_cpu += cpu_f
    live = sorted(lat for t, lat in zip(sent_at, latencies, strict=True) if t >= ready)
    connecting = sorted(lat for t, lat in zip(sent_at, latencies, strict=True) if t < ready)
    return Result(server.name, mode, setup.sessions, setup.followers, setup.rate, end - ready, due, answered, sent_in,
                  array("d", live), array("d", connecting), array("d", sorted(lags)), lost, dup, deliveries, cpu,
                  writer_cpu, follower_cpu, (min(replayed, default=0), int(statistics.median(replayed or [0]))),
                  unacked, tuple(errors), writing, timeline(sent_at, latencies, ready))


SLICE = 0.25
"""Seconds per slice of `--timeline`."""


class Slice(NamedTuple):
    start: float  # s, from the window's start (negative: while the followers connected)
    events: int
    p50: float  # ms
    p99: float
    max: float


def timeline(sent_at: array[float], latencies: array[float], ready: float) -> tuple[Slice, ...]:
    """Latency by when the event was sent, in `SLICE`s from the window's start: where a tail comes from."""
    slices: dict[int, list[float]] = {}
    for t, lat in zip(sent_at, latencies, strict=True):
        slices.setdefault(math.floor((t - ready) / SLICE), []).append(lat)
    out = []
    for k in sorted(slices):
        lats = sorted(slices[k])
        out.append(Slice(k * SLICE, len(lats), percentile(lats, 0.5) * 1000, percentile(lats, 0.99) * 1000,
                         lats[-1] * 1000))
    return tuple(out)


def measure(server_name: str, setup: Setup, workdir: Path, workers: int, fsync: str) -> Result:
    """Start the server (and the runner, for runs), run the load, stop them."""
    runner: list[Connection] = []
    procs: list[object] = []
    env = {"GATEWAY_WORKERS": str(workers), "GATEWAY_FSYNC": fsync}
    if server_name == "gateway" and setup.writer == "runs":
        port = free_port()
        for _ in range(setup.writer_procs):
            pipe, proc = _fork(runner_process, port, setup.rate, setup.sessions)
            _expect(pipe, "ready", 60)
            runner.append(pipe)
            procs.append(proc)
        env["GATEWAY_RUNNER_URL"] = f"http://127.0.0.1:{port}/"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server = start(server_name, workdir)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        return one_run(server, setup, runner or None)
    finally:
        server.stop()
        for proc in procs:
            proc.terminate()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Report


def med(results: Sequence[Result], value: Callable[[Result], float]) -> float:
    return statistics.median(value(r) for r in results)


def row(rs: Sequence[Result]) -> list[str]:
    r0 = rs[0]
    return [r0.server, r0.writer, str(r0.sessions),
            f"{med(rs, lambda r: r.rate_kept):,.0f} of {r0.due / r0.seconds:,.0f} ({med(rs, lambda r: r.kept):.0%}"
            + (f"; {min(r.writing for r in rs)} of {r0.sessions} sessions written)"
               if min(r.writing for r in rs) < r0.sessions else ")"),
            f"{med(rs, lambda r: r.ms(0.5)):.1f} / {med(rs, lambda r: r.ms(0.99)):.1f} / "
            f"{med(rs, lambda r: r.ms(0.999)):.1f}",
            f"{med(rs, lambda r: r.connecting_ms(0.99)):.0f} / {med(rs, lambda r: r.connecting_ms(1.0)):.0f}",
            f"{sum(r.lost for r in rs)} / {sum(r.dup for r in rs)}"
            + (f" ({sum(r.unacked for r in rs)} unanswered)" if any(r.unacked for r in rs) else ""),
            f"{med(rs, lambda r: r.lag_ms(0.99)):.0f} / {med(rs, lambda r: r.lag_ms(1.0)):.0f}",
            f"{med(rs, lambda r: r.cpu / r.seconds):.2f}",
            f"{med(rs, lambda r: r.us_per_append):.0f}", f"{med(rs, lambda r: r.us_per_delivery):.1f}",
            f"{min(r.replayed[0] for r in rs)}"]


COLUMNS = ["server", "writer", "S", "appends/s kept of asked", "p50 / p99 / p99.9 ms",
           "while connecting: p99 / max ms", "lost / dup",
           "writer lag p99 / max ms", "server CPU (cores)", "server CPU per append (us)",
           "per delivery (us)", "fewest replayed"]


def holds(rs: Sequence[Result]) -> bool:
    return med(rs, lambda r: r.kept) >= 0.95 and med(rs, lambda r: r.ms(0.99)) <= 100


def plot_p99(path: Path, results: dict[str, dict[int, list[Result]]], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"not writing {path}: matplotlib is missing (pip install -e '.[bench]')", file=sys.stderr)
        return False
    plt.rcParams["svg.fonttype"] = "none"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, by_s in results.items():
        xs = sorted(by_s)
        line, = ax.plot(xs, [med(by_s[s], lambda r: r.ms(0.99)) for s in xs], marker="o", label=f"{name}: window")
        ax.plot(xs, [med(by_s[s], lambda r: r.connecting_ms(0.99)) for s in xs], marker="x", linestyle="--",
                color=line.get_color(), label=f"{name}: while the followers connect")
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("sessions (S)")
    ax.set_ylabel("p99 latency, writer to follower (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200, help="S (without --sweep)")
    parser.add_argument("--sweep", help="S1,S2,...: every S, each server")
    parser.add_argument("--followers", type=int, default=2, help="F per session")
    parser.add_argument("--rate", type=float, default=20, help="R events/s per writer")
    parser.add_argument("--seconds", type=float, default=10, help="the measured window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writer", choices=("ws", "post", "stream", "runs"), default="ws")
    parser.add_argument("--inflight", type=int, default=1, help="ws: unanswered appends a writer may have (0: any)")
    parser.add_argument("--servers", default="gateway,nchan")
    parser.add_argument("--workers", type=int, default=1, help="the gateway's serve --workers")
    parser.add_argument("--fsync", choices=("always", "never"), default="always", help="GATEWAY_FSYNC")
    parser.add_argument("--writer-procs", type=int, default=4)
    parser.add_argument("--follower-procs", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--section", default="", help="added to the results section's title, so that "
                        "runs of other settings (--workers, --writer) keep sections of their own")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--timeline", action="store_true", help="print each run's latency by send time, in "
                        f"{SLICE:g} s slices from the window's start (the connection storm is before 0)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    DATA.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sweep.split(",")] if args.sweep else [args.sessions]
    names = available(args.servers.split(","))
    load0 = os.getloadavg()[0]
    results: dict[str, dict[int, list[Result]]] = {name: {s: [] for s in sizes} for name in names}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for size in sizes:
            setup = Setup(size, args.followers, args.rate, args.seconds, args.writer, args.inflight,
                          args.writer_procs, args.follower_procs)
            for i in range(args.rounds):
                for name in names:
                    print(f"S={size} round {i + 1}: {name} ({writer_of(name, args.writer)} writers) ...",
                          file=sys.stderr)
                    r = measure(name, setup, Path(tmp) / f"{name}-{size}-{i}", args.workers, args.fsync)
                    print(f"  {r.line()}", file=sys.stderr)
                    if args.timeline:
                        for sl in r.slices:
                            if sl.start < 1 or sl.max > 50:
                                print(f"    {sl.start:+6.2f} s: {sl.events:6d} events, p50/p99/max "
                                      f"{sl.p50:.1f}/{sl.p99:.1f}/{sl.max:.1f} ms", file=sys.stderr)
                    results[name][size].append(r)
    load1 = os.getloadavg()[0]
    rows = [row(results[name][size]) for size in sizes for name in names]
    command = (f"`python bench/sessions.py {'--sweep ' + args.sweep if args.sweep else f'--sessions {args.sessions}'}"
               f" --followers {args.followers} --rate {args.rate:g} --seconds {args.seconds:g} --rounds {args.rounds}"
               f" --writer {args.writer}" + (f" --inflight {args.inflight}" if args.writer == "ws" else "")
               + f" --workers {args.workers} --fsync {args.fsync}`")
    intro = (f"S sessions x {args.followers} WebSocket followers (each replays the last {TAIL} events, then "
             f"follows), one writer per session paced at {args.rate:g} events/s ({args.writer} writers for the "
             f"gateway, GATEWAY_FSYNC={args.fsync}, {args.workers} worker(s)); {args.seconds:g} s windows, "
             f"{args.rounds} round(s) alternating the servers, medians (lost / dup: sums). Latency from the "
             f"writer's send to a follower's receipt, over the events sent in the window (all followers "
             f"connected); \"while connecting\": over those sent after a follower's TCP connection opened and "
             f"before the window, while the {args.followers} x S followers connected (their handshakes and replays). "
             f"{os.cpu_count()} cores shared by server, writers and followers; load average {load0:.1f} when "
             f"the run began, {load1:.1f} at its end. {command}.")
    if args.sweep:
        best = []
        for name in names:
            kept = [s for s in sizes if holds(results[name][s])]
            best.append(f"{name} {max(kept) if kept else 'none of ' + args.sweep}")
        intro += (" Largest S kept at >= 95% of the appends asked with p99 <= 100 ms: " + ", ".join(best) + ".")
    report(args.out, f"{SECTION}{': ' + args.section if args.section else ''}", intro, COLUMNS, rows)
    if args.plot is not None:
        plot_p99(args.plot, results, f"{args.followers} followers per session, {args.rate:g} events/s per writer "
                 f"({args.writer} writers, fsync={args.fsync}, {args.workers} worker(s))")


if __name__ == "__main__":
    main()
