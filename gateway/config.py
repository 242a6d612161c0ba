"""Settings: one object built from the environment (PROTOCOL §7), mirrored by `serve` flags.

`OPTIONS` is the single table of every variable the gateway reads. The CLI derives its flags
from it and the Helm chart tests check their values against it, so the three cannot drift.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected on/off, got {raw!r}")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _share(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Option:
    env: str
    field: str
    parse: Callable[[str], Any]
    default: str
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("GATEWAY_HOST", "host", str, "127.0.0.1", "listen address"),
    Option("GATEWAY_PORT", "port", int, "8080", "listen port"),
    Option("GATEWAY_STATE_DIR", "state_dir", Path, "./.state", "storage root (sessions/<name>/agui-events.jsonl)"),
    Option("GATEWAY_HEARTBEAT_INTERVAL", "heartbeat_interval", _positive_float, "15",
           "seconds between heartbeats and lastSeen refreshes"),
    Option("GATEWAY_STALE_AFTER", "stale_after", _positive_float, "3600",
           "idle seconds before a session's caches may be evicted"),
    Option("GATEWAY_SWEEP_INTERVAL", "sweep_interval", _positive_float, "600", "seconds between sweeps"),
    Option("GATEWAY_SEND_TIMEOUT", "send_timeout", _positive_float, "30",
           "seconds a client may take to accept a frame before it is closed with 4408"),
    Option("GATEWAY_FRAME_BYTES", "frame_bytes", _positive_int, "65536", "frame batching limit in bytes"),
    Option("GATEWAY_WS_COMPRESSION", "ws_compression", _bool, "off", "permessage-deflate on WebSocket"),
    Option("GATEWAY_DEFAULT_VIEW", "default_view", _choice("raw", "compact"), "raw",
           "events view of streams that name none: raw, or compact (finished runs with deltas merged)"),
    Option("GATEWAY_COMPACT_SHARE", "compact_share", _share, "0.25",
           "share of one core the background builder of compact-view caches may use (0: off, streams build them)"),
    Option("GATEWAY_MAX_EVENT_BYTES", "max_event_bytes", _positive_int, "10485760",
           "largest event accepted or delivered"),
    Option("GATEWAY_MAX_CONNECTIONS", "max_connections", _positive_int, "10000",
           "open connections limit (streams and every other connection)"),
    Option("GATEWAY_HEADER_TIMEOUT", "header_timeout", _positive_float, "10",
           "seconds a client may take to send request headers, or between two parts of a body"),
    Option("GATEWAY_MAX_OPEN_LOGS", "max_open_logs", _positive_int, "1000",
           "session logs whose descriptors stay open; past it the least recently used idle ones close theirs"),
    Option("GATEWAY_MAX_BODY_BYTES", "max_body_bytes", _positive_int, "67108864", "largest append request body"),
    Option("GATEWAY_FSYNC", "fsync", _choice("always", "never"), "always",
           "always: a 201 means on disk (group commit); never: leave flushing to the OS"),
    Option("GATEWAY_COMMIT_INTERVAL", "commit_interval", _non_negative_float, "0.002",
           "fsync=always: least seconds between the starts of two commit cycles (under load, the appends of "
           "an interval share one sync; 0: back to back)"),
    Option("GATEWAY_STORE", "store", _choice("files", "nats"), "files",
           "files: logs under the state dir; nats: logs in NATS JetStream, replicas are stateless"),
    Option("GATEWAY_NATS_URL", "nats_url", _csv, "nats://127.0.0.1:4222", "store=nats: servers, comma-separated"),
    Option("GATEWAY_NATS_STREAM", "nats_stream", str, "AGUI", "store=nats: JetStream stream holding the logs"),
    Option("GATEWAY_NATS_REPLICAS", "nats_replicas", _positive_int, "1",
           "store=nats: replicas of the stream when the gateway creates it (3 on a NATS cluster)"),
    Option("GATEWAY_NATS_CREDS", "nats_creds", str, "", "store=nats: NATS credentials file (JWT + nkey seed)"),
    Option("GATEWAY_NATS_TOKEN_FILE", "nats_token_file", str, "",
           "store=nats: file holding a NATS auth token (or user:password)"),
    Option("GATEWAY_WATCH", "watch", _choice("auto", "inotify", "poll"), "auto",
           "how appends by other processes (workers, writers on the volume) are noticed: inotify, poll, or auto "
           "(inotify unless the state dir is on a network filesystem)"),
    Option("GATEWAY_POLL_INTERVAL", "poll_interval", _positive_float, "0.1",
           "seconds between checks for appends by other processes where inotify is not used"),
    Option("GATEWAY_WORKERS", "workers", _positive_int, "1",
           "gateway processes serving one port on the same state dir (about one per core)"),
    Option("GATEWAY_AUTH", "auth", _choice("none", "token", "kubernetes"), "none", "authentication mode"),
    Option("GATEWAY_TOKENS_FILE", "tokens_file", str, "", "token auth: 'token project[,project]' lines"),
    Option("GATEWAY_ALLOW_ANONYMOUS", "allow_anonymous", _bool, "0",
           "allow GATEWAY_AUTH=none on a non-loopback address"),
    Option("GATEWAY_ALLOWED_ORIGINS", "allowed_origins", _csv, "", "extra WebSocket/CORS origins"),
    Option("GATEWAY_ALLOWED_HOSTS", "allowed_hosts", _csv, "",
           "host names clients may use besides IP addresses, localhost and GATEWAY_HOST (.x.com: subdomains too)"),
    Option("GATEWAY_REGISTRY", "registry", _choice("files", "kubernetes"), "files", "where sessions are listed from"),
    Option("GATEWAY_RUNNER_URL", "runner_url", str,
           "http://session-{session}.{project}.svc.cluster.local:{port}/", "runner address template"),
    Option("GATEWAY_AGENT_REGISTRY", "agent_registry", str, "/config/registry/agent-registry.json",
           "kubernetes registry: agent registry JSON giving each RUNNER_TYPE its port (empty: off)"),
    Option("GATEWAY_RUNNER_TOKEN", "runner_token", _bool, "on",
           "kubernetes registry: send the Secret ambient-runner-token-<session> as X-Ambient-Session-Token"),
    Option("GATEWAY_SESSION_ACTIVITY", "session_activity", _non_negative_float, "10",
           "kubernetes registry: seconds between status.lastActivityTime writes (0: off)"),
    Option("GATEWAY_STOP_ON_RUN_FINISHED", "stop_on_run_finished", _bool, "on",
           "kubernetes registry: honour spec.stopOnRunFinished with the desired-phase annotations"),
    Option("GATEWAY_RUNNER_EVENTS", "runner_events", _bool, "on",
           "kubernetes registry: keep a listener on the runner's between-run events"),
    Option("GATEWAY_SENDER_IDENTITY", "sender_identity", _bool, "on",
           "kubernetes registry: sender metadata on user messages and identity headers to the runner"),
    Option("GATEWAY_SHUTDOWN_GRACE", "shutdown_grace", _positive_float, "10",
           "seconds to drain on SIGTERM before connections are cut"),
    Option("GATEWAY_METRICS_SESSIONS", "metrics_sessions", _bool, "off",
           "per-session series (project and session labels) on /metrics"),
    Option("GATEWAY_METRICS_TOKEN", "metrics_token", str, "",
           "bearer token /metrics requires (empty: /metrics is open)"),
    Option("GATEWAY_LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error"), "info", "log level"),
    Option("GATEWAY_LOG_FORMAT", "log_format", _choice("text", "json"), "text", "text or json (one object per line)"),
    Option("GATEWAY_DEMO", "demo", _bool, "0", "write a live demo session ('demo' in project 'default')"),
)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = field(default_factory=lambda: Path("./.state"))
    heartbeat_interval: float = 15.0
    stale_after: float = 3600.0
    sweep_interval: float = 600.0
    send_timeout: float = 30.0
    frame_bytes: int = 65536
    ws_compression: bool = False
    default_view: str = "raw"
    compact_share: float = 0.25
    max_event_bytes: int = 10 * 1024 * 1024
    max_connections: int = 10000
    header_timeout: float = 10.0
    max_open_logs: int = 1000
    max_body_bytes: int = 64 * 1024 * 1024
    fsync: str = "always"
    commit_interval: float = 0.002
    store: str = "files"
    nats_url: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    nats_stream: str = "AGUI"
    nats_replicas: int = 1
    nats_creds: str = ""
    nats_token_file: str = ""
    watch: str = "auto"
    poll_interval: float = 0.1
    workers: int = 1
    auth: str = "none"
    tokens_file: str = ""
    allow_anonymous: bool = False
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    registry: str = "files"
    runner_url: str = "http://session-{session}.{project}.svc.cluster.local:{port}/"
    agent_registry: str = "/config/registry/agent-registry.json"
    runner_token: bool = True
    session_activity: float = 10.0
    stop_on_run_finished: bool = True
    runner_events: bool = True
    sender_identity: bool = True
    shutdown_grace: float = 10.0
    metrics_sessions: bool = False
    metrics_token: str = ""
    log_level: str = "info"
    log_format: str = "text"
    demo: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from `environ`; `overrides` (e.g. CLI flags) win over it."""
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = environ.get(opt.env)
            if raw is None:
                continue
            try:
                values[opt.field] = opt.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{opt.env}={raw!r}: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Reject combinations that are unsafe or cannot work, before anything listens."""
        if self.auth == "none" and not self.allow_anonymous and not is_loopback(self.host):
            raise ConfigError(
                f"GATEWAY_AUTH=none on non-loopback address {self.host!r}: set GATEWAY_AUTH, "
                "or GATEWAY_ALLOW_ANONYMOUS=1 to serve without authentication"
            )
        if self.auth == "token" and not self.tokens_file:
            raise ConfigError("GATEWAY_AUTH=token needs GATEWAY_TOKENS_FILE")
        if self.store == "nats" and not self.nats_url:
            raise ConfigError("GATEWAY_STORE=nats needs GATEWAY_NATS_URL")
        if self.frame_bytes < 1024:
            raise ConfigError("GATEWAY_FRAME_BYTES must be at least 1024")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
