"""One run at a time per session across replicas: a lease in the key-value bucket `<stream>_RUNS`.

Key `<session>` holds the run that owns the session's run slot (`{"run", "replica", "at"}`). A
replica takes the slot by writing the key only if it has no live value (compare-and-set on the
key's last sequence: 0, or the sequence of a release marker), renews it every `ttl / 3` while the
run lives, and releases it at the run's end by writing a release marker (`KV-Operation: DEL`,
again compare-and-set, so it never releases a slot another replica took since). Values expire
with the bucket's max age (the lease's TTL), so the slot of a replica that died frees itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

import anyio
import orjson

from gateway.store.base import StoreError
from gateway.store.nats import layout
from gateway.store.nats.conn import Conflict, NatsConn, Stored

log = logging.getLogger("gateway.store.nats")

OPERATION = "KV-Operation"


def holder_of(last: Stored | None) -> str | None:
    """The run holding the slot, given the key's last message; None when the slot is free (pure)."""
    if last is None or last.headers.get(OPERATION) in ("DEL", "PURGE"):
        return None
    try:
        run = orjson.loads(last.data).get("run")
    except (orjson.JSONDecodeError, AttributeError):
        return "?"  # not ours to judge: held
    return str(run) if run is not None else "?"


class RunLocks:
    """This replica's run slots: taken, renewed and released in the shared bucket."""

    def __init__(self, conn: NatsConn, ttl: float) -> None:
        self._conn = conn
        self.ttl = ttl
        self.bucket = f"{conn.stream}_RUNS"
        self._stream = f"KV_{self.bucket}"
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._held: dict[str, tuple[str, int]] = {}  # session -> (run id, sequence of our last write)
        self._writing = anyio.Lock()  # a renewal and a release of one slot never race each other

    def _subject(self, session: str) -> str:
        return f"$KV.{self.bucket}.{session}"

    async def ensure_bucket(self) -> None:
        """Create the bucket; an existing one's max age is the TTL in force (renewals follow it)."""
        config = await self._conn.ensure_bucket(self.bucket, max_age_s=self.ttl)
        if config.get("max_age"):
            self.ttl = int(config["max_age"]) / 1e9

    async def acquire(self, session: str, run_id: str) -> str | None:
        """Take the session's run slot for `run_id`: None once taken, else the run that holds it."""
        subject = self._subject(session)
        value = orjson.dumps({"run": run_id, "replica": self.replica, "at": int(time.time() * 1000)})
        while True:
            last = await self._conn.get(last_by=subject, stream=self._stream)
            holder = holder_of(last)
            if holder is not None:
                return holder
            expect = str(last.sseq if last is not None else 0)
            try:
                sseq = await self._conn.publish(subject, value, {layout.EXPECTED_LAST_SUBJECT_SEQ: expect})
            except Conflict:
                continue  # taken or released meanwhile: look again
            self._held[session] = (run_id, sseq)
            return None

    async def release(self, session: str, run_id: str) -> None:
        """Free the slot if `run_id` holds it; if NATS cannot be reached, it expires by itself."""
        async with self._writing:
            held = self._held.get(session)
            if held is None or held[0] != run_id:
                return
            del self._held[session]
            try:
                await self._conn.publish(self._subject(session), b"",
                                         {OPERATION: "DEL", layout.EXPECTED_LAST_SUBJECT_SEQ: str(held[1])})
            except Conflict:
                pass  # it expired and another replica took it: not ours to free
            except StoreError as exc:
                log.warning("run slot not released; it expires by itself",
                            extra={"session": session, "run": run_id, "error": str(exc)})

    async def run(self) -> None:
        """Renew every slot this replica holds, three times per TTL."""
        while True:
            await anyio.sleep(self.ttl / 3)
            async with self._writing:
                for session, (run_id, sseq) in list(self._held.items()):
                    await self._renew(session, run_id, sseq)

    async def _renew(self, session: str, run_id: str, sseq: int) -> None:
        value = orjson.dumps({"run": run_id, "replica": self.replica, "at": int(time.time() * 1000)})
        try:
            renewed = await self._conn.publish(self._subject(session), value,
                                               {layout.EXPECTED_LAST_SUBJECT_SEQ: str(sseq)})
        except Conflict:
            log.warning("run slot lost: it expired while NATS was out of reach, and another run may start",
                        extra={"session": session, "run": run_id})
            del self._held[session]
            return
        except StoreError as exc:
            log.debug("run slot not renewed", extra={"session": session, "error": str(exc)})
            return
        self._held[session] = (run_id, renewed)
