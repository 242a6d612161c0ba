"""Live fan-out: many WebSocket followers of one session, end-to-end latency append -> receive.

    python bench/fanout.py [--followers 200] [--events 300] [--out docs/benchmarks.md]

One writer appends one event every 10 ms; every follower receives every event. The latency of an
event is measured from just before its append request to its arrival at each follower (all in one
client process, so the clocks agree). Baseline, in the same run: a bare broadcaster that keeps the
followers in memory and sends each appended event to all of them at once, with no log, no cursor
and no disk: the least work a server can do for the same result.
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
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, free_port, report, wait_port

BROADCASTER = textwrap.dedent('''
    import sys
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    followers = set()
    async def follow(ws):
        await ws.accept()
        followers.add(ws)
        try:
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            followers.discard(ws)
    async def append(request):
        frame = (await request.body()).decode()
        for ws in list(followers):
            await ws.send_text(frame)
        return JSONResponse({"count": 1}, status_code=201)
    app = Starlette(routes=[WebSocketRoute("/ws", follow), Route("/append", append, methods=["POST"])])
    if __name__ == "__main__":
        import uvicorn
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ws="websockets-sansio",
                    ws_per_message_deflate=False, log_level="warning")
''')


async def run_load(ws_url: str, append_url: str, followers: int, events: int) -> list[float]:
    latencies: list[float] = []
    sent: dict[int, float] = {}
    done = asyncio.Event()
    remaining = followers

    async def follower(ready: asyncio.Event) -> None:
        nonlocal remaining
        got = 0
        async with websockets.connect(ws_url, compression=None, max_size=None, open_timeout=60) as ws:
            ready.set()
            async for frame in ws:
                now = time.perf_counter()
                for line in str(frame).split("\n"):
                    obj = orjson.loads(line)
                    for event in obj.get("events", [obj] if "n" in obj else []):
                        latencies.append(now - sent[event["n"]])
                        got += 1
                if got >= events:
                    break
        remaining -= 1
        if remaining == 0:
            done.set()

    readies = [asyncio.Event() for _ in range(followers)]
    tasks = [asyncio.create_task(follower(r)) for r in readies]
    await asyncio.gather(*(r.wait() for r in readies))
    await asyncio.sleep(0.5)  # every follower is past its (empty) replay
    async with httpx.AsyncClient() as http:
        for n in range(events):
            body = orjson.dumps({"type": "CUSTOM", "name": "tick", "n": n})
            sent[n] = time.perf_counter()
            resp = await http.post(append_url, content=body, headers={"content-type": "application/json"})
            assert resp.status_code == 201
            await asyncio.sleep(0.01)
    await asyncio.wait_for(done.wait(), timeout=120)
    await asyncio.gather(*tasks)
    return latencies


def measure(kind: str, workdir: Path, followers: int, events: int) -> dict[str, float]:
    port = free_port()
    if kind == "broadcaster":
        script = workdir / "broadcaster.py"
        script.write_text(BROADCASTER)
        proc = subprocess.Popen([sys.executable, str(script), str(port)])
        ws_url, append_url = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}/append"
    else:
        env = {**os.environ, "GATEWAY_STATE_DIR": str(workdir / "state"), "GATEWAY_PORT": str(port),
               "GATEWAY_LOG_LEVEL": "warning"}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        base = f"127.0.0.1:{port}/v1/projects/bench/sessions/fanout/events"
        ws_url, append_url = f"ws://{base}", f"http://{base}"
    try:
        wait_port(port, proc)
        if kind == "gateway":  # the session must exist before followers connect
            httpx.post(append_url, json={"type": "RUN_STARTED", "threadId": "fanout", "runId": "r"})
            ws_url += "?tail=0"
        started_cpu = cpu_seconds(proc.pid)
        latencies = sorted(asyncio.run(run_load(ws_url, append_url, followers, events)))
        cpu = cpu_seconds(proc.pid) - started_cpu
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"p50": latencies[len(latencies) // 2] * 1000, "p99": latencies[int(len(latencies) * 0.99)] * 1000,
            "mean": statistics.fmean(latencies) * 1000, "cpu": cpu, "deliveries": len(latencies)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=200)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for kind in ("broadcaster", "gateway"):
            print(f"measuring {kind} ...", file=sys.stderr)
            results[kind] = measure(kind, Path(tmp), args.followers, args.events)
    base = results["broadcaster"]
    rows = [[k, f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['mean']:.1f}", f"{r['cpu']:.2f}",
             f"{r['cpu'] / base['cpu']:.2f}"] for k, r in results.items()]
    intro = (f"{args.followers} WebSocket followers of one session, {args.events} events appended one by one every "
             f"10 ms, {results['gateway']['deliveries']:.0f} deliveries; followers and writer in one client process "
             "on the same machine as the server.")
    report(args.out, "Live fan-out (bench/fanout.py)", intro,
           ["server", "p50 latency (ms)", "p99 latency (ms)", "mean (ms)", "server CPU (s)",
            "CPU ratio to broadcaster"], rows)


if __name__ == "__main__":
    main()
