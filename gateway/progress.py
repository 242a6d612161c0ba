"""The progress line of the long commands (replay, migrate, doctor --compact), on a terminal."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """One status line on stderr during replay or migrate: events, MB, rate and ETA (with a bar when
    the bytes to go are known), redrawn ~10 times a second."""

    def __init__(self, out: TextIO, total: int | None, total_bytes: int | None = None) -> None:
        self.out, self.total, self.total_bytes = out, total, total_bytes
        self.started, self.drawn = time.monotonic(), 0.0

    def update(self, events: int, nbytes: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn < 0.1:
            return
        self.drawn = now
        rate = events / max(now - self.started, 1e-6)
        parts = [f"{events:,}" + (f"/{self.total:,}" if self.total else "") + " events",
                 f"{nbytes / 1e6:.1f} MB", f"{rate:,.0f} ev/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {max(0, self.total - events) / rate:.0f}s")
        if self.total_bytes:
            done = min(1.0, nbytes / self.total_bytes)
            parts[1] = f"{nbytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB"
            parts.insert(0, f"[{'#' * round(done * 24):<24}] {done:4.0%}")
            if nbytes:
                parts.append(f"ETA {(self.total_bytes - nbytes) * (now - self.started) / nbytes:.0f}s")
        self.out.write("\r\033[K" + "  ".join(parts))
        self.out.flush()

    def finish(self, events: int, nbytes: int) -> None:
        """Show the final count, then leave the line clean for the messages that follow."""
        self.update(events, nbytes, force=True)
        self.out.write("\r\033[K")
        self.out.flush()
