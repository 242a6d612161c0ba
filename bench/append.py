"""Append throughput with durable writes: group commit against one fsync per append, same run;
then streaming appends against one request per event, same server, same run.

    python bench/append.py [--writers 16] [--seconds 5] [--part all|requests|streaming] [--out docs/benchmarks.md]

Each server gets the same load: `--writers` concurrent HTTP clients appending one small event per
request to the same session for `--seconds`. Servers:
- gateway (fsync=always): a 201 means on disk; concurrent appends share one fsync.
- naive (fsync per append): the same request, written and fsynced one by one under a lock.
- gateway (fsync=never): no durability, the upper bound of the HTTP path.

Streaming part: one gateway with GATEWAY_FSYNC=always, `--stream-writers` (64) concurrent writers,
each on its own session, in alternating rounds: every writer holds one `POST ...?stream=1` open for
the round and sends NDJSON as fast as the connection takes it; then every writer POSTs one event per
request. Events/s counts what the 201 answers acknowledged (stored and fsynced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, free_port, report, wait_port

NAIVE = textwrap.dedent('''
    import asyncio, json, os, sys
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    lock = asyncio.Lock()
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async def append(request):
        event = json.loads(await request.body())
        async with lock:
            os.write(fd, json.dumps(event).encode() + b"\\n")
            os.fsync(fd)
        return JSONResponse({"count": 1}, status_code=201)
    app = Starlette(routes=[Route("/v1/projects/bench/sessions/bench/events", append, methods=["POST"])])
    if __name__ == "__main__":
        import uvicorn
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')


async def load(url: str, writers: int, seconds: float) -> tuple[int, list[float]]:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    body = b'{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":"a few words of a streamed answer"}'

    async def writer(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            resp = await http.post(url, content=body, headers={"content-type": "application/json"})
            assert resp.status_code == 201, resp.text
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=writers)) as http:
        await asyncio.gather(*(writer(http) for _ in range(writers)))
    return len(latencies), sorted(latencies)


def run(kind: str, workdir: Path, writers: int, seconds: float) -> tuple[float, float, float]:
    port = free_port()
    state = workdir / kind
    state.mkdir()
    if kind == "naive":
        script = workdir / "naive_append.py"
        script.write_text(NAIVE)
        proc = subprocess.Popen([sys.executable, str(script), str(state / "log.jsonl"), str(port)])
    else:
        env = {**os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_PORT": str(port),
               "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_FSYNC": "never" if kind.endswith("never") else "always"}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    try:
        wait_port(port, proc)
        url = f"http://127.0.0.1:{port}/v1/projects/bench/sessions/bench/events"
        count, latencies = asyncio.run(load(url, writers, seconds))
        fsyncs = None
        if kind == "gateway-always":
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            fsyncs = float(next(line.split()[1] for line in text.splitlines()
                                if line.startswith("gateway_fsync_seconds_count")))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    per_append = (fsyncs / count) if fsyncs is not None else (1.0 if kind == "naive" else 0.0)
    return (count / seconds, latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000,
            per_append)


def fsync_ms(directory: Path) -> float:
    """What one small write + fsync costs on this disk: group commit pays off as this grows."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        started = time.perf_counter()
        for _ in range(200):
            os.write(fd, b"x" * 100 + b"\n")
            os.fsync(fd)
        return (time.perf_counter() - started) / 200 * 1000
    finally:
        os.close(fd)
        path.unlink()


EVENT = b'{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":"a few words of a streamed answer"}\n'


class Http:
    """A bare HTTP/1.1 keep-alive connection: httpx spends more CPU per request than the server at 64
    connections, which would measure the client; this costs next to nothing per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def connect(cls, port: int) -> Http:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    def head(self, path: str, media: str, length: int | None) -> bytes:
        size = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
        host = f"127.0.0.1:{self.port}"
        return f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {media}\r\n{size}\r\n\r\n".encode()

    async def answer(self) -> tuple[int, bytes]:
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def streaming_round(port: int, writers: int, seconds: float, rnd: int) -> float:
    """Events/s stored by `writers` streaming appends (one session each) held open for `seconds`."""
    chunk = EVENT * 64
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    stored: list[int] = []

    async def writer(w: int) -> None:
        http = await Http.connect(port)
        http.writer.write(http.head(f"/v1/projects/bench/sessions/s{rnd}-{w}/events?stream=1",
                                    "application/x-ndjson", None))
        while time.monotonic() < deadline:
            http.writer.write(frame)
            await http.writer.drain()
        http.writer.write(b"0\r\n\r\n")
        status, body = await http.answer()
        assert status == 201, body
        stored.append(orjson.loads(body)["count"])
        http.close()

    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return sum(stored) / (time.monotonic() - started)


async def requests_round(port: int, writers: int, seconds: float, rnd: int) -> float:
    """Events/s stored by `writers` clients POSTing one event per request (one session each)."""
    deadline = time.monotonic() + seconds
    count = 0

    async def writer(w: int) -> None:
        nonlocal count
        http = await Http.connect(port)
        request = http.head(f"/v1/projects/bench/sessions/r{rnd}-{w}/events", "application/json", len(EVENT)) + EVENT
        while time.monotonic() < deadline:
            http.writer.write(request)
            status, body = await http.answer()
            assert status == 201, body
            count += 1
        http.close()

    started = time.monotonic()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return count / (time.monotonic() - started)


def fsync_count(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("gateway_fsync_seconds_count")))


def streaming(workdir: Path, writers: int, seconds: float, rounds: int, out: Path | None) -> None:
    port = free_port()
    env = {**os.environ, "GATEWAY_STATE_DIR": str(workdir / "streaming"), "GATEWAY_PORT": str(port),
           "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_FSYNC": "always"}
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    rates: dict[str, list[float]] = {"streaming": [], "requests": []}
    try:
        wait_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        for rnd in range(rounds):
            for kind, measure in (("streaming", streaming_round), ("requests", requests_round)):
                rate = asyncio.run(measure(port, writers, seconds, rnd))
                rates[kind].append(rate)
                print(f"round {rnd + 1} {kind}: {rate:,.0f} events/s", file=sys.stderr)
        fsyncs = fsync_count(base)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    med = {kind: statistics.median(values) for kind, values in rates.items()}
    rows = [[label, f"{med[kind]:,.0f}", " / ".join(f"{v:,.0f}" for v in rates[kind]),
             f"{med[kind] / med['requests']:.1f}"]
            for kind, label in (("streaming", f"{writers} streaming appends (`?stream=1`), one per session"),
                                ("requests", f"{writers} writers, one POST per event, one session each"))]
    intro = (f"One gateway with `GATEWAY_FSYNC=always` (every acknowledged event is on disk), {writers} concurrent "
             f"writers, {rounds} rounds of {seconds:g} s alternating between the two ways of appending; events of "
             f"{len(EVENT)} bytes; {fsyncs:,.0f} fsyncs in all. Machine load (1-min average) {load_before:.1f} before "
             f"the run, {os.getloadavg()[0]:.1f} after, on 2 cores: the client (one Python process) shares them.")
    report(out, "Streaming appends (bench/append.py)", intro,
           ["writers", "events/s stored (median)", "rounds", "ratio to one POST per event"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stream-writers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=("all", "requests", "streaming"), default="all")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "streaming"):
        with tempfile.TemporaryDirectory(dir=DATA) as tmp:
            streaming(Path(tmp), args.stream_writers, args.seconds, args.rounds, args.out)
    if args.part == "streaming":
        return
    results = {}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        probe = fsync_ms(Path(tmp))
        for kind in ("naive", "gateway-always", "gateway-never"):
            print(f"measuring {kind} ...", file=sys.stderr)
            results[kind] = run(kind, Path(tmp), args.writers, args.seconds)
    naive = results["naive"][0]
    labels = {"naive": "naive: fsync per append", "gateway-always": "gateway, fsync=always (group commit)",
              "gateway-never": "gateway, fsync=never"}
    rows = [[labels[k], f"{rate:.0f}", f"{rate / naive:.2f}", f"{p50:.1f}", f"{p99:.1f}", f"{fs:.2f}"]
            for k, (rate, p50, p99, fs) in results.items()]
    intro = (f"{args.writers} concurrent HTTP writers, one small event per request, {args.seconds:g} s each, same "
             f"session. One write + fsync costs {probe:.2f} ms on this disk (measured in the same run): when that "
             "is small the HTTP path, not the disk, sets the pace, and group commit shows in the fsyncs per append "
             "rather than in the rate.")
    report(args.out, "Append throughput (bench/append.py)", intro,
           ["server", "appends/s", "ratio to naive", "p50 latency (ms)", "p99 latency (ms)", "fsyncs per append"],
           rows)


if __name__ == "__main__":
    main()
