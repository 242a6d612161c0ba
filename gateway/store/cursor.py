"""Cursors (PROTOCOL §2): `<epoch>-<seq>`, opaque to clients, exact to the server."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_EPOCH = re.compile(r"[a-z0-9]{6,16}")
_CURSOR = re.compile(r"([a-z0-9]{6,16})-([1-9][0-9]{0,18})")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class CursorError(ValueError):
    """A cursor string is not of the form `<epoch>-<seq>`."""


@dataclass(frozen=True, slots=True)
class Cursor:
    epoch: str
    seq: int

    def __str__(self) -> str:
        return format_cursor(self.epoch, self.seq)


def format_cursor(epoch: str, seq: int) -> str:
    """The one place a cursor is spelled (the byte templates of the frame encoders aside)."""
    return f"{epoch}-{seq}"


def parse_cursor(text: str) -> Cursor:
    """Parse a cursor; the seq is 1-based, so `e-0` is rejected like any other malformed text."""
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise CursorError(f"malformed cursor {text[:64]!r}: expected '<epoch>-<seq>', e.g. 'k7q2m9-42'")
    return Cursor(match.group(1), int(match.group(2)))


def is_epoch(text: str) -> bool:
    return _EPOCH.fullmatch(text) is not None


def new_epoch() -> str:
    """A fresh epoch: 10 random base-36 characters, so two logs never share one in practice."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(10))
