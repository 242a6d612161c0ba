"""WebSocket handshakes start a few per event-loop turn (gateway/transports/admission.py).

The gate's logic is tested with a scheduler the test turns by hand; the server tests run a real
uvicorn server with real websockets clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import anyio
import orjson
import pytest
import websockets

from gateway.transports.admission import TurnGate
from gateway.transports.uvicorn_http import _GATES
from gateway.transports.uvicorn_ws import GatewayWSProtocol
from tests.conftest import RunningGateway


class Turns:
    """A `call_soon` whose callbacks run when the test says a new loop turn starts."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def turn(self) -> None:
        due, self.soon = self.soon, []
        for callback in due:
            callback()


@pytest.mark.unit
def test_at_most_per_turn_start_in_one_turn_and_the_rest_in_arrival_order() -> None:
    turns, started = Turns(), []
    gate = TurnGate(turns.call_soon, per_turn=3)
    for i in range(10):
        gate.admit(lambda i=i: started.append(i))
    assert started == [0, 1, 2] and gate.waiting == 7
    turns.turn()
    assert started == [0, 1, 2, 3, 4, 5]
    gate.admit(lambda: started.append(10))  # queued behind those waiting, even with room left later
    turns.turn()
    assert started == list(range(9))
    turns.turn()
    assert started == list(range(11)) and gate.waiting == 0
    turns.turn()
    assert turns.soon == []  # idle: nothing scheduled


@pytest.mark.unit
def test_the_budget_comes_back_every_turn() -> None:
    turns, started = Turns(), []
    gate = TurnGate(turns.call_soon, per_turn=2)
    for _ in range(3):
        gate.admit(lambda: started.append(1))
        gate.admit(lambda: started.append(1))
        turns.turn()
    assert len(started) == 6 and gate.waiting == 0


@pytest.mark.unit
def test_a_start_that_raises_does_not_strand_the_others() -> None:
    turns, started = Turns(), []
    gate = TurnGate(turns.call_soon, per_turn=1)

    def boom() -> None:
        raise RuntimeError("boom")

    gate.admit(lambda: started.append(0))
    gate.admit(boom)
    gate.admit(lambda: started.append(2))
    with pytest.raises(RuntimeError):
        turns.turn()
    turns.turn()
    assert started == [0, 2]


@pytest.mark.server
@pytest.mark.anyio
async def test_a_burst_of_connections_all_open_and_follow(gw: RunningGateway) -> None:
    await gw.append("s", [{"type": "RUN_STARTED", "n": 0}])
    url = gw.events_url("s", ws=True) + "?tail=1"
    clients = await asyncio.gather(*(websockets.connect(url) for _ in range(60)))
    try:
        for ws in clients:
            assert orjson.loads(await ws.recv())["control"] == "hello"
        await gw.append("s", [{"type": "RUN_FINISHED", "n": 1}])
        for ws in clients:
            seen: list[object] = []
            with anyio.fail_after(10):
                while not any(isinstance(e, dict) and e.get("n") == 1 for e in seen):
                    msg = orjson.loads(await ws.recv())
                    seen += msg.get("events", [])
    finally:
        for ws in clients:
            await ws.close()


def _raw_upgrade(gw: RunningGateway) -> socket.socket:
    host, port = "127.0.0.1", gw.settings.port
    sock = socket.create_connection((host, port))
    sock.sendall(f"GET /v1/projects/p/sessions/s/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    return sock


@contextlib.contextmanager
def _held_gate(per_turn: int) -> Iterator[tuple[TurnGate, Turns]]:
    """The server's gate replaced by one whose turns the test gives."""
    loop = asyncio.get_running_loop()
    turns = Turns()
    gate = _GATES[loop] = TurnGate(turns.call_soon, per_turn=per_turn)
    try:
        yield gate, turns
    finally:
        del _GATES[loop]


async def _waiting(gate: TurnGate, n: int) -> None:
    with anyio.fail_after(10):
        while gate.waiting < n:
            await asyncio.sleep(0.01)


@pytest.mark.server
@pytest.mark.anyio
async def test_a_shutdown_closes_the_connections_waiting_for_their_turn(gw: RunningGateway) -> None:
    await gw.append("s", [{"type": "RUN_STARTED"}])
    with _held_gate(per_turn=0) as (gate, turns):  # nobody gets a turn until the shutdown
        sock = _raw_upgrade(gw)
        await _waiting(gate, 1)
        for conn in list(gw.server.server_state.connections):
            conn.shutdown()  # what uvicorn does on SIGTERM; h11 alone would raise here
        sock.settimeout(10)
        assert await anyio.to_thread.run_sync(sock.recv, 100) == b""  # closed, never answered
        sock.close()
        gate.per_turn = 1
        turns.turn()  # its turn comes after the close: nothing starts on the closed transport
        assert gate.waiting == 0
        assert not any(isinstance(c, GatewayWSProtocol) for c in gw.server.server_state.connections)


@pytest.mark.server
@pytest.mark.anyio
async def test_a_client_gone_before_its_turn_does_not_hold_up_the_next_one(gw: RunningGateway) -> None:
    await gw.append("s", [{"type": "RUN_STARTED"}])
    with _held_gate(per_turn=1) as (gate, turns):
        holder = await websockets.connect(gw.events_url("s", ws=True))  # takes this turn's budget
        gone = _raw_upgrade(gw)
        await _waiting(gate, 1)
        gone.close()  # leaves while it waits for its turn (reading is paused: seen at its turn)
        waiting = asyncio.ensure_future(websockets.connect(gw.events_url("s", ws=True)))
        await _waiting(gate, 2)
        await asyncio.sleep(0.05)  # time for the handshake's answer, were it not held
        assert not waiting.done()  # held by the gate
        while not waiting.done():
            turns.turn()
            await asyncio.sleep(0.01)
        opened = await waiting
        assert orjson.loads(await opened.recv())["control"] == "hello"
        await opened.close()
        await holder.close()
