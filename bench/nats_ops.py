"""What replicas on NATS share besides the logs, against the file store, in the same run.

    python bench/nats_ops.py [--sessions 2000] [--runs 20] [--mb 20] [--rounds 5] [--out FILE]

A gateway on the file store and two replicas on NATS. `--sessions` sessions get one event each
through the file gateway and through NATS replica A; the lists are then read from the file
gateway and from NATS replica B (which never opened those sessions): a first page of 20, a page
of 100, a search that matches one session (every entry is read) and the compatibility route's
newest-first page at offset 1000 (every entry is read). Then `--runs` runs per store against the
example runner (no delay), each waited for before the next: the time to the `202` (on NATS it
includes taking the session's run slot). Last, the compact view of a `--mb` MB session of
realistic runs, read until `live`: cold (the sidecar is deleted first, so the read builds it;
on NATS from a scratch copy read from JetStream) and warm. Rounds alternate the stores; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))
from common import dataset, free_port, report, wait_port  # noqa: E402
from compact import make_session, read_until_live  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_nats", HERE / "nats.py")
assert _spec is not None and _spec.loader is not None
bench_nats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_nats)

NDJSON = {"content-type": "application/x-ndjson"}
SIDECAR = "agui-events.compact"


async def timed(call: Callable[[], Awaitable[httpx.Response]]) -> float:
    started = time.perf_counter()
    resp = await call()
    assert resp.status_code in (200, 202), resp.text
    return (time.perf_counter() - started) * 1000


async def create_sessions(http: httpx.AsyncClient, base: str, n: int) -> None:
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            resp = await http.post(f"http://{base}/v1/projects/bench/sessions/s{i:05d}/events",
                                   content=b'{"type":"CUSTOM","name":"x","value":1}', headers=NDJSON)
            assert resp.status_code == 201, resp.text

    await asyncio.gather(*(worker() for _ in range(16)))


async def lists(http: httpx.AsyncClient, base: str) -> dict[str, float]:
    v1, compat = f"http://{base}/v1/projects/bench/sessions", f"http://{base}/api/projects/bench/agentic-sessions"
    return {
        "first page (20)": await timed(lambda: http.get(v1)),
        "page of 100": await timed(lambda: http.get(v1 + "?limit=100")),
        "search (1 match)": await timed(lambda: http.get(v1 + "?search=s01234")),
        "newest first, offset 1000": await timed(lambda: http.get(compat + "?limit=20&offset=1000")),
    }


def batches(data: bytes, size: int = 2 << 20) -> list[bytes]:
    """`data` (whole lines) cut after a line end about every `size` bytes: appends under max_payload."""
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n", min(start + size, len(data) - 1)) + 1 or len(data)
        out.append(data[start:end])
        start = end
    return out


async def one_run(http: httpx.AsyncClient, base: str, i: int) -> float:
    url = f"http://{base}/v1/projects/bench/sessions/r"
    body = {"threadId": "t", "runId": f"r{i}", "state": {}, "tools": [], "context": [], "forwardedProps": {},
            "messages": [{"id": f"u{i}", "role": "user", "content": "hi"}]}
    ms = await timed(lambda: http.post(url + "/runs", json=body))
    while (await http.get(url)).json()["agentStatus"] == "working":
        await asyncio.sleep(0.01)
    return ms


async def measure(args: argparse.Namespace, stores: dict[str, tuple[str, str, Path]], log: bytes) -> None:
    results: dict[str, dict[str, list[float]]] = {s: {} for s in stores}
    async with httpx.AsyncClient(timeout=600) as http:
        for writer, _, _ in stores.values():
            await create_sessions(http, writer, args.sessions)
            for body in batches(log):
                resp = await http.post(f"http://{writer}/v1/projects/bench/sessions/big/events", content=body,
                                       headers=NDJSON)
                assert resp.status_code == 201, resp.text
        for _ in range(args.rounds):
            for name, (_, reader, side) in stores.items():
                for key, ms in (await lists(http, reader)).items():
                    results[name].setdefault(key, []).append(ms)
                for sidecar in side.rglob(SIDECAR):
                    if sidecar.parent.name == "big":
                        sidecar.unlink()
                url = f"ws://{reader}/v1/projects/bench/sessions/big/events?view=compact"
                results[name].setdefault("compact view, cold (ms)", []).append((await read_until_live(url))[0] * 1000)
                results[name].setdefault("compact view, warm (ms)", []).append((await read_until_live(url))[0] * 1000)
        for i in range(args.runs):
            for name, (writer, _, _) in stores.items():
                results[name].setdefault("run start, to 202", []).append(await one_run(http, writer, i))
    keys = list(results["files"])
    rows = [[key, *(f"{statistics.median(results[s][key]):.1f}" for s in stores)] for key in keys]
    report(args.out, "NATS store: session lists, run slots, compact view (bench/nats_ops.py)",
           f"{args.sessions} sessions in one project; lists read from a replica that never opened them; "
           f"{args.runs} runs per store; a {args.mb} MB session for the compact view. Milliseconds, medians "
           f"of {args.rounds} alternating rounds (runs: of {args.runs}); load average {os.getloadavg()[0]:.1f} "
           f"on {os.cpu_count()} cores at the end. `python bench/nats_ops.py --out docs/benchmarks.md`.",
           ["measure (ms)", *stores], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    log = dataset(f"compact-session-{args.mb}mb.jsonl", lambda p: make_session(p, args.mb))
    runner_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            runner = subprocess.Popen([sys.executable, str(HERE.parent / "examples" / "fake_runner.py"),
                                       "--port", str(runner_port), "--delay", "0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(runner)
            wait_port(runner_port, runner)
            server, url = bench_nats.nats_server(root)
            procs.append(server)
            env = {"GATEWAY_RUNNER_URL": f"http://127.0.0.1:{runner_port}/"}
            nats_env = {**env, "GATEWAY_STORE": "nats", "GATEWAY_NATS_URL": url}
            gateways = {}
            for name, state, extra in (("files", "files", env), ("nats-a", "a", nats_env), ("nats-b", "b", nats_env)):
                proc, base = bench_nats.gateway(root / state, **extra)
                procs.append(proc)
                gateways[name] = base
            stores = {"files": (gateways["files"], gateways["files"], root / "files"),
                      "nats": (gateways["nats-a"], gateways["nats-b"], root / "b")}
            asyncio.run(measure(args, stores, log.read_bytes()))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
