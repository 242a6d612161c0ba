"""Live fan-out: many WebSocket followers of one session, a paced publisher, latency append -> arrival.

    python bench/fanout.py [--followers 1000] [--rate 200] [--seconds 10] [--publishers 8] [--rounds 3]
                           [--servers gateway,nchan,broadcaster] [--out docs/benchmarks.md]
                           [--plot docs/fanout-latency.svg]

`--followers` WebSocket followers of one session (one Nchan channel) in 4 client processes
(bench/wsload.py, a lean asyncio client). A publisher POSTs one event per request, event n due
at start + n/`--rate`, over `--publishers` keep-alive connections with one request in flight on
each: when all of them wait for answers, the next event waits too, and its lag behind schedule
is reported (a publisher that cannot keep the rate shows as "events/s kept" below the rate and a
large lag, not as a better latency). Latency runs from just before an event's POST to its
arrival at each follower (one monotonic clock for all processes of the machine). Reported per
server: the rate kept, the publisher's lag, latency percentiles, events lost or delivered twice,
the server's CPU, and deliveries (events received by a follower) per server CPU-second.

Servers, in the same run, alternating round by round (medians of the rounds; the plot pools the
rounds' deliveries): the gateway (one worker unless GATEWAY_WORKERS says otherwise), nginx +
Nchan from Debian (`apt-get install -y nginx libnginx-mod-nchan`; one nginx worker; skipped with
a message when missing), and `broadcaster`, a bare in-memory broadcaster on the gateway's stack
(starlette + uvicorn) with no log and no disk. The plot needs matplotlib (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BROADCASTER,  # bench/idle.py's baseline, taken from here
    CLIENT_PROCESSES,
    DATA,
    FanoutResult,
    available,
    fanout,
    median_of,
    percentile,
    plot_latency,
    report,
    start,
)

__all__ = ["BROADCASTER", "add_arguments", "measure", "report_fanout", "run"]


def measure(names: list[str], followers: int, rate: float, seconds: float, publishers: int,
            rounds: int) -> dict[str, list[FanoutResult]]:
    """Every server of `names` (those available) under the same fan-out, `rounds` times, alternating."""
    results: dict[str, list[FanoutResult]] = {name: [] for name in available(names)}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for i in range(rounds):
            for name in results:
                print(f"round {i + 1}: {name} fan-out ...", file=sys.stderr)
                server = start(name, Path(tmp) / f"{name}-{i}")
                try:
                    r = fanout(server, followers, rate, seconds, publishers)
                finally:
                    server.stop()
                print(f"  kept {r.rate:.0f}/s, lag p99 {r.lag_ms(0.99):.1f} ms, p50/p99 {r.ms(0.5):.1f}/"
                      f"{r.ms(0.99):.1f} ms, lost {r.lost}, dup {r.dup}, {r.per_cpu / 1000:.0f}k per CPU-s, "
                      f"CPU server {r.cpu / r.seconds:.2f} clients {r.client_cpu / r.seconds:.2f}",
                      file=sys.stderr)
                results[name].append(r)
    return results


def report_fanout(out: Path | None, plot: Path | None, results: dict[str, list[FanoutResult]], followers: int,
                  rate: float, seconds: float, publishers: int, load: tuple[float, float]) -> None:
    """The fan-out table, the percentiles table and (with `plot`) the latency-percentile plot."""
    rounds = min(len(r) for r in results.values())
    rows = []
    for name, rs in results.items():
        rows.append([name, f"{median_of(rs, lambda r: r.rate):.0f}",
                     f"{median_of(rs, lambda r: r.lag_ms(0.99)):.1f} / {median_of(rs, lambda r: r.lag_ms(1)):.0f}",
                     f"{median_of(rs, lambda r: r.ms(0.5)):.1f} / {median_of(rs, lambda r: r.ms(0.99)):.1f}",
                     f"{sum(r.lost for r in rs)} / {sum(r.dup for r in rs)}",
                     f"{median_of(rs, lambda r: 100 * r.cpu / r.seconds):.0f}%",
                     f"{median_of(rs, lambda r: 100 * r.client_cpu / r.seconds):.0f}%",
                     f"{median_of(rs, lambda r: r.per_cpu) / 1000:.0f}k"])
    intro = (f"{followers} WebSocket followers of one session in {CLIENT_PROCESSES} client processes "
             f"(bench/wsload.py); a publisher POSTing one event per request, paced at {rate:.0f} events/s for "
             f"{seconds:.0f} s over {publishers} keep-alive connections; {rounds} round(s) alternating the "
             f"servers, medians (lost / dup: sums). {os.cpu_count()} cores shared by server, clients and "
             f"publisher; load average {load[0]:.1f} when the run began, {load[1]:.1f} at its end. "
             f"`python bench/fanout.py --followers {followers} --rate {rate:g} --seconds {seconds:g} "
             f"--publishers {publishers} --rounds {rounds}`.")
    report(out, "Live fan-out (bench/fanout.py)", intro,
           ["server", "events/s kept", "publisher lag p99 / max ms", "p50 / p99 ms", "lost / dup", "server CPU",
            "follower processes' CPU", "deliveries per server CPU-second"], rows)
    pooled = {name: sorted(x for r in rs for x in r.latencies) for name, rs in results.items()}
    pct = [[name, *(f"{1000 * q:.1f}" for q in (percentile(lat, p) for p in (0.5, 0.9, 0.99, 0.999, 1.0)))]
           for name, lat in pooled.items()]
    body = "Latency from POST to arrival at a follower, ms, every delivery of every round pooled."
    if plot is not None and plot_latency(plot, pooled, f"{followers} followers of one session, {rate:.0f} events/s"):
        rel = os.path.relpath(plot, out.parent) if out is not None else str(plot)
        body += f"\n\n![latency by percentile, {', '.join(pooled)}]({rel})"
    report(out, "Fan-out latency percentiles (bench/fanout.py)", body, ["server", "p50", "p90", "p99", "p99.9", "max"],
           pct)


def add_arguments(parser: argparse.ArgumentParser, servers: str) -> None:
    """The fan-out scenario's options (bench/peers.py runs the same scenario)."""
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=servers)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)


def run(args: argparse.Namespace) -> None:
    """Measure and report the fan-out scenario of `add_arguments`' options."""
    load0 = os.getloadavg()[0]
    results = measure(args.servers.split(","), args.followers, args.rate, args.seconds, args.publishers, args.rounds)
    report_fanout(args.out, args.plot, results, args.followers, args.rate, args.seconds, args.publishers,
                  (load0, os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "gateway,nchan,broadcaster")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers and clients inherit it
    DATA.mkdir(parents=True, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
