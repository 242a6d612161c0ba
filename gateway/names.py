"""Project and session names (PROTOCOL §1): DNS-1123 labels, checked before any file is touched."""

from __future__ import annotations

import re

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class NameError_(ValueError):
    """A project or session name is not a DNS-1123 label."""


def is_valid_name(name: str) -> bool:
    return _LABEL.fullmatch(name) is not None


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a DNS-1123 label, else raise with a message that says why."""
    if not is_valid_name(name):
        raise NameError_(
            f"invalid {kind} name {name[:80]!r}: must be a DNS-1123 label "
            "(lowercase letters, digits and '-', 1-63 characters, starting and ending with a letter or digit)"
        )
    return name
