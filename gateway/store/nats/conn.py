"""The gateway's one connection to NATS, and the few JetStream calls the store makes.

Every failure to reach JetStream becomes `StoreUnavailable` (503) with a message that says what
is known about the request's fate; a failed expected-sequence check becomes `Conflict`, which the
log answers by catching up and trying again.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.store.base import StoreUnavailable
from gateway.store.nats import layout
from gateway.store.nats.layout import WRONG_LAST_SEQUENCE, kv_config, stream_config

log = logging.getLogger("gateway.store.nats")

REQUEST_TIMEOUT = 5.0
MULTI_LAST = 256
"""Subjects asked for in one batched direct get (the server answers at most 1024)."""
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
"""Seconds between connect attempts while NATS is unreachable: doubling from RETRY_FIRST."""
_UNREACHABLE = (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError,
                nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError, TimeoutError,
                OSError)


def refused(exc: Exception) -> bool:
    """Whether a client error is NATS refusing the credentials (pure)."""
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text \
        or "authentication" in text


def without_secret(url: str) -> str:
    """`url` without the user and password it may carry (`nats://user:pw@host:4222`), for logs (pure)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


class Conflict(Exception):
    """The subject's last sequence was not the expected one: another replica appended first."""


@dataclass(frozen=True, slots=True)
class Stored:
    sseq: int
    headers: dict[str, str]
    data: bytes

    @property
    def placed(self) -> layout.Placed | None:
        """Where it sits, from its headers (None for a message the gateway did not write)."""
        return layout.placed(self.sseq, self.headers, len(self.data))


@contextlib.contextmanager
def _reachable(what: str) -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"NATS JetStream unreachable ({type(exc).__name__}): {what}") from exc


class NatsConn:
    """One client connection (reconnecting forever, unless told to give up) and the stream the logs live in."""

    def __init__(self, servers: tuple[str, ...], stream: str, replicas: int, *, creds: str = "",
                 token_file: str = "", reconnect_attempts: int = -1) -> None:
        self.servers = servers
        self.stream = stream
        self.replicas = replicas
        self._creds = creds
        self._token_file = token_file
        self._attempts = reconnect_attempts
        self.nc: Client | None = None
        self._starting: anyio.CancelScope | None = None  # a connect, while it is under way
        self._failures = -1  # servers left to fail before a connect gives up (-1: never)
        self._refused: str | None = None
        self._down: str | None = "not connected yet"
        self._closing = False  # our own close: its disconnect is no outage
        self._replicated: set[str] = set()  # streams of more than one replica: a direct get may lag

    async def connect(self) -> None:
        """Connect (waiting for NATS while it is unreachable, as long as `reconnect_attempts` allows)
        and make sure the stream exists: for `migrate`, which says NATS is unreachable and stops.

        Raises StoreUnavailable when NATS refuses the credentials: a setting to fix, not an outage
        to wait out.
        """
        await self._open(await self._options(), one_round=False)

    async def attempt(self, setup: Callable[[], Awaitable[None]]) -> bool:
        """Try every server once, then the stream and `setup` (the key-value buckets): whether the
        connection is up; if not, `problem()` says why. A server does not hold the gateway's
        startup: a gateway answers (not ready) while `keep_connecting` waits for NATS.

        Raises StoreUnavailable when NATS refuses the credentials (the gateway stops at startup).
        """
        options = await self._options()
        try:
            await self._open(options, one_round=True)
            if self.nc is None:
                return False
            await setup()
        except StoreUnavailable as exc:
            if self._refused is not None:
                raise
            self._down = str(exc)
            await self.aclose()
            return False
        self._down = None
        return True

    async def keep_connecting(self, setup: Callable[[], Awaitable[None]]) -> None:
        """`attempt` until the connection is up, waiting longer after each failure (up to
        `RETRY_MAX`); one log line per attempt. Refused credentials are logged and retried too: the
        server's may be fixed without restarting the gateway."""
        wait = RETRY_FIRST
        while True:
            try:
                if await self.attempt(setup):
                    return
                log.warning("NATS unreachable: not ready, appends answer 503 until it is",
                            extra={"servers": self.shown, "error": self._down, "retry_in_s": wait})
            except StoreUnavailable as exc:
                self._down = str(exc)
                log.error(str(exc), extra={"servers": self.shown, "retry_in_s": wait})
            await anyio.sleep(wait)
            wait = min(2 * wait, RETRY_MAX)

    async def _options(self) -> dict[str, Any]:
        """The client's connect options, with the secret read from GATEWAY_NATS_TOKEN_FILE."""
        options: dict[str, Any] = {
            "servers": list(self.servers), "max_reconnect_attempts": self._attempts, "reconnect_time_wait": 0.5,
            "connect_timeout": 5, "error_cb": self._on_error, "disconnected_cb": self._on_disconnect,
            "reconnected_cb": self._on_reconnect, "name": "agui-gateway",
        }
        if self._creds:
            options["user_credentials"] = self._creds
        if self._token_file:
            try:
                secret = (await anyio.Path(self._token_file).read_text()).strip()
            except OSError as exc:
                raise StoreUnavailable(f"cannot read GATEWAY_NATS_TOKEN_FILE {self._token_file}: "
                                       f"{exc.strerror or exc}") from None
            user, sep, password = secret.partition(":")
            options.update({"user": user, "password": password} if sep else {"token": secret})
        return options

    async def _open(self, options: dict[str, Any], *, one_round: bool) -> None:
        """A new client: connected (`self.nc`, stream ensured), or closed again with `self.nc`
        None after one round of failures (`one_round`) and `self._down` saying why."""
        client = Client()
        self._refused = None
        self._failures = len(self.servers) if one_round else -1
        try:
            with anyio.CancelScope() as self._starting:
                await client.connect(**options)
        except (nats.errors.NoServersError, *_UNREACHABLE) as exc:
            raise StoreUnavailable(f"cannot connect to NATS at {self.shown}: {exc}") from exc
        finally:
            if not client.is_connected:  # given up, refused, or the gateway stops meanwhile
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await client.close()
            self._starting = None
        if self._refused is not None:
            raise StoreUnavailable(f"NATS at {self.shown} refused the gateway's credentials ({self._refused}): "
                                   "check GATEWAY_NATS_TOKEN_FILE or GATEWAY_NATS_CREDS")
        if not client.is_connected:
            return
        self.nc = client
        self._closing = False
        await self.ensure_stream(stream_config(self.stream, self.replicas))
        log.info("connected to NATS", extra={"servers": self.shown, "stream": self.stream})

    @property
    def shown(self) -> str:
        """The servers as logs and errors show them: without any user or password in the URLs."""
        return ", ".join(without_secret(url) for url in self.servers)

    async def ensure_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create the stream `config` describes unless one of its name exists (used as it is);
        the configuration in effect."""
        name = config["name"]
        info = await self._api(f"STREAM.INFO.{name}", b"")
        if "error" in info:
            info = await self._api(f"STREAM.CREATE.{name}", orjson.dumps(config))
            if "error" in info and info["error"].get("err_code") != 10058:  # 10058: created meanwhile
                raise StoreUnavailable(f"cannot create JetStream stream {name}: {info['error']}")
        effect = dict(info.get("config", config))
        if int(effect.get("num_replicas", 1)) > 1:
            self._replicated.add(name)
        return effect

    async def ensure_bucket(self, bucket: str, *, max_age_s: float) -> dict[str, Any]:
        """A key-value bucket (`layout.kv_config`) with as many replicas as the logs' stream: what
        it holds (run slots, lists, liveness) must outlive a NATS node too. The configuration in effect."""
        return await self.ensure_stream(kv_config(bucket, max_age_s=max_age_s, replicas=self.replicas))

    async def subjects(self, stream: str, pattern: str) -> list[str]:
        """The subjects of `stream` matching `pattern` that hold a message (stream info, paged)."""
        found: list[str] = []
        while True:
            info = await self._api(f"STREAM.INFO.{stream}",
                                   orjson.dumps({"subjects_filter": pattern, "offset": len(found)}))
            if "error" in info:
                raise StoreUnavailable(f"cannot list JetStream stream {stream}: {info['error']}")
            page = list((info["state"].get("subjects") or {}).keys())
            found += page
            if not page or len(found) >= int(info.get("total", 0)):
                return found

    async def _api(self, subject: str, body: bytes) -> dict[str, Any]:
        with _reachable(f"JetStream API {subject}"):
            reply = await self._client.request(f"$JS.API.{subject}", body, timeout=REQUEST_TIMEOUT)
        result: dict[str, Any] = orjson.loads(reply.data)
        return result

    @property
    def _client(self) -> Client:
        if self.nc is None:
            raise StoreUnavailable(f"NATS unreachable at {self.shown}: not connected yet")
        return self.nc

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its `max_payload`, 1 MiB unless configured)."""
        return self._client.max_payload

    def problem(self) -> str | None:
        """Why the store cannot be used now (readiness), or None."""
        if self.nc is None or not self.nc.is_connected:
            return f"NATS unreachable at {self.shown}" + (f" ({self._down})" if self.nc is None and self._down else "")
        return None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Store one message; its stream sequence once JetStream acknowledged it."""
        with _reachable("the append may or may not be stored; read the session's head before appending again"):
            reply = await self._client.request(subject, payload, timeout=REQUEST_TIMEOUT, headers=headers)
        ack: dict[str, Any] = orjson.loads(reply.data)
        error = ack.get("error")
        if error is not None:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                raise Conflict(error.get("description", ""))
            raise StoreUnavailable(f"JetStream refused the append: {error.get('description', error)}")
        return int(ack["seq"])

    async def get(self, *, seq: int | None = None, next_by: str | None = None, last_by: str | None = None,
                  stream: str | None = None, leader: bool = False) -> Stored | None:
        """A direct get (from the logs' stream unless `stream` is named): by stream sequence, the first
        of a subject at or after `seq`, or its last. Any replica of a replicated stream answers a
        direct get, also one that has not stored the last acknowledged message yet: a `leader` get,
        one that must see every acknowledged publish, asks the stream's leader there."""
        request = {k: v for k, v in (("seq", seq), ("next_by_subj", next_by), ("last_by_subj", last_by))
                   if v is not None}
        name = stream or self.stream
        if leader and name in self._replicated:
            return await self._leader_get(name, request)
        with _reachable("could not read the log"):
            reply = await self._client.request(f"$JS.API.DIRECT.GET.{name}", orjson.dumps(request),
                                               timeout=REQUEST_TIMEOUT)
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status:
            raise StoreUnavailable(f"JetStream direct get failed: {status} {headers.get('Description', '')}")
        return Stored(int(headers["Nats-Sequence"]), headers, reply.data)

    async def _leader_get(self, stream: str, request: dict[str, Any]) -> Stored | None:
        """The stream leader's answer (`STREAM.MSG.GET`), in the shape of a direct get's."""
        answer = await self._api(f"STREAM.MSG.GET.{stream}", orjson.dumps(request))
        if answer.get("error", {}).get("code") == 404:
            return None
        if "error" in answer:
            raise StoreUnavailable(f"JetStream get failed: {answer['error']}")
        msg = answer["message"]
        headers = layout.header_block(base64.b64decode(msg.get("hdrs") or ""))
        headers |= {"Nats-Subject": msg["subject"], "Nats-Sequence": str(msg["seq"])}
        return Stored(int(msg["seq"]), headers, base64.b64decode(msg.get("data") or ""))

    async def get_batch(self, subject: str, seq: int, *, batch: int, max_bytes: int) -> list[Stored]:
        """The subject's messages from stream sequence `seq` on, up to `batch` of them or about
        `max_bytes`: one request for many small messages (a direct get with `batch`)."""
        request = {"seq": seq, "next_by_subj": subject, "batch": batch, "max_bytes": max_bytes}
        return await self._direct_batch(self.stream, request)

    async def last_of(self, stream: str, subjects: list[str]) -> list[Stored]:
        """The last message of each of `subjects` that has one (direct gets, `MULTI_LAST` at a time)."""
        out: list[Stored] = []
        for i in range(0, len(subjects), MULTI_LAST):
            out += await self._direct_batch(stream, {"multi_last": subjects[i : i + MULTI_LAST]})
        return out

    async def _direct_batch(self, stream: str, request: dict[str, Any]) -> list[Stored]:
        """The messages a batched direct get answers, until its end-of-batch status."""
        client = self._client
        inbox = client.new_inbox()
        out: list[Stored] = []
        with _reachable("could not read the log"):
            sub = await client.subscribe(inbox)
            try:
                await client.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
                while True:
                    msg = await sub.next_msg(timeout=REQUEST_TIMEOUT)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status:  # 204: end of the batch; 404: nothing at or after `seq`
                        if status not in ("204", "404"):
                            raise StoreUnavailable(f"JetStream direct get failed: {status} "
                                                   f"{headers.get('Description', '')}")
                        return out
                    out.append(Stored(int(headers["Nats-Sequence"]), headers, msg.data))
            finally:
                await sub.unsubscribe()

    async def purge_before(self, subject: str, sseq: int = 0) -> None:
        """Drop the subject's messages below stream sequence `sseq` (an old epoch, or messages
        compacted), or all of them (`sseq` 0)."""
        request: dict[str, Any] = {"filter": subject, **({"seq": sseq} if sseq else {})}
        result = await self._api(f"STREAM.PURGE.{self.stream}", orjson.dumps(request))
        if "error" in result:
            log.warning("purge failed", extra={"subject": subject, "error": result["error"]})

    async def delete_msg(self, sseq: int) -> None:
        """Drop one message (a compacted copy another replica's index did not take)."""
        result = await self._api(f"STREAM.MSG.DELETE.{self.stream}", orjson.dumps({"seq": sseq, "no_erase": True}))
        if "error" in result:
            log.warning("delete failed", extra={"sseq": sseq, "error": result["error"]})

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        with _reachable("could not follow the session"):
            return await self._client.subscribe(subject, cb=cb)

    async def aclose(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):  # reconnecting: drain refuses; close ends the attempts
                await self.nc.close()
        self.nc = None

    async def _on_error(self, exc: Exception) -> None:
        if self._starting is not None:  # a connect: it raises, or its caller logs once per attempt
            if refused(exc):
                self._refused = str(exc)
                self._starting.cancel()
            elif self._failures >= 0:
                self._down = f"{type(exc).__name__}: {exc}"
                self._failures -= 1
                if self._failures == 0:
                    self._starting.cancel()
            return
        if refused(exc):
            log.error("NATS refused the gateway's credentials: check GATEWAY_NATS_TOKEN_FILE or GATEWAY_NATS_CREDS",
                      extra={"servers": self.shown, "error": str(exc)})
            return
        log.warning("NATS error", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _on_disconnect(self) -> None:
        if self._starting is not None:  # a connect attempt that failed: its caller tells
            return
        if self._closing:
            log.info("nats connection closed")
            return
        log.warning("NATS disconnected: appends answer 503 until it is back")

    async def _on_reconnect(self) -> None:
        log.info("NATS reconnected")
