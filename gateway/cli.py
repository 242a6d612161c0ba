"""Command line: `agui-gateway serve|replay|append|export|doctor` (PROTOCOL §8)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from gateway.config import OPTIONS, ConfigError, Settings

EXIT_USAGE, EXIT_HTTP, EXIT_UNREACHABLE = 2, 3, 4


def _flag(env: str) -> str:
    return "--" + env.removeprefix("GATEWAY_").lower().replace("_", "-")


def _events_url(url: str) -> str:
    """Accept a session URL or its /events URL."""
    url = url.rstrip("/")
    return url if url.endswith("/events") else url + "/events"


def _session_url(url: str) -> str:
    return url.rstrip("/").removesuffix("/events")


def _fail(message: str, code: int) -> int:
    print(f"agui-gateway: {message}", file=sys.stderr)
    return code


def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        resp.read()
        try:
            detail = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = resp.text[:200]
        raise _HttpFailure(f"{resp.status_code}: {detail}")


class _HttpFailure(Exception):
    pass


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.server import serve

    overrides = {opt.field: getattr(args, opt.field) for opt in OPTIONS}
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    setup_logging(settings.log_level, settings.log_format)
    serve(settings)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    params = {"follow": "1" if args.follow else "0"}
    if args.after:
        params["after"] = args.after
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    count = 0
    try:
        with httpx.stream("GET", _events_url(args.url), params=params, timeout=None,
                          headers={"accept": "application/x-ndjson", **_auth(args)}) as resp:
            _check(resp)
            for line in resp.iter_lines():
                out.write(line.encode() + b"\n")
                count += 1
                if count % 10000 == 0 and sys.stderr.isatty():
                    print(f"\r{count} lines", end="", file=sys.stderr)
        out.flush()
    finally:
        if args.out:
            out.close()
    prefix = "\r" if sys.stderr.isatty() else ""
    print(f"{prefix}{count} lines", file=sys.stderr)
    return 0


def cmd_append(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    resp = httpx.post(_events_url(args.url), content=data, timeout=60,
                      headers={"content-type": "application/x-ndjson", **_auth(args)})
    _check(resp)
    print(resp.text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    try:
        with httpx.stream("GET", _session_url(args.url) + "/export", params={"format": args.format},
                          timeout=None, headers=_auth(args)) as resp:
            _check(resp)
            for chunk in resp.iter_bytes():
                out.write(chunk)
        out.flush()
    finally:
        if args.out:
            out.close()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import run_doctor

    return run_doctor(Path(args.dir), repair=args.repair, out=sys.stdout, project=args.project)


def _auth(args: argparse.Namespace) -> dict[str, str]:
    token = args.token or os.environ.get("GATEWAY_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agui-gateway", description="Stream AG-UI sessions to user interfaces.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (flags mirror the GATEWAY_* environment)")
    for opt in OPTIONS:
        serve.add_argument(_flag(opt.env), dest=opt.field, default=None, type=opt.parse,
                           help=f"{opt.help} [{opt.env}, default {opt.default!r}]")
    serve.set_defaults(func=cmd_serve)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("url", help="session URL, e.g. http://127.0.0.1:8080/v1/projects/default/sessions/demo")
        p.add_argument("--token", help="bearer token (or GATEWAY_TOKEN)")
        return p

    replay = client("replay", "write a session's events to stdout as NDJSON")
    replay.add_argument("--after", help="resume strictly after this cursor")
    replay.add_argument("--follow", action="store_true", help="keep streaming live events")
    replay.add_argument("--out", help="write to this file instead of stdout")
    replay.set_defaults(func=cmd_replay)

    append = client("append", "append events from a JSON/NDJSON file (- for stdin)")
    append.add_argument("file")
    append.set_defaults(func=cmd_append)

    export = client("export", "download a session's whole log")
    export.add_argument("--format", choices=("jsonl", "json"), default="jsonl")
    export.add_argument("--out", help="write to this file instead of stdout")
    export.set_defaults(func=cmd_export)

    doctor = sub.add_parser("doctor", help="check session logs under a state dir; --repair fixes torn tails")
    doctor.add_argument("dir", help="state dir (the folder holding sessions/)")
    doctor.add_argument("--repair", action="store_true", help="cut torn tails (set aside) and migrate legacy logs")
    doctor.add_argument("--project", default="default", help="project that claims sessions without meta.json")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except _HttpFailure as exc:
        return _fail(str(exc), EXIT_HTTP)
    except httpx.TransportError as exc:
        return _fail(f"cannot reach the gateway: {exc}", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
