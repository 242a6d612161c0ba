"""Append throughput with durable writes: group commit against one fsync per append, same run.

    python bench/append.py [--writers 16] [--seconds 5] [--out docs/benchmarks.md]

Each server gets the same load: `--writers` concurrent HTTP clients appending one small event per
request to the same session for `--seconds`. Servers:
- gateway (fsync=always): a 201 means on disk; concurrent appends share one fsync.
- naive (fsync per append): the same request, written and fsynced one by one under a lock.
- gateway (fsync=never): no durability, the upper bound of the HTTP path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
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
