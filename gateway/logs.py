"""Logging setup: `text` for people, `json` for machines (one object per line, extras included)."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from urllib.parse import unquote_plus

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message",
}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


_PARAM = re.compile(r"([?&;])([^=&;?#\s\"]+)=([^&;#\s\"]*)")
_SECRET_PARAMS = frozenset({"token", "access_token"})


def _hide(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(2)).strip().lower()
    return f"{match.group(1)}{match.group(2)}=[redacted]" if name in _SECRET_PARAMS else match.group(0)


def redact(text: str) -> str:
    """Hide `?token=` credentials (browser clients put them in URLs, which access logs print).

    Parameter names are compared once URL-decoded, as the query parser reads them: `?%74oken=`
    authenticates exactly like `?token=`, so it is hidden too.
    """
    return _PARAM.sub(_hide, text) if "=" in text else text


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class RepeatLimiter(logging.Filter):
    """One line per `window` seconds for a repeated error (same logger, message and exception
    type); the next one that passes says how many were held back. Without it, an error that
    recurs on every accept, for example running out of descriptors, floods the log."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[tuple[str, object, object], tuple[float, int]] = {}  # key -> (last shown, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        key = (record.name, record.msg, record.exc_info[0] if record.exc_info else None)
        now = self.clock()
        shown, held = self._seen.get(key, (-self.window, 0))
        if now - shown < self.window:
            self._seen[key] = (shown, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} ({held} identical lines held back in the last {self.window:g}s)"
        if len(self._seen) > 1000:  # bounded: forgetting only lets one more line through
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
    handler.addFilter(RepeatLimiter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
