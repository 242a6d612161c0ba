"""Resume cost: time to the first event after `after=<cursor>`, at the start, middle and end of a log.

    python bench/resume.py [--mb 200] [--out docs/benchmarks.md]

The gateway seeks through its sparse index, so the time should not depend on where the cursor is.
The baseline, measured in the same run, is what a server without an index must do: read the log
from the start and count lines up to the cursor (a plain buffered `for line in file` loop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, report
from replay import make_log, start


def scan_to(path: Path, seq: int) -> float:
    started = time.perf_counter()
    with open(path, "rb") as fh:
        for n, _ in enumerate(fh, start=1):
            if n == seq:
                break
    return time.perf_counter() - started


async def first_event(url: str) -> float:
    """Seconds from connecting to the first event frame (the clock stops before the close handshake)."""
    started = time.perf_counter()
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        while not str(await ws.recv()).startswith('{"first":'):
            pass
        elapsed = time.perf_counter() - started
        ws.transport.abort()  # measured: a close handshake left half-done would only stall the next try
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--tries", type=int, default=20, help="connections per position (median reported)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    log = DATA / f"replay-{args.mb}mb.jsonl"
    if not log.exists():
        make_log(log, args.mb)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        state = Path(tmp) / "state"
        (state / "sessions" / "bench").mkdir(parents=True)
        (state / "sessions" / "bench" / "agui-events.jsonl").hardlink_to(log)
        proc, url = start("gateway", log, state)
        try:
            base = url.split("/v1/")[0].replace("ws://", "http://")
            status = httpx.get(f"{base}/v1/projects/bench/sessions/bench", timeout=300).json()
            total, epoch = status["events"], status["epoch"]
            rows = []
            for label, seq in (("start", 1), ("middle", total // 2), ("end", total - 1)):
                resume = url.replace("follow=0", f"follow=0&after={epoch}-{seq}")
                times = [asyncio.run(first_event(resume)) for _ in range(args.tries)]
                gateway_ms = statistics.median(times) * 1000
                scan_ms = min(scan_to(log, seq) for _ in range(3)) * 1000
                ratio = scan_ms / gateway_ms
                rows.append([f"{label} (seq {seq:,})", f"{gateway_ms:.2f}", f"{scan_ms:.2f}", f"{ratio:.1f}x"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    intro = (f"Time from connect to the first event after `after=<cursor>` on a {log.stat().st_size / 1e6:.0f} MB "
             f"log of {total:,} events (median of {args.tries} connections, new connection each time), against "
             "reading the log from the start up to the cursor (best of 3, page cache warm).")
    report(args.out, "Resume cost (bench/resume.py)", intro,
           ["cursor at", "gateway: connect to first event (ms)", "scan from start (ms)", "scan / gateway"], rows)


if __name__ == "__main__":
    main()
