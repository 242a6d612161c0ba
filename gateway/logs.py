"""Logging setup: `text` for people, `json` for machines (one object per line, extras included)."""

from __future__ import annotations

import logging
import re
import sys
import time
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


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
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
