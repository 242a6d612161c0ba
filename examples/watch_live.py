"""Follow a session and print its conversation as it streams (text as it is typed, tool calls, results).

    python examples/watch_live.py --session demo

`--runs N` stops after N finished runs (the demo session finishes one every ~10 s).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import anyio

from gateway.client import Event, GatewayClient, Live, Reset


def render(event: dict[str, Any], out: TextIO) -> None:
    """Print one AG-UI event as part of a running transcript."""
    kind = event.get("type")
    if kind == "RUN_STARTED":
        out.write(f"--- run {event.get('runId')} ---\n")
    elif kind == "TEXT_MESSAGE_START":
        out.write(f"{event.get('role', 'assistant')}: ")
    elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CHUNK"):
        out.write(str(event.get("delta") or ""))
    elif kind in ("TEXT_MESSAGE_END", "TOOL_CALL_END"):
        out.write(")\n" if kind == "TOOL_CALL_END" else "\n")
    elif kind == "TOOL_CALL_START":
        out.write(f"  tool {event.get('toolCallName')}(")
    elif kind == "TOOL_CALL_ARGS":
        out.write(str(event.get("delta", "")))
    elif kind == "TOOL_CALL_RESULT":
        out.write(f"  result: {event.get('content')}\n")
    elif kind == "RUN_FINISHED":
        out.write("--- finished ---\n")
    out.flush()


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL")
    parser.add_argument("--project", default="default")
    parser.add_argument("--session", default="demo")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many finished runs (0: never)")
    args = parser.parse_args(argv)
    finished = 0
    async with GatewayClient(args.url, args.project) as client, client.events(args.session) as stream:
        async for item in stream:
            if isinstance(item, Event):
                render(item.data, sys.stdout)
                finished += item.type == "RUN_FINISHED"
                if finished == args.runs:
                    break
            elif isinstance(item, Live):
                print("=== live ===", flush=True)
            elif isinstance(item, Reset):
                print("=== the session was restarted ===", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1:]))
