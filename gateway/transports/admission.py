"""How many new WebSocket connections start per turn of the event loop.

Opening a stream costs a few hundred microseconds of Python (the handshake parsed by h11 and by
websockets, the ASGI app's checks, the seek and the replay), and the live work of every stream
already open waits behind it in the loop's one queue: an append takes several loop turns to
reach its followers (received, written, synced, published). When hundreds of clients connect at
once (a deploy, a network blip, a bench's tabs opening), one turn would open all of them and
every turn of the live path would last that long: measured, a storm of 400 followers held the
live events of the 4,000 appends/s already flowing for up to 300 ms.

`TurnGate` starts at most `per_turn` openings in one turn and queues the others, in arrival
order, for the next turns, so each turn does a bounded amount of opening and the live path moves
on every turn. Nothing here does I/O: the gate is given the loop's `call_soon`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

OPENS_PER_TURN = 8
"""WebSocket handshakes started per event-loop turn (each about 0.3 ms of CPU)."""


class TurnGate:
    """Runs callbacks now while this turn's budget lasts, else in later turns, first come first."""

    __slots__ = ("_call_soon", "_left", "_queue", "_scheduled", "per_turn")

    def __init__(self, call_soon: Callable[[Callable[[], None]], object], per_turn: int = OPENS_PER_TURN) -> None:
        self._call_soon = call_soon
        self.per_turn = per_turn
        self._left = per_turn
        self._queue: deque[Callable[[], None]] = deque()
        self._scheduled = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def admit(self, start: Callable[[], None]) -> None:
        """Run `start` now if this turn has room and nobody waits before it; else queue it."""
        self._schedule()  # the budget comes back at the next turn
        if self._queue or self._left <= 0:
            self._queue.append(start)
            return
        self._left -= 1
        start()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._scheduled = False
        self._left = self.per_turn
        queue = self._queue
        if queue:
            self._schedule()  # before any start runs: one that raises must not strand the rest
        while queue and self._left > 0:
            self._left -= 1
            queue.popleft()()
