"""Prometheus metrics, all named `gateway_*`, in one registry per gateway (so tests can run several).

Counters move where the work happens (frames sent, appends, fsyncs); gauges that describe state
(connections, per-session lastSeen) are read from the session registry at scrape time, so they
can never drift from it. With several workers, counters and histograms go through
prometheus-client's multiprocess mode and the state gauges merge every worker's table
(`gateway.sessions.shared`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.sessions.registry import Registry
from gateway.sessions.shared import WorkerTables, merged, table_of
from gateway.stream.pump import FrameHook, PumpStats

TRANSPORTS = ("websocket", "sse", "ndjson")
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REPLAY = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _RegistryCollector(Collector):
    """State gauges of this gateway's registry or, with several workers, of all of them."""

    def __init__(self, registry: Registry, per_session: bool) -> None:
        self._registry, self._per_session = registry, per_session
        self.shared: WorkerTables | None = None

    def collect(self) -> Iterator[Metric]:
        live = merged([table_of(self._registry)]) if self.shared is None else self.shared.liveness()
        conns = GaugeMetricFamily("gateway_connections", "Open streams by transport", labels=["transport"])
        for transport in TRANSPORTS:
            conns.add_metric([transport], live.by_transport[transport])
        yield conns
        sessions = GaugeMetricFamily("gateway_sessions", "Sessions in the registry (touched, not yet evicted)")
        sessions.add_metric([], len(live.sessions))
        yield sessions
        tasks = GaugeMetricFamily("gateway_tasks", "asyncio tasks of this process (a leak grows it for good)")
        tasks.add_metric([], _running_tasks())
        yield tasks
        if not self._per_session:
            return  # GATEWAY_METRICS_SESSIONS=off: no label names a project or session
        seen = GaugeMetricFamily("gateway_session_last_seen_seconds", "Unix time a session was last seen",
                                 labels=["project", "session"])
        open_ = GaugeMetricFamily("gateway_session_connections", "Open streams of a session",
                                  labels=["project", "session"])
        for (project, session), (connections, last_seen) in live.sessions.items():
            seen.add_metric([project, session], last_seen / 1000)
            open_.add_metric([project, session], connections)
        yield seen
        yield open_


def _running_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop: the registry describing its collectors at start
        return 0


class Metrics:
    def __init__(self, registry: Registry, *, per_session: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._hooks: dict[str, FrameHook] = {}
        r = self.registry
        self.events_sent = Counter("gateway_events_sent", "Events sent to clients", ["transport"], registry=r)
        self.bytes_sent = Counter("gateway_bytes_sent", "Bytes sent to clients", ["transport"], registry=r)
        self.skipped_sent = Counter("gateway_skipped_lines", "Undeliverable lines reported to clients as skipped",
                                    ["transport"], registry=r)
        self.replay_seconds = Histogram("gateway_replay_seconds", "Time from connect to the end of the replay",
                                        ["transport"], buckets=_REPLAY, registry=r)
        self.stream_closes = Counter("gateway_stream_closes", "Streams ended, by transport and reason",
                                     ["transport", "reason"], registry=r)
        self.slow_closes = Counter("gateway_slow_client_closes", "Streams closed because the client stopped reading",
                                   ["transport"], registry=r)
        self.evictions = Counter("gateway_sessions_evicted", "Idle sessions whose caches were evicted", registry=r)
        self.appends = Counter("gateway_appended_events", "Events appended", registry=r)
        self.append_seconds = Histogram("gateway_append_seconds", "Append latency (write and, if on, fsync)",
                                        buckets=_LATENCY, registry=r)
        self.fsync_seconds = Histogram("gateway_fsync_seconds",
                                       "The sync call of each commit cycle (every log with unsynced appends)",
                                       buckets=_LATENCY, registry=r)
        self.compact_builds = Counter("gateway_compact_cache_builds", "Background builds of compact-view caches, "
                                      "by trigger (run_end, or backfill of a listed or raw-opened session)",
                                      ["trigger"], registry=r)
        self.compact_seconds = Histogram("gateway_compact_cache_build_seconds",
                                         "Time of one background build (paced to GATEWAY_COMPACT_SHARE)",
                                         buckets=_REPLAY, registry=r)
        self.ds_requests = Counter("gateway_ds_requests", "Durable Streams requests, by method and status",
                                   ["method", "status"], registry=r)
        self.rejected = Counter("gateway_rejected_requests", "Requests refused, by HTTP status", ["status"],
                                registry=r)
        self._state = _RegistryCollector(registry, per_session)
        r.register(self._state)
        registry.on_evict = lambda _entry: self.evictions.inc()

    def appended(self, events: int, seconds: float) -> None:
        self.appends.inc(events)
        self.append_seconds.observe(seconds)

    def compact_built(self, run_end: bool, seconds: float) -> None:
        self.compact_builds.labels("run_end" if run_end else "backfill").inc()
        self.compact_seconds.observe(seconds)

    def frame_hook(self, transport: str) -> FrameHook:
        """One hook per transport, shared by its streams (a closure per stream would be held by
        every idle follower)."""
        hook = self._hooks.get(transport)
        if hook is None:
            hook = self._hooks[transport] = self._new_frame_hook(transport)
        return hook

    def _new_frame_hook(self, transport: str) -> FrameHook:
        events, nbytes, skipped = (self.events_sent.labels(transport), self.bytes_sent.labels(transport),
                                   self.skipped_sent.labels(transport))

        def on_frame(n_events: int, n_skipped: int, n_bytes: int) -> None:
            events.inc(n_events)
            nbytes.inc(n_bytes)
            if n_skipped:
                skipped.inc(n_skipped)

        return on_frame

    def stream_ended(self, transport: str, reason: str, stats: PumpStats) -> None:
        self.stream_closes.labels(transport, reason).inc()
        if reason == "slow":
            self.slow_closes.labels(transport).inc()
        if stats.replay_seconds is not None:
            self.replay_seconds.labels(transport).observe(stats.replay_seconds)

    def share(self, tables: WorkerTables) -> None:
        """Serve every worker's metrics: counters and histograms from prometheus-client's
        multiprocess files (PROMETHEUS_MULTIPROC_DIR, set before this process imported it),
        state gauges from the workers' liveness tables."""
        self._state.shared = tables

    def render(self) -> bytes:
        if self._state.shared is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        combined.register(self._state)
        return generate_latest(combined)
