"""What every script in bench/ shares: ports, waiting for a server, the servers of the live
scenarios (gateway, nginx + Nchan, a bare broadcaster) and their fan-out run, and the results page."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from multiprocessing import Process
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import websockets
from wsload import client_process

DATA = Path(__file__).resolve().parent.parent / ".cache" / "bench"


def dataset(name: str, make: Callable[[Path], object]) -> Path:
    """`.cache/bench/<name>`, made by `make(path)` the first time (generated data is kept for reruns)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / name
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr)
        make(path)
    return path


async def text_frames(url: str) -> AsyncIterator[str]:
    """The text frames of one WebSocket stream, as a bench client reads them (no compression)."""
    async with websockets.connect(url, compression=None, max_size=None, open_timeout=600) as ws:
        async for frame in ws:
            assert isinstance(frame, str)
            yield frame


def batch_events(line: str) -> int:
    """Events in one WebSocket batch line, read from its head (or its `seqs`, in the compact view)."""
    seqs = line.rfind(',"seqs":[')
    if seqs != -1:
        return line.count(",", seqs + 9) + 1
    head = line[: line.index(',"cursor"')]
    first, last = (int(x.split(":")[1]) for x in head[1:].split(","))
    return last - first + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def report(out: Path | None, title: str, intro: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a result table and, with `out`, put it in its own section of the benchmarks page."""
    table = "\n".join([
        intro,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
    ])
    print(table)
    if out is not None:
        write_section(out, title, table)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or add) one `## title` section of the benchmarks page, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured with the scripts in `bench/`.\n"
    marker = f"## {title}"
    section = f"{marker}\n\n{body}\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + len(marker))
        rest = "\n" + text[nxt + 1:] if nxt != -1 else ""
        text = text[:start] + section + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


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
"""A bare broadcaster: followers in memory, each appended event sent to all of them, no log, no
cursor, no disk: the least work a Python server on the same stack can do for the same result."""

NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 19000;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
load_module {module};
events {{ worker_connections 18000; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 100; }}
    location ~ ^/sub/(\\w+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; }}
    location ~ ^/pub50/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 50; }}
  }}
}}
"""
CLIENT_PROCESSES = 4


@dataclass
class Server:
    """One server of the live scenarios, started by `start`."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    live_marker: bytes | None  # what a follower's stream says once it is caught up (None: at once)

    def ws_path(self, session: str) -> str:
        if self.name == "gateway":
            return f"/v1/projects/bench/sessions/{session}/events?tail=0"
        return "/ws" if self.name == "broadcaster" else f"/sub/{session}"

    def pub_path(self, session: str) -> str:
        if self.name == "gateway":
            return f"/v1/projects/bench/sessions/{session}/events"
        return "/append" if self.name == "broadcaster" else f"/pub/{session}"

    def pub_url(self, session: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.pub_path(session)}"

    def pids(self) -> list[int]:
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def nchan_missing() -> str | None:
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install -y nginx libnginx-mod-nchan)"
    if not NCHAN_MODULE.exists():
        return f"{NCHAN_MODULE} is missing (apt-get install -y libnginx-mod-nchan)"
    return None


def available(names: Sequence[str]) -> list[str]:
    """The servers of `names` that can run here (Nchan needs Debian's packages)."""
    kept = list(names)
    if "nchan" in kept and (missing := nchan_missing()):
        print(f"skipping nchan: {missing}", file=sys.stderr)
        kept.remove("nchan")
    return kept


def start(name: str, workdir: Path) -> Server:
    """Start `gateway` (the caller's GATEWAY_* settings apply), `nchan` or `broadcaster`."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "gateway":
        env = {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_MAX_CONNECTIONS": "15000", **os.environ,
               "GATEWAY_STATE_DIR": str(workdir / "state"), "GATEWAY_PORT": str(port)}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        server = Server(name, proc, port, b'"control":"live"')
    elif name == "broadcaster":
        script = workdir / "broadcaster.py"
        script.write_text(BROADCASTER)
        proc = subprocess.Popen([sys.executable, str(script), str(port)])
        server = Server(name, proc, port, None)
    else:
        prefix = workdir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        os.chmod(prefix, 0o777)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, module=NCHAN_MODULE, port=port))
        proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)])
        server = Server(name, proc, port, None)
    wait_port(port, proc)
    return server


def run_clients(server: Server, paths: list[str], events: int,
                processes: int = CLIENT_PROCESSES) -> tuple[list[Connection], list[Process]]:
    """Followers of `paths` in `processes` processes (bench/wsload.py), each connected."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_process,
                           args=(server.port, paths[i::processes], server.live_marker, events, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        if not pipe.poll(600):
            raise RuntimeError("client process did not connect its followers")
        assert pipe.recv() == "ready"
    return pipes, procs


def collect(pipes: list[Connection], procs: list[Process]) -> tuple[array[float], int, int, float]:
    """Every follower's latencies (s), the events lost and delivered twice, the clients' CPU-seconds."""
    latencies, lost, dup, cpu = array("d"), 0, 0, 0.0
    for pipe in pipes:
        pipe.send("done")
    for pipe, proc in zip(pipes, procs, strict=True):
        raw, l_, d_, _, c_ = pipe.recv()
        part = array("d")
        part.frombytes(raw)
        latencies.extend(part)
        lost, dup, cpu = lost + l_, dup + d_, cpu + c_
        proc.join()
    return latencies, lost, dup, cpu


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted values (nearest rank); NaN for none."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if b"transfer-encoding: chunked" in head:
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif b"content-length: " in head:
        await reader.readexactly(int(head.split(b"content-length: ")[1].split(b"\r\n")[0]))
    return head


async def publish_paced(port: int, path: str, rate: float, events: int,
                        connections: int) -> tuple[array[float], float]:
    """POST events 0..events-1, event n due at start + n/rate, over `connections` keep-alive
    connections (one request in flight on each). Each event carries its send time (`t`, the
    machine's monotonic clock). Returns each event's lag behind its due time (s): when every
    connection is waiting for an answer, the next event waits too, and the lag says so. Also
    returns the seconds from the first due time to the last answer."""
    lags = array("d")
    next_n = 0
    started = time.monotonic() + 0.05

    async def connection() -> None:
        nonlocal next_n
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_n < events:
                n, next_n = next_n, next_n + 1
                due = started + n / rate
                if (ahead := due - time.monotonic()) > 0:
                    await asyncio.sleep(ahead)
                sent = time.monotonic()
                lags.append(sent - due)
                body = b'{"type":"CUSTOM","name":"tick","value":{"n":%d,"t":%.6f}}' % (n, sent)
                writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
                head = await _read_response(reader)
                if not head.split(b" ", 2)[1].startswith(b"20"):
                    raise RuntimeError(f"publish failed: {head[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return lags, time.monotonic() - started


@dataclass
class FanoutResult:
    """One fan-out run of one server: what the publisher kept and what the followers got."""

    server: str
    latencies: array[float]  # every delivery, s, sorted
    lags: array[float]  # the publisher's lag behind schedule per event, s, sorted
    seconds: float  # from the first due time to the last answer
    events: int
    lost: int
    dup: int
    cpu: float  # server CPU-seconds over the run
    client_cpu: float  # the follower processes' CPU-seconds over the run
    cpus: tuple[float, ...] = ()  # with several servers (`followed`), each one's CPU-seconds

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def per_cpu(self) -> float:
        return len(self.latencies) / self.cpu if self.cpu else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def lag_ms(self, q: float) -> float:
        return percentile(self.lags, q) * 1000


def fanout(server: Server, followers: int, rate: float, seconds: float, publishers: int,
           followed: Sequence[Server] = (), session: str = "fanout",
           processes: int = CLIENT_PROCESSES) -> FanoutResult:
    """`followers` of one session (one channel) in `processes` client processes, a paced publisher
    at `rate` for `seconds`.

    The publisher POSTs to `server`; the followers connect to `server`, or are spread evenly over
    `followed` (replicas of one store, `server` among them), whose CPU is then counted, each's too."""
    events = int(rate * seconds)
    servers = list(followed) or [server]
    if server.name == "gateway":  # the session exists before its followers come
        httpx.post(server.pub_url(session), json={"type": "RUN_STARTED", "threadId": "t", "runId": "r"})
    pipes, procs = [], []
    for i, target in enumerate(servers):
        share = followers // len(servers) + (i < followers % len(servers))
        p, q = run_clients(target, [target.ws_path(session)] * share, events,
                           max(1, processes // len(servers)))
        pipes, procs = pipes + p, procs + q
    time.sleep(0.5)
    cpu0 = [s.cpu_seconds() for s in servers]
    lags, took = asyncio.run(publish_paced(server.port, server.pub_path(session), rate, events, publishers))
    latencies, lost, dup, client_cpu = collect(pipes, procs)
    cpus = tuple(s.cpu_seconds() - c for s, c in zip(servers, cpu0, strict=True))
    return FanoutResult(server.name, array("d", sorted(latencies)), array("d", sorted(lags)), took, events,
                        lost, dup, sum(cpus), client_cpu, cpus if followed else ())


def median_of(results: Sequence[FanoutResult], value: Callable[[FanoutResult], float]) -> float:
    return statistics.median(value(r) for r in results)


PLOT_QUANTILES = (0.5, 0.9, 0.99, 0.999, 0.9999)


def plot_latency(path: Path, curves: dict[str, Sequence[float]], title: str) -> bool:
    """Latency (ms) by percentile, one curve per server, to `path` (.svg or .png).

    The x axis is 1/(1-q), so the tail gets room (p99 and p99.9 are a decade apart). Needs
    matplotlib (`pip install -e '.[bench]'`): without it, says so and returns False."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"not writing {path}: matplotlib is missing (pip install -e '.[bench]')", file=sys.stderr)
        return False
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: a small, diffable file
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ordered in curves.items():
        n = len(ordered)
        if not n:
            continue
        ranks = sorted({min(n - 1, int(n * (1 - 10 ** (-k / 40)))) for k in range(0, 40 * 5 + 1)})
        ax.plot([1 / (1 - r / n) for r in ranks], [ordered[r] * 1000 for r in ranks], label=name)
    ticks = PLOT_QUANTILES
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - q) for q in ticks], [f"p{q * 100:g}" for q in ticks])
    ax.minorticks_off()
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency, POST to arrival (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return True
