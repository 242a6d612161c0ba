"""Token and no-auth modes: file parsing, wildcard, per-project grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import AuthDecision, NoAuth, TokenAuthorizer
from gateway.config import ConfigError

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


TOKENS = """\
# operators
root-token *
team-a   alpha, beta   # two projects
  team-c gamma

"""


@pytest.fixture
def authorizer(tmp_path: Path) -> TokenAuthorizer:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    return TokenAuthorizer(path)


async def test_wildcard_token(authorizer: TokenAuthorizer) -> None:
    for project in ("alpha", "anything"):
        decision = await authorizer.check("root-token", project, "delete")
        assert decision.status == "ok"
        assert decision.user == "token:2"


async def test_per_project_token(authorizer: TokenAuthorizer) -> None:
    assert (await authorizer.check("team-a", "alpha", "get")).status == "ok"
    assert (await authorizer.check("team-a", "beta", "create")).status == "ok"
    denied = await authorizer.check("team-a", "gamma", "get")
    assert denied == AuthDecision("forbidden", "token:3", "token is not valid for project 'gamma'")
    assert (await authorizer.check("team-c", "gamma", "get")).status == "ok"


@pytest.mark.parametrize("token", [None, "", "team", "team-a ", "TEAM-A", "alpha"])
async def test_unauthenticated(authorizer: TokenAuthorizer, token: str | None) -> None:
    decision = await authorizer.check(token, "alpha", "get")
    assert decision.status == "unauthenticated"
    assert decision.user is None


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("ok *\nlonely\n", 2, "missing the project list"),
        ("# c\n\nt1 Alpha\n", 3, "'Alpha' is not a project name"),
        ("t1 a,,b\n", 1, "'' is not a project name"),
        ("t1 a\nt2 b\nt1 c\n", 3, "same token as line 1"),
        ("t1 a b\n", 1, "'a b' is not a project name"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path: Path, text: str, line: int, why: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        TokenAuthorizer(path)
    assert f"{path}:{line}: {why}" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_TOKENS_FILE"):
        TokenAuthorizer(tmp_path / "absent")


async def test_no_auth_allows_everything() -> None:
    decision = await NoAuth().check(None, "alpha", "delete")
    assert decision.status == "ok"


async def test_tokens_file_is_reloaded_on_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotated token takes effect without a restart; a broken edit keeps the previous tokens."""
    monkeypatch.setattr(TokenAuthorizer, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "tokens"
    path.write_text("old-token alpha\n")
    auth = TokenAuthorizer(path)
    assert (await auth.check("old-token", "alpha", "get")).status == "ok"
    staged = tmp_path / "tokens.new"
    staged.write_text("new-token alpha,beta\n")
    staged.replace(path)  # as a Secret update swaps the file
    assert (await auth.check("old-token", "alpha", "get")).status == "unauthenticated"
    assert (await auth.check("new-token", "beta", "get")).status == "ok"
    staged.write_text("broken-line-without-projects\n")
    staged.replace(path)
    assert (await auth.check("new-token", "beta", "get")).status == "ok"
