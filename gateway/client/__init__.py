"""Python client for agui-gateway: follow a session's events with resume, and use the HTTP API.

    async with GatewayClient("http://127.0.0.1:8080", "default") as client:
        async for item in client.events("demo"):
            if isinstance(item, Event):
                print(item.seq, item.type)
            elif isinstance(item, Reset):
                ...  # the log restarted: forget what was shown

See docs/client.md.
"""

from gateway.client.http import GatewayClient, split_session_url
from gateway.client.items import (
    Event,
    GatewayError,
    GatewayUnreachable,
    Live,
    Reset,
    Skipped,
    StreamItem,
)
from gateway.client.stream import Backoff, EventStream, Transport

__all__ = [
    "Backoff",
    "Event",
    "EventStream",
    "GatewayClient",
    "GatewayError",
    "GatewayUnreachable",
    "Live",
    "Reset",
    "Skipped",
    "StreamItem",
    "Transport",
    "split_session_url",
]
