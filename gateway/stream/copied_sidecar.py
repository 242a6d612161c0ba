"""The compact view's sidecar for a log that is not a local file (the NATS store).

The sidecar's builder reads the log from a file, at the log's own byte offsets. For a log held
elsewhere, the stretch a build needs (from the end of the sidecar's last record to the end of the
log, or one record's range for a resume inside it) is first copied through the log's `read` into
a scratch file of this stream's own, at the same offsets (a sparse file: the bytes before the
stretch take no space), and the scratch file is removed once the build is done. The sidecar itself
is a local cache of each replica, in the log's side-file folder, built once and then extended
with each finished run like the file store's.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import anyio.to_thread

from gateway.store.base import EventLog
from gateway.store.lines import BadLine
from gateway.stream.framing import Compact
from gateway.stream.sidecar import Build, Record, Sidecar

SCRATCH_PREFIX = "agui-events.scratch-"
COPY_BYTES = 1 << 20
"""Log bytes read and written per step of a copy."""


class CopiedSidecar(Sidecar):
    """A `Sidecar` whose builds read a scratch copy of the part of the log they need."""

    def __init__(self, session_dir: Path) -> None:
        super().__init__(session_dir, SCRATCH_PREFIX + secrets.token_hex(6))

    async def update(self, log: EventLog, build: Build | None = None) -> list[Record]:
        await anyio.to_thread.run_sync(lambda: self.path.parent.mkdir(parents=True, exist_ok=True))
        try:
            return await super().update(log, build)
        finally:
            self.log_path.unlink(missing_ok=True)

    async def compact_part(self, first: int, offset: int, stop: int, log: EventLog) -> list[Compact | BadLine]:
        try:
            await self._prepare(log, offset, stop)
            return await super().compact_part(first, offset, stop, log)
        finally:
            self.log_path.unlink(missing_ok=True)

    async def _prepare(self, log: EventLog, start: int, stop: int) -> None:
        """Copy the log's bytes `start..stop` into the scratch file, at their own offsets."""
        self.floor = start
        fd = await anyio.to_thread.run_sync(lambda: os.open(
            self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        try:
            offset = start
            while offset < stop:
                data = await log.read(offset, min(COPY_BYTES, stop - offset))
                if not data:
                    raise OSError(f"the log ended at byte {offset}, before {stop}")
                await anyio.to_thread.run_sync(os.pwrite, fd, data, offset)
                offset += len(data)
        finally:
            os.close(fd)
