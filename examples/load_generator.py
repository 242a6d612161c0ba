"""A bounded load test of a local gateway: N writers append, M readers follow, latency is measured.

    python examples/load_generator.py --writers 4 --readers 8 --events 2000

Each writer appends `--events` events (in batches of `--batch`) to its own new session; reader j
follows session j mod N over WebSocket. Every event carries its send time, so a reader measures
end-to-end latency (append request sent -> event received). Prints append and delivery throughput
and latency percentiles. Bounded in count and in time (`--max-seconds`), and only ever talks to
a loopback address.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio

from gateway.client import Event, GatewayClient, Live
from gateway.config import is_loopback


def is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL (loopback only)")
    parser.add_argument("--project", default="default")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--events", type=int, default=1000, help="events per writer")
    parser.add_argument("--batch", type=int, default=10, help="events per append request")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop whatever happens after this")
    args = parser.parse_args(argv)
    if not is_loopback_url(args.url):
        parser.error("the load generator only targets a gateway on this machine (127.0.0.1, ::1, localhost)")
    run = uuid.uuid4().hex[:8]
    sessions = [f"load-{run}-{i}" for i in range(args.writers)]
    latencies: list[float] = []
    delivered = 0

    async with GatewayClient(args.url, args.project) as client:
        for name in sessions:  # the readers' streams need the sessions to exist
            await client.append(name, [{"type": "RUN_STARTED", "threadId": name, "runId": run}])
        live = anyio.Semaphore(0)

        async def read(session: str) -> None:
            nonlocal delivered
            async with client.events(session) as stream:
                async for item in stream:
                    if isinstance(item, Live):
                        live.release()
                    elif isinstance(item, Event) and item.type == "CUSTOM":
                        latencies.append(time.time() - item.data["value"]["sent"])
                        delivered += 1
                        if item.data["value"]["last"]:
                            return

        async def write(session: str) -> None:
            for start in range(0, args.events, args.batch):
                count = min(args.batch, args.events - start)
                sent = time.time()
                await client.append(session, [
                    {"type": "CUSTOM", "name": "load",
                     "value": {"sent": sent, "n": start + k, "last": start + k == args.events - 1}}
                    for k in range(count)
                ])

        started = time.monotonic()
        appended_in = args.max_seconds
        with anyio.move_on_after(args.max_seconds) as deadline:
            async with anyio.create_task_group() as readers:
                for j in range(args.readers):
                    readers.start_soon(read, sessions[j % args.writers])
                for _ in range(args.readers):
                    await live.acquire()
                started = time.monotonic()
                async with anyio.create_task_group() as writers:
                    for name in sessions:
                        writers.start_soon(write, name)
                appended_in = time.monotonic() - started
        elapsed = time.monotonic() - started
        for name in sessions:
            await client.delete(name)

    if deadline.cancelled_caught:
        print(f"stopped after --max-seconds={args.max_seconds:g}", file=sys.stderr)
    if not latencies:
        print("no events delivered", file=sys.stderr)
        return 1
    appended = args.writers * args.events
    print(f"appended  {appended} events by {args.writers} writers in {appended_in:.2f}s "
          f"({appended / max(appended_in, 1e-9):,.0f} events/s)")
    print(f"delivered {delivered} events to {args.readers} readers in {elapsed:.2f}s "
          f"({delivered / max(elapsed, 1e-9):,.0f} events/s)")
    ms = [x * 1000 for x in latencies]
    spread = "  ".join(f"p{q} {percentile(ms, q):.1f}" for q in (50, 90, 99))
    print(f"latency ms  {spread}  max {max(ms):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1:]))
