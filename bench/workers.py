"""Aggregate live deliveries per second at saturation: `--workers 2` against `--workers 1`, same run.

    python bench/workers.py [--sessions 8] [--followers 40] [--publishers 64] [--seconds 8] [--rounds 3]
                            [--out docs/benchmarks.md]

`--sessions` sessions, each followed by `--followers` WebSocket followers; `--publishers`
keep-alive connections append one event per request, round-robin over the sessions, as fast as
the server answers (saturation: the server is the bottleneck). The kernel spreads connections
over the workers (SO_REUSEPORT), so an append often lands on a worker other than the one
serving a follower: the followers of the other worker are woken through inotify. The kernel
spreads connections by a hash, not by load: the busiest worker's share of the publishers and of
the followers is reported, because with few keep-alive publishers (16 split 5/11 happens) the
worker with more of them does most of the append work and sets the pace. A delivery is
one event received by one follower, counted by the clients over the measured window (after a
warm-up). Rounds alternate 1 and 2 workers; medians are reported. The clients are as cheap as
they can be (raw sockets that count events and discard the bytes), but they share the
machine's cores with the server: the CPU columns say who used what.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, report

MARK = b'"delta":"'
EVENT = b'{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":"' + b"x" * 64 + b'"}'


class Follower(asyncio.Protocol):
    """A WebSocket client that completes the handshake, then only counts events and drops the bytes."""

    def __init__(self, counter: list[int], ready: asyncio.Future[None]) -> None:
        self.counter, self.ready, self.carry, self.open = counter, ready, b"", False
        self.worker = b"0"  # the worker that accepted it (X-Gateway-Worker)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            head, sep, rest = (self.carry + data).partition(b"\r\n\r\n")
            if not sep:
                self.carry = head
                return
            assert head.startswith(b"HTTP/1.1 101"), head[:80]
            self.open, self.carry, data = True, b"", rest
            self.worker = worker_of(head)
            if not self.ready.done():
                self.ready.set_result(None)
        chunk = self.carry + data
        self.counter[0] += chunk.count(MARK)
        self.carry = chunk[-(len(MARK) - 1):]


def worker_of(head: bytes) -> bytes:
    lower = head.lower()
    return lower.split(b"x-gateway-worker: ")[1].split(b"\r\n")[0] if b"x-gateway-worker: " in lower else b"0"


async def follow(port: int, session: str, counter: list[int]) -> tuple[asyncio.Transport, Follower]:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    transport, follower = await loop.create_connection(lambda: Follower(counter, ready), "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    transport.write((f"GET /v1/projects/p/sessions/{session}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await asyncio.wait_for(ready, 30)
    return transport, follower  # type: ignore[return-value]


async def publish(port: int, sessions: list[str], offset: int, stop: asyncio.Event, sent: list[int],
                  workers: list[bytes] | None = None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    requests = [(f"POST /v1/projects/p/sessions/{s}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(EVENT)}\r\n\r\n").encode() + EVENT
                for s in sessions]
    i = offset
    while True:
        writer.write(requests[i % len(requests)])
        i += 1
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201"), head[:200]
        if workers is not None and not workers:
            workers.append(worker_of(head))
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        sent[0] += 1
        if stop.is_set():
            break
    writer.close()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def server_pids(root: int) -> list[int]:
    pids = [root]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == root:
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def one_round(workers: int, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "GATEWAY_STATE_DIR": state, "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": str(workers),
               "GATEWAY_FSYNC": "never", "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_HEARTBEAT_INTERVAL": "600"}
        with open(Path(state) / "server.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, stdout=log, stderr=log)
        try:
            return asyncio.run(_measure(proc, port, workers, args))
        except Exception:
            print((Path(state) / "server.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(30)


async def _up(port: int, workers: int) -> None:
    """Wait until every worker answers (each has its own listening socket)."""
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = (await reader.read()).split(b"\r\n\r\n")[0].lower()
        writer.close()
        worker = head.split(b"x-gateway-worker: ")[1].split(b"\r\n")[0] if b"x-gateway-worker" in head else b"0"
        seen.add(worker)
    if len(seen) < workers:
        raise RuntimeError("workers did not start")


async def _measure(proc: subprocess.Popen[bytes], port: int, workers: int,
                   args: argparse.Namespace) -> dict[str, float]:
    await _up(port, workers)
    sessions = [f"s{i}" for i in range(args.sessions)]
    counter, sent = [0], [0]
    stop = asyncio.Event()
    once = asyncio.Event()
    once.set()
    for session in sessions:  # created before the load, one at a time (a new session is not what is measured)
        await publish(port, [session], 0, once, [0])
    conns = [await follow(port, s, counter) for s in sessions for _ in range(args.followers)]
    pub_workers: list[list[bytes]] = [[] for _ in range(args.publishers)]
    pubs = [asyncio.create_task(publish(port, sessions, i, stop, sent, pub_workers[i]))
            for i in range(args.publishers)]
    await asyncio.sleep(args.warmup)
    pids = [pid for pid in server_pids(proc.pid) if pid != proc.pid] or [proc.pid]  # the workers
    got0, sent0, own0 = counter[0], sent[0], time.process_time()
    cpu0 = [cpu_seconds([pid]) for pid in pids]
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    took = time.monotonic() - started
    got, appended = counter[0] - got0, sent[0] - sent0
    per_worker = [cpu_seconds([pid]) - c for pid, c in zip(pids, cpu0, strict=True)]
    server_cpu, client_cpu = sum(per_worker), time.process_time() - own0
    stop.set()
    await asyncio.gather(*pubs)
    for transport, _ in conns:
        transport.close()
    followers_of = [sum(1 for _, f in conns if f.worker == str(w).encode()) for w in range(workers)]
    publishers_of = [sum(1 for p in pub_workers if p == [str(w).encode()]) for w in range(workers)]
    print(f"  followers per worker {followers_of}, publishers per worker {publishers_of}, "
          f"CPU per worker {[round(c / took, 2) for c in per_worker]}", file=sys.stderr)
    return {"deliveries": got / took, "appends": appended / took, "server_cpu": server_cpu / took,
            "client_cpu": client_cpu / took, "per_cpu_s": got / max(server_cpu, 1e-9),
            "follower_share": max(followers_of) / len(conns), "publisher_share": max(publishers_of) / len(pubs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--followers", type=int, default=40, help="per session")
    parser.add_argument("--publishers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", type=int, choices=(1, 2), help="run only this worker count (profiling)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in (args.only,) if args.only else (1, 2):
            result = one_round(workers, args)
            results[workers].append(result)
            print(f"workers={workers}: " + ", ".join(f"{k}={v:,.2f}" for k, v in result.items()), file=sys.stderr)
    load_after = os.getloadavg()
    if args.only:
        return

    def med(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in results[workers])

    rows = [[str(w), f"{med(w, 'deliveries'):,.0f}", f"{med(w, 'appends'):,.0f}", f"{med(w, 'server_cpu'):.2f}",
             f"{med(w, 'client_cpu'):.2f}", f"{med(w, 'per_cpu_s'):,.0f}",
             f"{med(w, 'publisher_share'):.0%} / {med(w, 'follower_share'):.0%}"] for w in (1, 2)]
    ratio = med(2, "deliveries") / med(1, "deliveries")
    intro = (f"{args.sessions} sessions x {args.followers} WebSocket followers, {args.publishers} publishers appending "
             f"one event per request as fast as the server answers (GATEWAY_FSYNC=never), {args.seconds:.0f} s "
             f"windows, rounds alternating 1 and 2 workers, medians of {args.rounds}. `--workers 2` / 1: "
             f"**{ratio:.2f}x** aggregate deliveries/s. Machine: {os.cpu_count()} cores shared with the clients "
             f"(one process, raw sockets) and other work; load average {load_before[0]:.1f} before, "
             f"{load_after[0]:.1f} after. CPU columns are cores in use (1.00 = one core). `python bench/workers.py "
             f"--sessions {args.sessions} --followers {args.followers} --publishers {args.publishers} "
             f"--seconds {args.seconds:g} --rounds {args.rounds}`.")
    report(args.out, "Workers (bench/workers.py)", intro,
           ["workers", "deliveries/s", "appends/s", "server CPU", "client CPU", "deliveries per server CPU-s",
            "busiest worker's share: publishers / followers"], rows)


if __name__ == "__main__":
    main()
