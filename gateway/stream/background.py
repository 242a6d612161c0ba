"""The process that runs the compact cache's background builds, and the gateway's handle on it.

Compaction is Python work: in a thread of the gateway it would hold the interpreter lock, and
every await of the event loop (an append's answer, a frame to a follower) would queue behind it.
So background builds run in one child process of each gateway process, at nice 10, one at a
time: the gateway sends a job (one line of JSON: the sidecar, the log's epoch, size and bad lines,
the CPU share) and reads `ok` or the error. The child dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
from anyio.streams.buffered import BufferedByteReceiveStream

from gateway.store.lines import BadLine
from gateway.stream.sidecar import Sidecar, read_records

_PR_SET_PDEATHSIG = 1
NICE = 10


class BuildError(Exception):
    """A background build failed, or its process is gone (the next job starts another)."""


class BuildProcess:
    """The gateway's side: one child, started at the first job and again if it died."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._proc: anyio.abc.Process | None = None
        self._out: BufferedByteReceiveStream | None = None

    async def __call__(self, sidecar: Sidecar, epoch: str, lines: int, end: int, bad: dict[int, BadLine],
                       distrust: tuple[int, int] | None) -> None:
        job = {"dir": str(sidecar.path.parent), "log": sidecar.log_path.name, "floor": sidecar.floor,
               "epoch": epoch, "lines": lines, "end": end, "distrust": distrust, "share": self.share,
               "bad": [[b.seq, b.offset, b.length, b.reason] for b in bad.values()]}
        proc, out = await self._started()
        try:
            assert proc.stdin is not None
            await proc.stdin.send(orjson.dumps(job) + b"\n")
            answer = await out.receive_until(b"\n", 1 << 16)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead) as exc:
            await self.aclose()
            raise BuildError("the compact cache's build process ended") from exc
        if answer != b"ok":
            raise BuildError(answer.decode(errors="replace"))

    async def _started(self) -> tuple[anyio.abc.Process, BufferedByteReceiveStream]:
        if self._proc is None or self._proc.returncode is not None or self._out is None:
            self._proc = await anyio.open_process([sys.executable, "-m", __name__, str(os.getpid())],
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
            assert self._proc.stdout is not None
            self._out = BufferedByteReceiveStream(self._proc.stdout)
        return self._proc, self._out

    async def aclose(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                await proc.aclose()


def run_job(job: dict[str, Any]) -> None:
    """One build, in the child: as `Sidecar.update` would in a thread, but paced to `share`."""
    sidecar = Sidecar(Path(job["dir"]), job["log"])
    sidecar.floor = job["floor"]
    bad = {seq: BadLine(seq, offset, length, reason) for seq, offset, length, reason in job["bad"]}
    fd = sidecar.open()
    try:
        records, valid = read_records(fd, job["epoch"], job["lines"], job["end"])
        distrust = tuple(job["distrust"]) if job["distrust"] else None
        sidecar.extend_file(fd, job["epoch"], job["lines"], job["end"], bad, records, 0 if distrust else valid,
                            distrust, job["share"])
    finally:
        os.close(fd)


def main(parent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return  # the gateway was gone before the line above
    os.nice(NICE)
    for line in sys.stdin.buffer:
        try:
            run_job(orjson.loads(line))
            answer = b"ok"
        except Exception as exc:  # reported to the gateway, which logs it; the next job goes on
            answer = f"{type(exc).__name__}: {exc}".encode()[:4096].replace(b"\n", b" ")
        sys.stdout.buffer.write(answer + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]))
