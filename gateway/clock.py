"""Wall-clock time as the protocol writes it (event timestamps, heartbeats, `lastSeen`)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Unix time in milliseconds."""
    return int(time.time() * 1000)
