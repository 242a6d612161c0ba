"""The objects one running gateway shares between its handlers and background loops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import HTTPConnection

from gateway.auth import Authorizer, NoAuth, TokenAuthorizer
from gateway.config import Settings
from gateway.ds.streams import DurableStreams
from gateway.metrics import Metrics
from gateway.runner.runs import RunManager
from gateway.sessions.catalog import FileCatalog, SessionCatalog
from gateway.sessions.nats_catalog import NatsCatalog
from gateway.sessions.registry import Registry
from gateway.sessions.replicas import Liveness
from gateway.sessions.shared import WorkerTables
from gateway.store.base import LogStore, SessionLog
from gateway.store.commit import CommitCycle
from gateway.store.files import FileStore
from gateway.store.nats.conn import NatsConn
from gateway.store.nats.runlock import RunLocks
from gateway.store.nats.store import NatsStore
from gateway.store.watch import LogWatcher
from gateway.stream.hub import Hubs
from gateway.stream.pump import Heartbeats, SendWatchdog
from gateway.stream.warm import CacheBuilder
from gateway.transports.context import Draining, StreamContext, StreamLimits

log = logging.getLogger("gateway")

APPEND_PARSERS = 2
"""Append bodies validated in worker threads at once (gateway/api/appends.py): one per core of the
machine kind the gateway is sized for; more would only share the same cores and hold more bodies."""


@dataclass
class Gateway:
    settings: Settings
    store: LogStore
    registry: Registry
    authorizer: Authorizer
    catalog: SessionCatalog
    metrics: Metrics
    watchdog: SendWatchdog
    draining: Draining = field(default_factory=Draining)
    parsers: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(APPEND_PARSERS))
    _api_client: Any = None
    _nats_up: bool = False
    shared: WorkerTables | None = None
    """With `--workers N`: this worker's liveness table and the other workers' (None alone)."""
    nats_liveness: Liveness | None = None
    """With store=nats: connections and lastSeen shared by every replica (None otherwise)."""
    run_locks: RunLocks | None = None
    """With store=nats: each session's run slot, shared by every replica (None otherwise)."""
    runs: RunManager = field(init=False)
    streams: StreamContext = field(init=False)
    watcher: LogWatcher = field(init=False)
    caches: CacheBuilder = field(init=False)
    """The compact view's caches, kept current in the background."""
    durable: DurableStreams = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        # The catalog is read at each use: `open_backends` may swap it for the Kubernetes one.
        self.runs = RunManager(runner_url=s.runner_url, max_event_bytes=s.max_event_bytes,
                               registry=self.registry, catalog=lambda: self.catalog)
        self.streams = StreamContext(StreamLimits(s.frame_bytes, s.heartbeat_interval, s.send_timeout),
                                     self.registry, self.watchdog, self.metrics, self.draining,
                                     Hubs(s.frame_bytes), Heartbeats(s.heartbeat_interval))
        self.watcher = LogWatcher(self.store, mode=s.watch, interval=s.poll_interval)
        self.caches = CacheBuilder(self.store, files=isinstance(self.store, FileStore), share=s.compact_share,
                                   release=self._release, on_built=self.metrics.compact_built)
        self.durable = DurableStreams(self.store, s.max_event_bytes, lock_dir=s.state_dir / "ds-locks")
        self.store.on_append = self._appended

    def _appended(self, log: SessionLog, lines: list[bytes], seconds: float) -> None:
        self.metrics.appended(len(lines), seconds)
        self.caches.appended(log, lines)

    def _release(self, project: str, session: str) -> None:
        """A log the cache builder opened: closed again unless a stream registered meanwhile."""
        if self.registry.entry(project, session) is None:
            self.store.evict(session)

    @classmethod
    def create(cls, settings: Settings, worker: tuple[int, Path] | None = None) -> Gateway:
        """Everything that needs no I/O; Kubernetes backends are set up by `open_backends`.

        `worker` is (index, run dir) for one of several workers serving one port.
        """
        store = _make_store(settings)
        registry = Registry(max_connections=settings.max_connections, evict=lambda _p, s: store.evict(s))
        metrics = Metrics(registry, per_session=settings.metrics_sessions)
        store.on_fsync = metrics.fsync_seconds.observe
        authorizer: Authorizer = TokenAuthorizer(settings.tokens_file) if settings.auth == "token" else NoAuth()
        catalog = NatsCatalog(store.directory) if isinstance(store, NatsStore) else FileCatalog(settings.state_dir)
        gateway = cls(settings, store, registry, authorizer, catalog, metrics, SendWatchdog(settings.send_timeout))
        if isinstance(store, FileStore):
            registry.keep_seen = store.keep_last_seen
        if worker is not None:
            gateway.shared = WorkerTables(registry, worker[1], worker[0])
            registry.on_change.append(gateway.shared.changed)
            metrics.share(gateway.shared)
        if isinstance(store, NatsStore):
            gateway.nats_liveness = Liveness(store.conn, registry, settings.heartbeat_interval)
            registry.on_change.append(gateway.nats_liveness.changed)
            gateway.runs.locks = gateway.run_locks = RunLocks(store.conn, ttl=3 * settings.heartbeat_interval)
        return gateway

    def liveness(self, project: str, session: str) -> tuple[int, int | None]:
        """A session's open streams and lastSeen (ms), over every worker of this server."""
        if self.shared is None:
            entry = self.registry.entry(project, session)
            return (entry.open_connections, entry.last_seen) if entry else (0, None)
        return self.shared.liveness().sessions.get((project, session), (0, None))

    async def open_backends(self) -> None:
        """Connect to NATS (store=nats), and to the Kubernetes API when the registry or auth mode needs it.

        NATS unreachable does not hold startup: the gateway serves, not ready, and `run_loops`
        keeps connecting; refused credentials stop it here."""
        s = self.settings
        if isinstance(self.store, NatsStore):
            self._nats_up = await self.store.conn.attempt(self._nats_buckets)
        if "kubernetes" not in (s.registry, s.auth):
            return
        from gateway.k8s.auth import KubernetesAuthorizer
        from gateway.k8s.catalog import KubernetesCatalog
        from gateway.k8s.client import make_api_client
        from gateway.k8s.platform import Platform

        self._api_client = await make_api_client()
        if s.registry == "kubernetes":
            self.catalog = catalog = KubernetesCatalog(self._api_client)
            self.runs.hooks = Platform(s, self._api_client, catalog, self.store, self.registry)
        if s.auth == "kubernetes":
            self.authorizer = KubernetesAuthorizer(self._api_client)

    async def _nats_buckets(self) -> None:
        """The key-value buckets, once connected (the session directory, liveness, run slots)."""
        assert isinstance(self.store, NatsStore)
        await self.store.directory.ensure_bucket()
        if self.nats_liveness is not None:
            await self.nats_liveness.ensure_bucket()
        if self.run_locks is not None:
            await self.run_locks.ensure_bucket()

    async def backend_problem(self) -> str | None:
        """Why NATS or the Kubernetes API cannot be used right now (readiness), or None."""
        if isinstance(self.store, NatsStore) and (problem := self.store.conn.problem()):
            return problem
        if self._api_client is None:
            return None
        from kubernetes_asyncio import client

        try:
            with anyio.fail_after(2):
                await client.VersionApi(self._api_client).get_code()
        except Exception as exc:  # any failure means not ready; the message says which
            return f"Kubernetes API unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        return None

    async def close_backends(self) -> None:
        await self.catalog.aclose()
        if isinstance(self.store, NatsStore):
            await self.store.conn.aclose()
        if self._api_client is not None:
            await self._api_client.close()

    def begin_shutdown(self) -> None:
        """Stop taking new streams and end the open ones (WebSocket 1001, SSE/NDJSON end of body)."""
        if not self.draining.is_set():
            log.info("draining: closing streams")
            self.draining.set()

    async def run_loops(self) -> None:
        """Background work for the life of the server: other processes' appends, slow clients,
        the sessions' shared readers, stream heartbeats, lastSeen heartbeat, sweeper, the compact
        view's caches, and with
        store=nats the shared liveness and run slots."""
        s = self.settings
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.watcher.run)
            tg.start_soon(self.watchdog.run)
            tg.start_soon(self.streams.hubs.run)
            tg.start_soon(self.streams.heartbeats.run)
            tg.start_soon(self.registry.run_heartbeat, s.heartbeat_interval)
            tg.start_soon(self.registry.run_sweeper, s.sweep_interval, s.stale_after)
            tg.start_soon(self.caches.run)
            if self.shared is not None:
                tg.start_soon(self.shared.run)
            if self.nats_liveness is not None:
                tg.start_soon(self.nats_liveness.run)
            if self.run_locks is not None:
                tg.start_soon(self.run_locks.run)
            if isinstance(self.store, NatsStore) and not self._nats_up:
                tg.start_soon(self.store.conn.keep_connecting, self._nats_buckets)


def _make_store(settings: Settings) -> LogStore:
    if settings.store == "nats":
        conn = NatsConn(settings.nats_url, settings.nats_stream, settings.nats_replicas,
                        creds=settings.nats_creds, token_file=settings.nats_token_file)
        return NatsStore(conn, settings.state_dir)
    return FileStore(settings.state_dir, fsync=settings.fsync == "always", max_event_bytes=settings.max_event_bytes,
                     max_open_logs=settings.max_open_logs, commits=CommitCycle(interval=settings.commit_interval))


def gateway_of(conn: HTTPConnection) -> Gateway:
    """The gateway serving a request or WebSocket (set on the app by `build_app`)."""
    gw: Gateway = conn.app.state.gateway
    return gw
