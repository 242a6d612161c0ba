"""Compact view: a 200 MB session of realistic runs read raw and compact, cold and warm sidecar,
and opened for the first time after its runs were appended through the gateway.

One WebSocket client reads the session until the `live` control, and counts the bytes and events
it received. `raw` is the plain replay; `compact cold` deletes the sidecar before each read (so
the read includes compacting every finished run); `compact warm` reads with the sidecar in place;
`first open` appends the session run by run to a gateway whose background builder keeps the cache
(a second gateway without it takes the same appends, for the append rates with and without), then
opens it. Reads alternate between the kinds, round by round; the median of each kind is reported.

    python bench/compact.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from gateway.stream.sidecar import SIDECAR_NAME, read_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.browser: the CDP driver
from common import DATA, batch_events, dataset, free_port, report, text_frames, wait_port

WORDS = [
    "the", "gateway", "streams", "each", "event", "of", "a", "session", "log", "to", "every", "client",
    "that", "asks", "resuming", "exactly", "where", "it", "left", "off", "tokens", "arrive", "few",
    "characters", "at", "time", "tool", "calls", "carry", "arguments", "in", "small", "pieces", "and",
    "state", "changes", "by", "patches",
]


def run_events(rng: random.Random, r: int, ts: int, finished: bool = True) -> list[bytes]:
    """One agent turn as a runner streams it: a user message, an answer in token-sized deltas, a
    tool call with streamed arguments and its result, state patches, a second answer."""
    def uid() -> str:  # runners name runs, messages and tool calls with UUIDs
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    run_id, out = uid(), []

    def add(event: dict[str, object]) -> None:
        nonlocal ts
        ts += rng.randint(5, 40)
        out.append(orjson.dumps({**event, "timestamp": ts}))

    def answer(mid: str, tokens: int) -> None:
        add({"type": "TEXT_MESSAGE_START", "messageId": mid, "role": "assistant"})
        for _ in range(tokens):
            word = rng.choice(WORDS)
            add({"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": " " + word[: rng.randint(2, 6)]})
        add({"type": "TEXT_MESSAGE_END", "messageId": mid})

    add({"type": "RUN_STARTED", "threadId": "bench", "runId": run_id})
    user, first, second = uid(), uid(), uid()
    add({"type": "TEXT_MESSAGE_START", "messageId": user, "role": "user"})
    add({"type": "TEXT_MESSAGE_CONTENT", "messageId": user,
         "delta": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))})
    add({"type": "TEXT_MESSAGE_END", "messageId": user})
    add({"type": "STATE_SNAPSHOT", "snapshot": {"run": r, "steps": [], "status": "thinking"}})
    answer(first, rng.randint(150, 900))
    call = uid()
    add({"type": "TOOL_CALL_START", "toolCallId": call, "toolCallName": "search_docs", "parentMessageId": first})
    args = orjson.dumps({"query": " ".join(rng.choice(WORDS) for _ in range(8)), "limit": 5}).decode()
    for i in range(0, len(args), 4):
        add({"type": "TOOL_CALL_ARGS", "toolCallId": call, "delta": args[i : i + 4]})
    add({"type": "TOOL_CALL_END", "toolCallId": call})
    add({"type": "TOOL_CALL_RESULT", "messageId": uid(), "toolCallId": call, "role": "tool",
         "content": " ".join(rng.choice(WORDS) for _ in range(40))})
    for step in range(rng.randint(2, 6)):
        add({"type": "STATE_DELTA", "delta": [{"op": "add", "path": "/steps/-", "value": f"step {step}"}]})
    add({"type": "STATE_DELTA", "delta": [{"op": "replace", "path": "/status", "value": "answering"}]})
    answer(second, rng.randint(150, 900))
    if finished:
        add({"type": "RUN_FINISHED", "threadId": "bench", "runId": run_id})
    return out


def make_session(path: Path, megabytes: int) -> tuple[int, int]:
    """Write the session; returns (events, runs). The last run is still going."""
    rng = random.Random(13)
    size = events = r = 0
    ts = 1_764_000_000_000
    with open(path, "wb") as fh:
        while size < megabytes * 1_000_000:
            lines = run_events(rng, r, ts)
            ts += 60_000
            data = b"\n".join(lines) + b"\n"
            fh.write(data)
            size, events, r = size + len(data), events + len(lines), r + 1
        lines = run_events(rng, r, ts, finished=False)[:40]
        fh.write(b"\n".join(lines) + b"\n")
    return events + len(lines), r


async def read_until_live(url: str) -> tuple[float, int, int]:
    """Seconds to the `live` control, bytes and events received."""
    nbytes = events = 0
    started = time.perf_counter()
    async for frame in text_frames(url):
        nbytes += len(frame)  # characters: the generated session is ASCII
        for line in frame.split("\n"):
            if line.startswith('{"first":'):
                events += batch_events(line)
            elif line.startswith('{"control":"live"'):
                return time.perf_counter() - started, nbytes, events
    raise RuntimeError("stream ended before live")


def last_message_id(log: Path) -> str:
    with open(log, "rb") as fh:
        fh.seek(max(0, log.stat().st_size - 1_000_000))
        tail = fh.read()
    starts = [line for line in tail.splitlines() if b'"TEXT_MESSAGE_START"' in line]
    return str(orjson.loads(starts[-1])["messageId"])


async def viewer_seconds(base: str, view: str, last_id: str, profile: Path, limit: float,
                         session: str = "bench") -> float | None:
    """Seconds from opening the session in the viewer (headless Chromium) until the stream is live
    and its last message is on screen; None past `limit` seconds."""
    from tests.browser.cdp import CHROMIUM, open_page  # the test suite's small CDP driver

    async with open_page(CHROMIUM, profile) as page:
        await page.goto(base + "/")
        await page.eval(f"localStorage.setItem('agui-view', '{view}')")
        await page.goto(base + "/")
        started = time.perf_counter()
        await page.eval(f"location.hash = '#/bench/{session}'")
        try:
            await page.wait_for(
                "(() => { const m = [...document.querySelectorAll('[data-message-id]')].pop(); "
                "const r = m && m.getBoundingClientRect(); "
                "return document.getElementById('status').dataset.state === 'live' && "
                f"m.dataset.messageId === '{last_id}' && r.bottom > 0 && r.bottom <= innerHeight + 1; }})()",
                seconds=limit)
        except AssertionError:
            return None
        return time.perf_counter() - started


def split_runs(log: Path) -> list[bytes]:
    """The log as a runner appends it: one NDJSON body per run (the last one unfinished)."""
    data = log.read_bytes()
    bodies, start = [], 0
    for line_end in iter_run_ends(data):
        bodies.append(data[start:line_end])
        start = line_end
    return [*bodies, data[start:]]


def iter_run_ends(data: bytes) -> list[int]:
    ends, i = [], data.find(b'"type":"RUN_FINISHED"')
    while i != -1:
        ends.append(data.index(b"\n", i) + 1)
        i = data.find(b'"type":"RUN_FINISHED"', ends[-1])
    return ends


@dataclass
class Ingest:
    seconds: float
    latencies: list[float]
    epoch: str


async def ingest(base: str, session: str, bodies: list[bytes]) -> Ingest:
    """DELETE the session, then POST its runs one after the other, as one runner would."""
    url = f"{base}/v1/projects/bench/sessions/{session}/events"
    latencies = []
    async with httpx.AsyncClient(timeout=120) as http:
        await http.delete(url)
        started = time.perf_counter()
        for body in bodies:
            t = time.perf_counter()
            resp = await http.post(url, content=body, headers={"content-type": "application/x-ndjson"})
            latencies.append(time.perf_counter() - t)
            assert resp.status_code == 201, resp.text
        return Ingest(time.perf_counter() - started, latencies, resp.json()["last"].split("-")[0])


def covered(path: Path, epoch: str, lines: int, end: int) -> int:
    """The last seq the sidecar's whole records cover for this log (0: none)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        records, _ = read_records(fd, epoch, lines, end)
    finally:
        os.close(fd)
    return records[-1].last if records else 0


def caught_up(state: Path, session: str, epoch: str, bodies: list[bytes]) -> float:
    """Seconds until the gateway's builder has the session's finished runs in its cache."""
    lines, end = sum(b.count(b"\n") for b in bodies), sum(len(b) for b in bodies)
    target = lines - bodies[-1].count(b"\n")
    path = state / "sessions" / session / SIDECAR_NAME
    started = time.perf_counter()
    while covered(path, epoch, lines, end) < target:
        time.sleep(0.02)
    return time.perf_counter() - started


def start_gateway(state: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env={
        **os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_PORT": str(port), "GATEWAY_LOG_LEVEL": "warning",
        **env})
    wait_port(port, proc)
    return proc, port


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="session size in MB")
    parser.add_argument("--viewer-mb", type=int, default=50, help="size of the chat session opened in the viewer")
    parser.add_argument("--runs", type=int, default=5, help="rounds (one read of each kind per round)")
    parser.add_argument("--out", type=Path, help="write the results as markdown here")
    parser.add_argument("--viewer-timeout", type=float, default=120, help="give up on a viewer load after this")
    args = parser.parse_args()

    log = dataset(f"compact-{args.mb}mb.jsonl", lambda path: make_session(path, args.mb))
    chat = dataset(f"compact-{args.viewer_mb}mb.jsonl", lambda path: make_session(path, args.viewer_mb))
    bodies = split_runs(log)
    size_mb = log.stat().st_size / 1e6
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        on_state, off_state = Path(tmp) / "on", Path(tmp) / "off"
        session = off_state / "sessions" / "bench"
        session.mkdir(parents=True)
        os.link(log, session / "agui-events.jsonl")
        off, off_port = start_gateway(off_state, GATEWAY_COMPACT_SHARE="0")  # no builder: streams build
        on, on_port = start_gateway(on_state)
        try:
            base = f"ws://127.0.0.1:{off_port}/v1/projects/bench/sessions/bench/events"
            fresh = f"ws://127.0.0.1:{on_port}/v1/projects/bench/sessions/fresh/events"
            on_http, off_http = f"http://127.0.0.1:{on_port}", f"http://127.0.0.1:{off_port}"
            asyncio.run(read_until_live(base + "?view=raw"))  # warm-up: indexes the log, fills the page cache
            sidecar = session / SIDECAR_NAME
            results: dict[str, list[tuple[float, int, int]]] = {
                "raw": [], "compact, cold sidecar": [], "compact, warm sidecar": [],
                "compact, first open (runs appended through the gateway)": [],
                "compact, second open of that session": []}
            ingests: dict[str, list[Ingest]] = {"builder on": [], "builder off": []}
            catch_up: list[float] = []
            for _ in range(args.runs):
                results["raw"].append(asyncio.run(read_until_live(base + "?view=raw")))
                sidecar.unlink(missing_ok=True)
                results["compact, cold sidecar"].append(asyncio.run(read_until_live(base + "?view=compact")))
                results["compact, warm sidecar"].append(asyncio.run(read_until_live(base + "?view=compact")))
                ingests["builder off"].append(asyncio.run(ingest(off_http, "fresh", bodies)))
                done = asyncio.run(ingest(on_http, "fresh", bodies))
                ingests["builder on"].append(done)
                catch_up.append(caught_up(on_state, "fresh", done.epoch, bodies))
                results["compact, first open (runs appended through the gateway)"].append(
                    asyncio.run(read_until_live(fresh + "?view=compact")))
                results["compact, second open of that session"].append(
                    asyncio.run(read_until_live(fresh + "?view=compact")))
            asyncio.run(ingest(on_http, "fresh", bodies))
            at_once = asyncio.run(read_until_live(fresh + "?view=compact"))[0]  # the builder still behind
            sidecar_mb = sidecar.stat().st_size / 1e6
            text_mb = sum(len(orjson.loads(line)["delta"].encode()) for line in sidecar.read_bytes().splitlines()
                          if line.startswith(b'{"type":"TEXT_MESSAGE_CONTENT"')) / 1e6
            last_id = last_message_id(log)
            viewer = {view: asyncio.run(viewer_seconds(off_http, view, last_id, Path(tmp) / f"profile-{view}",
                                                       args.viewer_timeout))
                      for view in ("compact", "raw")}
            chat_bodies = split_runs(chat)
            chat_in = asyncio.run(ingest(on_http, "chat", chat_bodies))
            caught_up(on_state, "chat", chat_in.epoch, chat_bodies)
            first_view = asyncio.run(viewer_seconds(on_http, "compact", last_message_id(chat),
                                                    Path(tmp) / "profile-first", args.viewer_timeout, "chat"))
        finally:
            for proc in (on, off):
                proc.terminate()
                proc.wait(timeout=30)
    load_after = os.getloadavg()[0]
    _, raw_bytes, raw_events = results["raw"][0]
    warm = statistics.median(r[0] for r in results["compact, warm sidecar"])
    first_second = [a[0] / b[0] for a, b in zip(results["compact, first open (runs appended through the gateway)"],
                                                 results["compact, second open of that session"], strict=True)]
    rows = []
    for kind, reads in results.items():
        secs = statistics.median(r[0] for r in reads)
        _, nbytes, events = reads[0]
        ratios = [raw[0] / read[0] for raw, read in zip(results["raw"], reads, strict=True)]
        speedup = f"{statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f})"
        rows.append([kind, f"{secs * 1000:.0f}", speedup, f"{secs / warm:.2f}", f"{nbytes / 1e6:.1f}",
                     f"{100 * nbytes / raw_bytes:.1f}%", f"{events:,}", f"{100 * events / raw_events:.2f}%"])
    intro = (f"A generated {size_mb:.0f} MB session of realistic runs ({raw_events:,} events: token-sized text "
             f"deltas, streamed tool arguments, state patches; the last run still going) read by one WebSocket "
             f"client until the `live` control, {args.runs} rounds alternating between the kinds (median time; "
             f"speed-up: median of the rounds' ratios to raw, range in brackets; of warm: median time over the "
             f"warm median), {os.cpu_count()} cores shared with other work (load average {load_before:.1f} before, "
             f"{load_after:.1f} after), client and server on the same machine. Raw, cold and warm read a gateway "
             f"without the background builder (`GATEWAY_COMPACT_SHARE=0`), the sidecar deleted before each cold "
             f"read; the first open reads a gateway with the builder at its default share (0.25 of a core), after "
             f"the session's {len(bodies):,} runs were appended to it one POST per run, as a runner does, and its "
             f"builder caught up ({statistics.median(catch_up):.1f} s after the last append, median: the whole "
             f"{size_mb:.0f} MB arrived in {statistics.median(i.seconds for i in ingests['builder on']):.1f} s, "
             f"far faster than runs finish in a real session). Opened at once after such a bulk ingest, "
             f"with the builder still behind, the first compact open took {at_once * 1000:.0f} ms (the stream "
             f"waits at most one slice of the builder's, then builds the rest itself). The sidecar holds "
             f"{sidecar_mb:.1f} MB. Targets: "
             f"compact bytes at most 5% of raw; warm time to `live` at most 1/20 of raw; first open within 2x of "
             f"warm (the first open over the second open of the same session, round by round: median "
             f"{statistics.median(first_second):.2f}, range {min(first_second):.2f}-{max(first_second):.2f}). "
             f"The text of the messages alone is {text_mb:.1f} MB ({100 * text_mb / size_mb:.1f}% of "
             f"the raw bytes: a token-sized delta carries a few bytes of text in an event of about "
             f"{1e6 * size_mb / raw_events:.0f} bytes), so no form that keeps the text gets much smaller; the rest "
             f"is the events kept as they are (run, message and tool call boundaries, tool results, state). The "
             f"warm read is bound by the client taking the bytes, so its speed-up follows the byte ratio "
             f"({raw_bytes / results['compact, warm sidecar'][0][1]:.0f}x) and the machine's drift.")
    for view, secs in viewer.items():
        shown = f"{secs:.2f} s" if secs is not None else f"over {args.viewer_timeout:.0f} s"
        intro += (f"\n\nViewer in headless Chromium, {view} view (warm sidecar): live with the last message on "
                  f"screen after {shown}.")
    shown = f"{first_view:.2f} s" if first_view is not None else f"over {args.viewer_timeout:.0f} s"
    intro += (f"\n\nViewer in headless Chromium, compact view, first open of a {chat.stat().st_size / 1e6:.0f} MB "
              f"chat session ({len(chat_bodies):,} runs appended through the gateway, one POST each, a fresh "
              f"browser profile): live with the last message on screen after {shown}.")
    on_rate = [size_mb / i.seconds for i in ingests["builder on"]]
    off_rate = [size_mb / i.seconds for i in ingests["builder off"]]
    ratios = [a / b for a, b in zip(on_rate, off_rate, strict=True)]
    def latency(kind: str, q: float) -> str:
        return f"{1000 * statistics.median(pct(i.latencies, q) for i in ingests[kind]):.1f} ms"

    intro += (f"\n\nAppends with and without the builder, same run, alternating rounds: the {size_mb:.0f} MB "
              f"session appended one POST per run (`GATEWAY_FSYNC=always`), {statistics.median(on_rate):.1f} MB/s "
              f"({statistics.median(on_rate) * raw_events / size_mb:,.0f} events/s) with the builder (p50 "
              f"{latency('builder on', 0.5)}, p99 {latency('builder on', 0.99)} per POST) and "
              f"{statistics.median(off_rate):.1f} MB/s ({statistics.median(off_rate) * raw_events / size_mb:,.0f} "
              f"events/s) without (p50 {latency('builder off', 0.5)}, p99 "
              f"{latency('builder off', 0.99)}): {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}).")
    report(args.out, "Compact view (bench/compact.py)", intro,
           ["read", "time to live (ms)", "speed-up", "of warm", "MB received", "of raw", "events", "of raw"], rows)


if __name__ == "__main__":
    main()
