"""What every script in bench/ shares: ports, waiting for a server, and the results page."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import websockets

DATA = Path(__file__).resolve().parent.parent / ".cache" / "bench"


def dataset(name: str, make: Callable[[Path], object]) -> Path:
    """`.cache/bench/<name>`, made by `make(path)` the first time (generated data is kept for reruns)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / name
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr)
        make(path)
    return path


async def text_frames(url: str) -> AsyncIterator[str]:
    """The text frames of one WebSocket stream, as a bench client reads them (no compression)."""
    async with websockets.connect(url, compression=None, max_size=None, open_timeout=600) as ws:
        async for frame in ws:
            assert isinstance(frame, str)
            yield frame


def batch_events(line: str) -> int:
    """Events in one WebSocket batch line, read from its head (or its `seqs`, in the compact view)."""
    seqs = line.rfind(',"seqs":[')
    if seqs != -1:
        return line.count(",", seqs + 9) + 1
    head = line[: line.index(',"cursor"')]
    first, last = (int(x.split(":")[1]) for x in head[1:].split(","))
    return last - first + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def report(out: Path | None, title: str, intro: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a result table and, with `out`, put it in its own section of the benchmarks page."""
    table = "\n".join([
        intro,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
    ])
    print(table)
    if out is not None:
        write_section(out, title, table)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or add) one `## title` section of the benchmarks page, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured with the scripts in `bench/`.\n"
    marker = f"## {title}"
    section = f"{marker}\n\n{body}\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + len(marker))
        rest = "\n" + text[nxt + 1:] if nxt != -1 else ""
        text = text[:start] + section + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
