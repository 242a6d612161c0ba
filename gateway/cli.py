"""Command line: `agui-gateway serve|replay|append|export|doctor|migrate` (PROTOCOL §8).

Exit codes (docs/cli.md): 0 success; 1 a local file cannot be read or written; 2 usage or
configuration error (argparse also uses 2); 3 the gateway refused the request (400/401/403/404/
409/413/...; the message says which); 4 the gateway could not be reached (or a stream kept
failing past `--retries`); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
import httpx
import orjson

from gateway.client import (
    Event,
    GatewayClient,
    GatewayError,
    GatewayUnreachable,
    Live,
    Reset,
    Skipped,
    split_session_url,
)
from gateway.config import OPTIONS, ConfigError, Settings
from gateway.progress import Progress

if TYPE_CHECKING:
    from gateway.store.migrate import Outcome

EXIT_LOCAL, EXIT_USAGE, EXIT_HTTP, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


def _flag(env: str) -> str:
    return "--" + env.removeprefix("GATEWAY_").lower().replace("_", "-")


def _note(message: str) -> None:
    print(f"agui-gateway: {message}", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    _note(message)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.server import serve

    overrides = {opt.field: getattr(args, opt.field) for opt in OPTIONS}
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from gateway.workers import supervise

        return supervise(settings)
    return serve(settings)


def _client(args: argparse.Namespace) -> tuple[GatewayClient, str]:
    base, project, session = split_session_url(args.url)
    token = args.token or os.environ.get("GATEWAY_TOKEN")
    return GatewayClient(base, project, token=token), session


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[BinaryIO]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as fh:
        yield fh


async def _replay_total(client: GatewayClient, session: str, after: str | None) -> int | None:
    """Events the replay will write, from the status endpoint's head (None if unknown)."""
    head = (await client.status(session))["head"]
    if head is None:
        return 0
    epoch, seq = head.rsplit("-", 1)
    if after and after.rsplit("-", 1)[0] == epoch:
        return max(0, int(seq) - int(after.rsplit("-", 1)[1]))
    return int(seq)


async def _replay(args: argparse.Namespace) -> int:
    client, session = _client(args)
    async with client:
        progress = Progress(sys.stderr, await _replay_total(client, session, args.after)) \
            if sys.stderr.isatty() else None
        events = nbytes = 0
        live = False
        stream = client.events(session, after=args.after, follow=args.follow, transport="sse",
                               max_retries=args.retries, view=args.view)
        try:
            with _output(args.out) as out:
                async for item in stream:
                    if isinstance(item, Event):
                        line = item.raw + b"\n"
                        out.write(line)
                        events, nbytes = events + 1, nbytes + len(line)
                        if live:
                            out.flush()
                        elif progress:
                            progress.update(events, nbytes)
                    elif isinstance(item, Live) and not live:
                        live = True
                        out.flush()
                        if progress:
                            progress.finish(events, nbytes)
                        if args.follow:
                            _note(f"caught up after {events} events; following")
                    elif isinstance(item, Reset):
                        _note(f"the log was reset (epoch {item.epoch}); events restart at seq 1")
                    elif isinstance(item, Skipped):
                        _note(f"skipped seq {item.seq} ({item.reason}, {item.bytes} bytes)")
        finally:
            await stream.aclose()
            if progress and not live:
                progress.finish(events, nbytes)
            _note(f"{events} events, {nbytes / 1e6:.1f} MB; last cursor {stream.cursor}")
    return 0


async def _append_stream(args: argparse.Namespace, fd: int) -> int:
    """`append --stream`: the file (or stdin, as it arrives) sent as one streaming NDJSON append."""
    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await anyio.to_thread.run_sync(os.read, fd, 65536):
            yield chunk

    client, session = _client(args)
    async with client:
        try:
            result = await client.append_stream(session, chunks())
        except GatewayError as exc:
            if "stored" in exc.detail:
                _note(f"stored {exc.detail['stored']} events before the error; last cursor {exc.detail['last']}")
            raise
    print(orjson.dumps(result).decode())
    return 0


async def _append(args: argparse.Namespace, data: bytes) -> int:
    try:  # a JSON array or a single (even pretty-printed) object; anything else is sent as NDJSON
        orjson.loads(data)
        media = "application/json"
    except orjson.JSONDecodeError:
        media = "application/x-ndjson"
    client, session = _client(args)
    async with client:
        result = await client.append(session, data, content_type=media)
    print(orjson.dumps(result).decode())
    return 0


async def _export(args: argparse.Namespace) -> int:
    client, session = _client(args)
    async with client:
        with _output(args.out) as out:
            async for chunk in client.export(session, args.format):
                out.write(chunk)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    return anyio.run(_replay, args)


def cmd_append(args: argparse.Namespace) -> int:
    if args.stream:
        if args.file == "-":
            return anyio.run(_append_stream, args, sys.stdin.fileno())
        with open(args.file, "rb") as src:
            return anyio.run(_append_stream, args, src.fileno())
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    return anyio.run(_append, args, data)


def cmd_export(args: argparse.Namespace) -> int:
    return anyio.run(_export, args)

def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import run_doctor

    return run_doctor(Path(args.dir), repair=args.repair, out=sys.stdout, assign_to=args.assign, compact=args.compact,
                      bar=sys.stderr if sys.stderr.isatty() else None)


MIGRATE_SETTINGS = ("nats_url", "nats_stream", "nats_replicas", "nats_creds", "nats_token_file", "max_event_bytes")


class MigrateView:
    """What `migrate` shows: a progress bar on a terminal (stderr), and one line per session on stdout."""

    def __init__(self) -> None:
        self.events = self.bytes = 0
        self.bar: Progress | None = None

    def start(self, sessions: int, total_bytes: int) -> None:
        _note(f"{sessions} sessions, {total_bytes / 1e6:.1f} MB")
        if sys.stderr.isatty():
            self.bar = Progress(sys.stderr, None, total_bytes)

    def copied(self, events: int, nbytes: int) -> None:
        self.events, self.bytes = self.events + events, self.bytes + nbytes
        if self.bar:
            self.bar.update(self.events, self.bytes)

    def finished(self, outcome: Outcome) -> None:
        if self.bar:
            self.bar.out.write("\r\033[K")
        print(outcome.line(), flush=True)
        if self.bar:
            self.bar.update(self.events, self.bytes, force=True)


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.store import migrate

    conn = migrate.nats_conn(settings.nats_url, settings.nats_stream, settings.nats_replicas,
                             creds=settings.nats_creds, token_file=settings.nats_token_file)
    view = MigrateView()
    await conn.connect()
    try:
        if args.to:
            outcomes = await migrate.to_nats(Path(args.dir), conn, view, project=args.project,
                                             max_event_bytes=settings.max_event_bytes)
        else:
            outcomes = await migrate.from_nats(Path(args.dir), conn, view, max_event_bytes=settings.max_event_bytes)
    finally:
        if view.bar:
            view.bar.finish(view.events, view.bytes)
        await conn.aclose()
    refused = sum(o.status == "refused" for o in outcomes)
    _note(f"{len(outcomes) - refused} sessions done, {refused} left as they were; "
          f"{view.events} events copied by this run")
    return EXIT_LOCAL if refused else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import logging

    from gateway.store.base import StoreUnavailable

    try:
        settings = Settings.from_env(os.environ, **{f: getattr(args, f) for f in MIGRATE_SETTINGS})
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    logging.getLogger("gateway.store.nats").setLevel(logging.ERROR)  # reconnect chatter, not the command's output
    try:
        return anyio.run(_migrate, args, settings)
    except StoreUnavailable as exc:
        return _fail(f"{exc}; nothing is lost: run again to go on where this stopped", EXIT_UNREACHABLE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agui-gateway",
                                     description="Stream AG-UI sessions to user interfaces.")
    sub = parser.add_subparsers(dest="command", required=True)

    def settings_flags(p: argparse.ArgumentParser, fields: Callable[[str], bool]) -> None:
        for opt in OPTIONS:
            if fields(opt.field):
                p.add_argument(_flag(opt.env), dest=opt.field, default=None, type=opt.parse,
                               help=f"{opt.help} [{opt.env}, default {opt.default!r}]")

    serve = sub.add_parser("serve", help="run the gateway (flags mirror the GATEWAY_* environment)")
    settings_flags(serve, lambda field: True)
    serve.set_defaults(func=cmd_serve)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("url", help="session URL, e.g. http://127.0.0.1:8080/v1/projects/default/sessions/demo")
        p.add_argument("--token", help="bearer token (or GATEWAY_TOKEN)")
        return p

    replay = client("replay", "write a session's events to stdout as NDJSON, one stored event per line")
    replay.add_argument("--after", help="resume strictly after this cursor (printed on stderr at the end)")
    replay.add_argument("--follow", action="store_true", help="keep streaming live events until interrupted")
    replay.add_argument("--view", choices=("raw", "compact"),
                        help="compact: finished runs with their deltas merged (default: the gateway's)")
    replay.add_argument("--out", help="write to this file instead of stdout")
    replay.add_argument("--retries", type=int, default=5,
                        help="consecutive failed reconnections before giving up (default 5)")
    replay.set_defaults(func=cmd_replay)

    append = client("append", "append events from a JSON/NDJSON file (- for stdin)")
    append.add_argument("file")
    append.add_argument("--stream", action="store_true",
                        help="NDJSON only: send as it is read (stdin as it arrives), each line stored as it "
                             "reaches the gateway; a failure part way says how many were stored")
    append.set_defaults(func=cmd_append)

    export = client("export", "download a session's whole log")
    export.add_argument("--format", choices=("jsonl", "json"), default="jsonl")
    export.add_argument("--out", help="write to this file instead of stdout")
    export.set_defaults(func=cmd_export)

    doctor = sub.add_parser("doctor", help="check session logs under a state dir; --repair fixes torn tails")
    doctor.add_argument("dir", help="state dir (the folder holding sessions/)")
    doctor.add_argument("--repair", action="store_true",
                        help="cut torn tails (set aside) and migrate legacy logs")
    doctor.add_argument("--assign", nargs="+", metavar=("PROJECT", "SESSION"),
                        help="give unclaimed legacy folders (those named, or all) to PROJECT")
    doctor.add_argument("--compact", action="store_true",
                        help="build every missing compact-view cache (agui-events.compact), with a progress bar")
    doctor.set_defaults(func=cmd_doctor)

    mig = sub.add_parser("migrate", help="copy every session between a state dir and NATS JetStream, "
                                         "keeping seqs, epochs and cursors; safe to run again")
    way = mig.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", choices=("nats",), help="from the state dir's files into NATS")
    way.add_argument("--from", dest="from_", choices=("nats",), help="from NATS into the state dir's files")
    mig.add_argument("dir", help="state dir (the folder holding sessions/)")
    mig.add_argument("--project", default="default", help="project that claims sessions without meta.json")
    settings_flags(mig, lambda field: field in MIGRATE_SETTINGS)
    mig.set_defaults(func=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except GatewayError as exc:
        return _fail(str(exc), EXIT_HTTP)
    except (httpx.TransportError, GatewayUnreachable) as exc:
        return _fail(f"cannot reach the gateway: {exc}", EXIT_UNREACHABLE)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a local file (the gateway's errors arrive as the two above)
        return _fail(str(exc), EXIT_LOCAL)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
