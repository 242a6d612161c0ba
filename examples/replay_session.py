"""Replay one session to a JSONL file with the Python client.

    python examples/replay_session.py --session demo --out demo.jsonl

Against the embedded default (`make run`) it saves the demo conversation. The file gets one
stored event per line, like the session's log; a reset of the log starts the file over.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from gateway.client import Event, GatewayClient, Reset


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL")
    parser.add_argument("--project", default="default")
    parser.add_argument("--session", default="demo")
    parser.add_argument("--out", default="session.jsonl")
    args = parser.parse_args(argv)
    count = 0
    async with GatewayClient(args.url, args.project) as client:
        stream = client.events(args.session, follow=False)
        with open(args.out, "wb") as out:  # noqa: ASYNC230 - a local file, written as events arrive
            async for item in stream:
                if isinstance(item, Event):
                    out.write(item.raw + b"\n")
                    count += 1
                elif isinstance(item, Reset):
                    out.seek(0)
                    out.truncate()
                    count = 0
    print(f"{count} events written to {args.out}; resume later with after={stream.cursor}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1:]))
