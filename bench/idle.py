"""Memory per idle follower: server RSS growth with N open, caught-up WebSocket streams.

    python bench/idle.py [--followers 10000] [--rounds 1] [--out docs/benchmarks.md]
    python bench/idle.py --trace 2000        # where the bytes go (tracemalloc), per component

Each follower connects to one of 100 sessions, takes its (short) replay and then idles, as viewers
of quiet sessions do. Baseline, in the same run: the bare in-memory broadcaster of
`bench/common.py` (uvicorn + starlette + websockets), which holds the same connections and does
nothing else. With `--rounds N` the two alternate and the medians are reported.

`--trace N` runs the gateway under tracemalloc instead (RSS is meaningless there) and prints the
Python memory each follower adds, grouped by the package (or asyncio module) that allocated it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, free_port, report, wait_port
from fanout import BROADCASTER
from wsload import client_process

SESSIONS = 100
TRACED_GATEWAY = textwrap.dedent('''
    import os, signal, sys, tracemalloc
    tracemalloc.start()
    path = sys.argv[1]
    def dump(_sig, _frame):
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)
    signal.signal(signal.SIGUSR1, dump)
    from gateway.cli import main
    sys.argv = ["gateway", "serve"]
    sys.exit(main())
''')


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Snapshots:
    """tracemalloc snapshots of the traced gateway, taken on SIGUSR1 (`TRACED_GATEWAY`)."""

    def __init__(self, pid: int, path: Path) -> None:
        self.pid, self.path = pid, path

    def take(self) -> tracemalloc.Snapshot:
        self.path.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not self.path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("no snapshot from the gateway")
            time.sleep(0.2)
        return tracemalloc.Snapshot.load(str(self.path))


def component(filename: str) -> str:
    """The package that allocated (site-packages/<pkg>, gateway), or asyncio's module, or the file."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "gateway" in parts:
        return "gateway"
    if "asyncio" in parts:
        return "asyncio/" + parts[-1]
    return parts[-1]


def by_component(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, followers: int) -> list[list[str]]:
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    for stat in after.compare_to(before, "filename"):
        name = component(stat.traceback[0].filename)
        sizes[name] = sizes.get(name, 0) + stat.size_diff
        counts[name] = counts.get(name, 0) + stat.count_diff
    rows = [[name, f"{size / followers:.0f}", f"{counts[name] / followers:.1f}"]
            for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]) if size / followers >= 20]
    rows.append(["total", f"{sum(sizes.values()) / followers:.0f}", f"{sum(counts.values()) / followers:.1f}"])
    return rows


CLIENT_PROCESSES = 4


def hold(urls: list[str], port: int, pid: int, live: bytes | None,
         snapshots: Snapshots | None) -> tuple[int, int, list[list[str]]]:
    """RSS before and with every follower connected and caught up (KiB), and with `snapshots`
    the Python memory per follower by component. Followers are bench/wsload.py's lean clients,
    in several processes, so that connecting 10,000 takes seconds, not minutes."""
    time.sleep(1.0)
    first = snapshots.take() if snapshots else None
    before = rss_kib(pid)
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(CLIENT_PROCESSES):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_process, args=(port, urls[i::CLIENT_PROCESSES], live, 0, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(600) or pipe.recv() != "ready":
                raise RuntimeError("a client process did not connect its followers")
        time.sleep(2.0)  # let the server settle (buffers freed, tasks parked)
        rows = by_component(first, snapshots.take(), len(urls)) if snapshots and first else []
        after = rss_kib(pid)
        if live is not None and (still := open_streams(port)) != len(urls):
            raise RuntimeError(f"only {still} of {len(urls)} followers still open when measured")
        return before, after, rows
    finally:
        for pipe in pipes:
            pipe.send("done")
        for pipe, proc in zip(pipes, procs, strict=True):
            pipe.recv()
            proc.join()


def open_streams(port: int) -> int:
    """Open streams as the gateway counts them (`gateway_connections`): every follower still there."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_connections{")))


def measure(kind: str, workdir: Path, followers: int, trace: bool = False,
            src: Path | None = None) -> tuple[int, int, list[list[str]]]:
    port = free_port()
    snapshots = None
    if kind == "broadcaster":
        script = workdir / "broadcaster.py"
        script.write_text(BROADCASTER)
        proc = subprocess.Popen([sys.executable, str(script), str(port)])
        urls = ["/ws"] * followers
    else:
        state = workdir / f"state-{port}"
        env = {**os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_PORT": str(port),
               "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_MAX_CONNECTIONS": str(followers + 1000)}
        if trace:
            snap = workdir / "snapshot"
            proc = subprocess.Popen([sys.executable, "-c", TRACED_GATEWAY, str(snap)], env=env)
            snapshots = Snapshots(proc.pid, snap)
        else:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, cwd=src)
        base = "/v1/projects/bench/sessions"
        urls = [f"{base}/idle-{i % SESSIONS}/events" for i in range(followers)]
    try:
        wait_port(port, proc)
        if kind == "gateway":
            for i in range(SESSIONS):
                events = [{"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "x" * 100}] * 20
                httpx.post(f"http://127.0.0.1:{port}{base}/idle-{i}/events", json=events).raise_for_status()
            return hold(urls, port, proc.pid, b'"control":"live"', snapshots)
        return hold(urls, port, proc.pid, None, snapshots)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--trace", type=int, metavar="N", help="tracemalloc the gateway with N followers instead")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also measure the gateway of another checkout (e.g. `git worktree` of main)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one fd per follower here and in the server
    DATA.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        if args.trace:
            _, _, rows = measure("gateway", Path(tmp), args.trace, trace=True)
            report(args.out, "Where the bytes of an idle follower go (bench/idle.py --trace)",
                   f"tracemalloc in a gateway holding {args.trace} idle, caught-up WebSocket followers "
                   f"({SESSIONS} sessions): Python memory each follower adds, by the package that allocated it "
                   f"(load average {load:.1f}). `python bench/idle.py --trace {args.trace}`.",
                   ["allocated in", "bytes per follower", "blocks per follower"], rows)
            return
        kinds = ["broadcaster", "gateway", *([f"gateway at {args.compare}"] if args.compare else [])]
        per: dict[str, list[float]] = {kind: [] for kind in kinds}
        rss: dict[str, list[tuple[int, int]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in per:
                print(f"measuring {kind} ...", file=sys.stderr)
                src = args.compare if kind.startswith("gateway at") else None
                before, after, _ = measure(kind.split()[0], Path(tmp), args.followers, src=src)
                per[kind].append((after - before) / args.followers)
                rss[kind].append((before, after))
    med = {kind: statistics.median(values) for kind, values in per.items()}
    rows = [[kind, f"{statistics.median(b for b, _ in rss[kind]) / 1024:.0f}",
             f"{statistics.median(a for _, a in rss[kind]) / 1024:.0f}", f"{med[kind]:.1f}",
             " ".join(f"{v:.1f}" for v in per[kind])] for kind in per]
    intro = (f"{args.followers} idle WebSocket followers ({SESSIONS} sessions for the gateway), each caught up, "
             f"then the server's RSS; {args.rounds} round(s) alternating, medians; load average {load:.1f} at the "
             f"start. The gateway uses {med['gateway'] / med['broadcaster']:.2f}x the memory per connection of a "
             f"server that only holds the sockets. `python bench/idle.py --followers {args.followers}"
             f"{f' --rounds {args.rounds}' if args.rounds > 1 else ''}`.")
    report(args.out, "Idle followers (bench/idle.py)", intro,
           ["server", "RSS before (MiB)", "RSS with followers (MiB)", "KiB per follower", "rounds"], rows)


if __name__ == "__main__":
    main()
