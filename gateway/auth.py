"""Who may read and write which project's sessions (PROTOCOL §7, `GATEWAY_AUTH`).

Every mode answers the same question through `Authorizer.check`, so the HTTP layer maps one
`AuthDecision` to 401/403 whatever the mode: `none` (`NoAuth`), `token` (`TokenAuthorizer`) and
`kubernetes` (`gateway.k8s.auth.KubernetesAuthorizer`).
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from gateway.config import ConfigError
from gateway.names import is_valid_name

log = logging.getLogger("gateway.auth")

AuthStatus = Literal["ok", "unauthenticated", "forbidden"]

ALL_PROJECTS = "*"
"""The project to ask about for a grant over every project (never a valid project name): a token
for `*`, a cluster-wide Kubernetes grant. Unclaimed legacy folders are shown only to such callers."""


@dataclass(frozen=True)
class AuthDecision:
    status: AuthStatus  # ok; unauthenticated -> 401; forbidden -> 403
    user: str | None  # who the credential belongs to, for logs; never the credential itself
    reason: str


class AuthBackendError(Exception):
    """The authority that decides could not be asked (API error, timeout): 503, never a guess."""


class Authorizer(Protocol):
    async def check(self, token: str | None, project: str, verb: str) -> AuthDecision:
        """May the holder of `token` do `verb` (a Kubernetes verb: get, list, create...) in `project`?"""
        ...


class NoAuth:
    """`GATEWAY_AUTH=none`: everyone may do everything (config refuses it off loopback unless allowed)."""

    async def check(self, token: str | None, project: str, verb: str) -> AuthDecision:
        return AuthDecision("ok", None, "authentication is disabled")


@dataclass(frozen=True)
class _TokenEntry:
    secret: bytes
    projects: frozenset[str] | None  # None: every project
    line: int


class TokenAuthorizer:
    """`GATEWAY_AUTH=token`: static bearer tokens from `GATEWAY_TOKENS_FILE`.

    One `token project[,project...]` or `token *` per line; `#` starts a comment (so tokens cannot
    contain it) and the user logged for a token is `token:<line>`. A token grants
    every verb on its projects. A bad line at startup stops the gateway instead of locking users
    out later. The file is read again when it changes (checked at most every `RELOAD_INTERVAL`
    seconds, so a rotated Secret takes effect without a restart); a changed file with a bad line
    is logged and the tokens already loaded stay in force.
    """

    RELOAD_INTERVAL = 1.0

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._stamp = self._file_stamp()
        self._entries = self._load()
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load(self) -> tuple[_TokenEntry, ...]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"GATEWAY_TOKENS_FILE {str(self._path)!r}: {exc}") from exc
        return parse_tokens(text, str(self._path))

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.RELOAD_INTERVAL:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._entries = self._load()
        except ConfigError as exc:
            log.error("tokens file not reloaded, previous tokens stay in force", extra={"error": str(exc)})
            return
        log.info("tokens file reloaded", extra={"tokens": len(self._entries)})

    async def check(self, token: str | None, project: str, verb: str) -> AuthDecision:
        self._reload_if_changed()
        if not token:
            return AuthDecision("unauthenticated", None, "no credential")
        presented = token.encode()
        match: _TokenEntry | None = None
        for entry in self._entries:  # every entry is compared, so timing does not tell which one matched
            if hmac.compare_digest(entry.secret, presented):
                match = entry
        if match is None:
            return AuthDecision("unauthenticated", None, "unknown token")
        user = f"token:{match.line}"
        if match.projects is not None and project not in match.projects:
            return AuthDecision("forbidden", user, f"token is not valid for project {project!r}")
        return AuthDecision("ok", user, "token grants the project")


def parse_tokens(text: str, source: str) -> tuple[_TokenEntry, ...]:
    """Parse a tokens file; a malformed line raises `ConfigError` naming `source` and the line number."""
    entries: list[_TokenEntry] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split(None, 1)
        if len(fields) != 2:
            raise _bad_line(source, number, "missing the project list")
        token, rest = fields[0], fields[1].strip()
        if token in first_line:
            raise _bad_line(source, number, f"same token as line {first_line[token]}")
        first_line[token] = number
        if rest == "*":
            entries.append(_TokenEntry(token.encode(), None, number))
            continue
        projects = [p.strip() for p in rest.split(",")]
        for project in projects:
            if not is_valid_name(project):
                raise _bad_line(source, number, f"{project!r} is not a project name")
        entries.append(_TokenEntry(token.encode(), frozenset(projects), number))
    return tuple(entries)


def _bad_line(source: str, number: int, why: str) -> ConfigError:
    return ConfigError(f"{source}:{number}: {why} (expected 'token project[,project...]' or 'token *')")
