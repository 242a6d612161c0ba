"""`serve --workers N`: N gateway processes on one port and one state dir, under a supervisor.

Each worker is a whole gateway with its own listening socket on the same address
(SO_REUSEPORT: the kernel spreads new connections over the workers' accept queues, so a busy
worker does not get fewer connections only because it is slower to accept). Workers share what
must be shared through the state dir (the logs, with their flock and inotify) and a per-server
temporary run dir: prometheus-client's multiprocess files and one liveness table per worker
(`gateway.sessions.shared`).

The supervisor (the process started by `serve`) holds a bound socket on the port for its whole
life, so a port already in use by something else fails at once, and the port stays claimed
while a worker restarts. Policy, as a production user of gunicorn or uvicorn expects:
- a worker that dies after it was serving is replaced (same index), and the event is logged;
- a worker that dies before it ever served (bad configuration, bad state dir) stops the whole
  server with exit status 1: it would fail again on every restart;
- SIGTERM/SIGINT go to every worker at once; each drains within GATEWAY_SHUTDOWN_GRACE
  (streams get 1001, appends finish), and a worker still running a few seconds past the grace
  is killed. A graceful stop exits 0.
Workers die with the supervisor (PR_SET_PDEATHSIG), so a killed supervisor leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

from gateway.config import Settings

log = logging.getLogger("gateway.workers")

STOP_MARGIN = 5.0
"""Seconds past the shutdown grace before a worker that has not exited is killed."""

_PR_SET_PDEATHSIG = 1


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, so every worker can have its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
    # a response written in two parts waits for the client's delayed ACK (40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_worker(settings: Settings, index: int, run_dir: Path, ready: ProcessEvent) -> None:
    """One worker: a full gateway serving its own SO_REUSEPORT socket (the spawned process's entry)."""
    from gateway.logs import setup_logging
    from gateway.runtime import Gateway
    from gateway.server import GatewayServer, raise_fd_limit, uvicorn_config

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    setup_logging(settings.log_level, settings.log_format)
    raise_fd_limit(settings.max_connections, settings.max_open_logs)
    sock = reuseport_socket(settings.host, settings.port)
    sock.listen(2048)
    gateway = Gateway.create(settings, worker=(index, run_dir))
    server = GatewayServer(uvicorn_config(settings, gateway), gateway, on_started=ready.set,
                           settle_heap=True)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        if gateway.shared is not None:
            gateway.shared.remove()


class _Worker:
    def __init__(self, settings: Settings, index: int, run_dir: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.index = index
        self.ready = ctx.Event()
        self.process: SpawnProcess = ctx.Process(target=run_worker, args=(settings, index, run_dir, self.ready),
                                                 name=f"gateway-worker-{index}", daemon=False)
        self.process.start()


def supervise(settings: Settings) -> int:
    """Run `settings.workers` workers until SIGTERM/SIGINT; returns the exit status."""
    try:
        claim = reuseport_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen", extra={"host": settings.host, "port": settings.port, "error": str(exc)})
        return 1
    settings = settings.replace(port=claim.getsockname()[1])  # port 0: the one the kernel chose, for all
    run_dir = Path(tempfile.mkdtemp(prefix="agui-gateway-run-"))
    (run_dir / "metrics").mkdir()
    # Read by prometheus-client when a worker imports it: counters and histograms become files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    workers = [_Worker(settings, i, run_dir) for i in range(settings.workers)]
    log.info("workers started", extra={"workers": settings.workers, "port": settings.port,
                                       "pids": [w.process.pid for w in workers]})
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, worker in enumerate(workers):
                if worker.process.is_alive() or stopping:
                    continue
                worker.process.join()
                code = worker.process.exitcode
                if not worker.ready.is_set():
                    log.error("worker failed to start; stopping the server",
                              extra={"worker": worker.index, "exit_code": code})
                    status = 1
                    stopping.append(0)
                    break
                log.error("worker died; starting a new one", extra={"worker": worker.index, "exit_code": code})
                with contextlib.suppress(OSError):
                    (run_dir / "live" / f"worker-{worker.index}.json").unlink()
                workers[i] = _Worker(settings, worker.index, run_dir)
    finally:
        _stop(workers, settings.shutdown_grace + STOP_MARGIN)
        claim.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    log.info("workers stopped", extra={"status": status})
    return status


def _stop(workers: list[_Worker], patience: float) -> None:
    """SIGTERM to all at once (each drains on its own), then wait; kill whoever outlives `patience`."""
    for worker in workers:
        if worker.process.is_alive() and worker.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + patience
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            log.error("worker did not stop in time; killing it", extra={"worker": worker.index})
            worker.process.kill()
            worker.process.join()
