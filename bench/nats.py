"""Replay and resume from NATS JetStream (`GATEWAY_STORE=nats`) against the file store, in the same run.

    python bench/nats.py [--mb 50] [--single 20000] [--rounds 3] [--resumes 200] [--writers 16] [--out FILE]

Two gateway processes, one per store, get the same events through their HTTP API: a bulk-written
session (appends of about 512 KiB, the realistic log of bench/replay.py) and a session written one
event per append. Once the NATS gateway has compacted both (it does so on its own once appends
pause), each is replayed over WebSocket (`follow=0`) from each store, alternating rounds, medians
reported; and resumed from random cursors (time to the first event), on NATS through a second
gateway started after the writes (a replica that has read nothing of the sessions). Last, append
throughput: one writer, then `--writers` concurrent writers, one event per request to one session
(on NATS, concurrent appends are group-committed: one message and one ack for those that wait).

    python bench/nats.py replicas [--followers 600] [--rate 100] [--seconds 10] [--rounds 3] [--out docs/benchmarks.md]

Live fan-out on one nats-server, 3 gateway replicas against 1 (`replicas_main`): the same followers
of one session, spread evenly over 3 gateway processes or all on 1, and the same paced publisher
(bench/common.py `fanout`), POSTing through the first replica; alternating rounds, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, FanoutResult, Server, dataset, fanout, free_port, report, start, wait_port
from replay import make_log, read_stream
from resume import first_event

NDJSON = {"content-type": "application/x-ndjson"}


def nats_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = root / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nmax_payload: 8MB\njetstream {{ store_dir: "{root / "js"}" }}\n')
    binary = str(Path(sys.executable).with_name("nats-server"))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"nats://127.0.0.1:{port}"


def gateway(state: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {**os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_PORT": str(port),
            "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_FSYNC": "never", **env}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=full)
    wait_port(port, proc)
    return proc, f"127.0.0.1:{port}"


async def load(base: str, session: str, chunks: list[bytes]) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        for chunk in chunks:
            resp = await http.post(f"http://{base}/v1/projects/bench/sessions/{session}/events", content=chunk,
                                   headers=NDJSON)
            assert resp.status_code == 201, resp.text


def nats_client() -> Any:
    """The `nats` package, not this script (whose folder is first on sys.path)."""
    here = Path(__file__).resolve().parent
    path, sys.path[:] = sys.path[:], [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module("nats")
    finally:
        sys.path[:] = path


async def compacted(url: str, sessions: list[str], stream: str = "AGUI") -> float:
    """Wait until compaction left only the live edge on each session's own subject; seconds waited."""
    started = time.perf_counter()
    nc = await nats_client().connect(url)
    try:
        while True:
            counts = []
            for session in sessions:
                request = orjson.dumps({"subjects_filter": f"{stream}.e.{session}"})
                info = orjson.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=10)).data)
                counts.append(sum((info["state"].get("subjects") or {}).values()))
            if all(n <= 1 for n in counts):
                return time.perf_counter() - started
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def append_rate(base: str, session: str, writers: int, seconds: float) -> float:
    """Acknowledged appends per second, `writers` clients appending one event per request to one session."""
    url = f"http://{base}/v1/projects/bench/sessions/{session}/events"
    deadline = time.perf_counter() + seconds
    done = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=writers)) as http:
        async def writer(w: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                line = orjson.dumps({"type": "CUSTOM", "name": "w", "value": {"writer": w, "n": done}})
                resp = await http.post(url, content=line, headers=NDJSON)
                assert resp.status_code == 201, resp.text
                done += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))
    return done / seconds


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def bulk_chunks(path: Path, size: int = 512 * 1024) -> list[bytes]:
    chunks, current, n = [], [], 0
    with open(path, "rb") as fh:
        for line in fh:
            current.append(line)
            n += len(line)
            if n >= size:
                chunks.append(b"".join(current))
                current, n = [], 0
    if current:
        chunks.append(b"".join(current))
    return chunks


def first_lines(path: Path, n: int) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line for _, line in zip(range(n), fh, strict=False)]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--single", type=int, default=20000, help="events of the one-event-per-append session")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--writers", type=int, default=16, help="concurrent appenders to one session")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    log = dataset(f"replay-{args.mb}mb.jsonl", lambda p: make_log(p, args.mb))
    bulk = bulk_chunks(log)
    single = first_lines(log, args.single)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        root = Path(tmp)
        (root / "js").mkdir()
        nproc, nurl = nats_server(root)
        procs = [nproc]
        try:
            fproc, fbase = gateway(root / "files")
            gproc, gbase = gateway(root / "nats", GATEWAY_STORE="nats", GATEWAY_NATS_URL=nurl)
            procs += [fproc, gproc]
            stores = {"files": fbase, "nats": gbase}
            for base in stores.values():
                started = time.perf_counter()
                await load(base, "bulk", bulk)
                bulk_s = time.perf_counter() - started
                started = time.perf_counter()
                await load(base, "single", single)
                single_s = time.perf_counter() - started
                print(f"{base}: bulk written in {bulk_s:.1f}s, {len(single)} single appends in {single_s:.1f}s",
                      file=sys.stderr)
            print(f"NATS compaction done {await compacted(nurl, ['bulk', 'single']):.1f}s after the last append",
                  file=sys.stderr)
            cold, stores["nats (other replica)"] = gateway(root / "nats2", GATEWAY_STORE="nats", GATEWAY_NATS_URL=nurl)
            procs.append(cold)
            replay: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for session in ("bulk", "single"):
                    for name, base in list(stores.items())[:2]:
                        url = f"ws://{base}/v1/projects/bench/sessions/{session}/events?follow=0"
                        seconds, nbytes, _ = await read_stream(url)
                        replay.setdefault((session, name), []).append(nbytes / seconds / 1e6)
            rng = random.Random(7)
            resume: dict[tuple[str, str], list[float]] = {}
            for session in ("bulk", "single"):
                async with httpx.AsyncClient() as http:
                    status = {name: (await http.get(f"http://{base}/v1/projects/bench/sessions/{session}")).json()
                              for name, base in stores.items()}
                for _ in range(args.resumes):
                    seq = rng.randint(1, status["files"]["events"] - 1)
                    for name, base in stores.items():
                        cursor = f"{status[name]['epoch']}-{seq}"
                        url = f"ws://{base}/v1/projects/bench/sessions/{session}/events?follow=0&after={cursor}"
                        resume.setdefault((session, name), []).append(await first_event(url) * 1000)
            appends: dict[tuple[int, str], float] = {}
            for writers in (1, args.writers):
                for name, base in list(stores.items())[:2]:
                    appends[(writers, name)] = await append_rate(base, f"w{writers}", writers, args.seconds)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    rows = []
    labels = {"bulk": f"{args.mb} MB, appends of 512 KiB", "single": f"{len(single)} events, one per append"}
    for session, label in labels.items():
        f, n = statistics.median(replay[(session, "files")]), statistics.median(replay[(session, "nats")])
        rows.append([f"replay: {label}", f"{f:.0f} MB/s", f"{n:.0f} MB/s", f"{n / f:.2f}x", ""])
    for session, label in labels.items():
        f, n, c = (resume[(session, name)] for name in stores)
        rows.append([f"resume in the {label}: first event, median / p99 of {args.resumes}",
                     f"{statistics.median(f):.1f} / {p99(f):.1f} ms", f"{statistics.median(n):.1f} / {p99(n):.1f} ms",
                     "", f"{statistics.median(c):.1f} / {p99(c):.1f} ms"])
    for writers in (1, args.writers):
        f, n = appends[(writers, "files")], appends[(writers, "nats")]
        rows.append([f"appends/s, one event per request, {writers} concurrent writer(s) on one session, "
                     f"{args.seconds:.0f} s", f"{f:.0f}", f"{n:.0f}", f"{n / f:.2f}x", ""])
    report(args.out, "NATS JetStream store vs files",
           f"Replay over WebSocket (`follow=0`), MB/s of stored events, median of {args.rounds} alternating rounds, "
           "after the NATS gateway compacted the sessions; resumes from random cursors, alternating stores. One "
           "nats-server (JetStream file storage) and the gateways on this machine.",
           ["", "files", "nats (writing replica)", "nats / files", "nats (another replica)"], rows)


REPLICA_CLIENT_PROCESSES = 3  # one per replica with 3, all on the one replica with 1: the same clients


def replica_rounds(followers: int, rate: float, seconds: float, publishers: int, rounds: int,
                   counts: tuple[int, ...]) -> dict[int, list[tuple[FanoutResult, float]]]:
    """Fan-out with each number of replicas of `counts` on one nats-server, alternating round by
    round; each run's result and the nats-server's CPU-seconds over it. Fresh gateways each run."""
    results: dict[int, list[tuple[FanoutResult, float]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        root = Path(tmp)
        (root / "js").mkdir()
        nproc, nurl = nats_server(root)
        nats = Server("nats-server", nproc, 0, None)
        os.environ.update(GATEWAY_STORE="nats", GATEWAY_NATS_URL=nurl)  # read by start("gateway", ...)
        os.environ.setdefault("GATEWAY_WORKERS", "1")
        try:
            for i in range(rounds):
                for n in counts:
                    print(f"round {i + 1}: {n} replica(s) ...", file=sys.stderr)
                    replicas = [start("gateway", root / f"gw-{i}-{n}-{k}") for k in range(n)]
                    try:
                        cpu0 = nats.cpu_seconds()
                        r = fanout(replicas[0], followers, rate, seconds, publishers, followed=replicas,
                                   session=f"fanout-{i}-{n}", processes=REPLICA_CLIENT_PROCESSES)
                        ncpu = nats.cpu_seconds() - cpu0
                    finally:
                        for server in replicas:
                            server.stop()
                    print(f"  {len(r.latencies) / r.seconds:.0f} deliveries/s, p50/p99 {r.ms(0.5):.1f}/"
                          f"{r.ms(0.99):.1f} ms, lost {r.lost}, dup {r.dup}, CPU per replica "
                          f"{', '.join(f'{c / r.seconds:.2f}' for c in r.cpus)}, nats {ncpu / r.seconds:.2f}",
                          file=sys.stderr)
                    results[n].append((r, ncpu))
        finally:
            nats.stop()
    return results


def cpu_pressure() -> str:
    """The share of the last minute some task waited for a CPU (Linux PSI), or "" where unknown."""
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n")[0]
    except OSError:
        return ""
    return f"{float(some.split('avg60=')[1].split()[0]):.0f}%"


def replicas_main(argv: list[str]) -> None:
    """Live fan-out on NATS, 3 gateway replicas against 1 (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="bench/nats.py replicas", description=replicas_main.__doc__)
    for name, kind, default in (("followers", int, 600), ("rate", float, 100), ("seconds", float, 10),
                                ("publishers", int, 4), ("rounds", int, 3), ("out", Path, None)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    args = parser.parse_args(argv)
    DATA.mkdir(parents=True, exist_ok=True)
    load0, pressure0 = os.getloadavg(), cpu_pressure()
    results = replica_rounds(args.followers, args.rate, args.seconds, args.publishers, args.rounds, (1, 3))
    load1, pressure1 = os.getloadavg(), cpu_pressure()

    def med(n: int, value: Callable[[FanoutResult, float], float]) -> float:
        return statistics.median(value(r, ncpu) for r, ncpu in results[n])

    def per_delivery_us(r: FanoutResult, cpu: float, share: float) -> float:
        return 1e6 * cpu / (len(r.latencies) * share) if r.latencies else float("nan")

    rows = []
    for n in results:
        per_replica = [f"{med(n, lambda r, _, k=k: 100 * r.cpus[k] / r.seconds):.0f}%" for k in range(n)]
        each_us = [f"{med(n, lambda r, _, k=k, n=n: per_delivery_us(r, r.cpus[k], 1 / n)):.1f}" for k in range(n)]
        rows.append([str(n), f"{med(n, lambda r, _: r.rate):.0f}",
                     f"{med(n, lambda r, _: len(r.latencies) / r.seconds):.0f}",
                     f"{med(n, lambda r, _: r.ms(0.5)):.1f} / {med(n, lambda r, _: r.ms(0.99)):.1f}",
                     f"{sum(r.lost for r, _ in results[n])} / {sum(r.dup for r, _ in results[n])}",
                     " + ".join(per_replica), f"{med(n, lambda r, _: per_delivery_us(r, r.cpu, 1)):.1f}",
                     " / ".join(each_us), f"{med(n, lambda r, ncpu: 100 * ncpu / r.seconds):.0f}%"])
    ratio = med(3, lambda r, _: per_delivery_us(r, r.cpu, 1)) / med(1, lambda r, _: per_delivery_us(r, r.cpu, 1))
    intro = (f"{args.followers} WebSocket followers of one session, spread evenly over 3 gateway processes "
             f"(`GATEWAY_STORE=nats`, one worker each) or all on 1, in {REPLICA_CLIENT_PROCESSES} client processes "
             f"(bench/wsload.py) either way; one nats-server (JetStream file storage, R1); a publisher POSTing one "
             f"event per request through the first replica, paced at {args.rate:g} events/s for {args.seconds:g} s "
             f"over {args.publishers} keep-alive connections. {len(results[1])} rounds alternating 1 and 3 replicas, "
             f"medians (lost / dup: sums). Everything on {os.cpu_count()} cores, shared with other work: load "
             f"average {load0[0]:.1f} when the run began, {load1[0]:.1f} at its end (CPU pressure, the share of the "
             f"last minute some task waited for a core: {pressure0 or '?'} and {pressure1 or '?'}). 3 replicas cost "
             f"{ratio:.2f}x the gateway CPU per delivery of 1. "
             f"`python bench/nats.py replicas --followers {args.followers} --rate {args.rate:g} "
             f"--seconds {args.seconds:g} --rounds {args.rounds}`.")
    report(args.out, "Live fan-out, 3 replicas vs 1 on NATS (bench/nats.py replicas)", intro,
           ["gateway replicas", "events/s kept", "deliveries/s", "p50 / p99 ms", "lost / dup",
            "CPU per replica (first: the publisher's)", "gateway CPU per delivery (us)",
            "CPU per delivery of each replica's followers (us)", "nats-server CPU"], rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["replicas"]:
        replicas_main(sys.argv[2:])
    else:
        asyncio.run(main())
