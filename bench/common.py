"""What every script in bench/ shares: ports, waiting for a server, and the results page."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / ".cache" / "bench"


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
