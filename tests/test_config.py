"""Settings: parsing, safety checks, and one list of variables shared by code, CLI and docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import OPTIONS, ConfigError, Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_table() -> None:
    from_table = Settings.from_env({opt.env: opt.default for opt in OPTIONS})
    assert from_table == Settings()


def test_every_variable_is_documented_with_its_default() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for opt in OPTIONS:
        assert f"| `{opt.env}` |" in doc and f"| `{opt.default}` |" in doc, opt.env
    documented = set(re.findall(r"\| `(GATEWAY_[A-Z_]+)` \|", doc))
    assert documented == {opt.env for opt in OPTIONS}


def test_every_variable_has_a_serve_flag() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {action.dest for action in serve._actions}
    assert {opt.field for opt in OPTIONS} <= dests
    args = serve.parse_args(["--port", "9001", "--fsync", "never", "--ws-compression", "on"])
    assert (args.port, args.fsync, args.ws_compression) == (9001, "never", True)


@pytest.mark.parametrize("env,words", [
    ({"GATEWAY_FSYNC": "sometimes"}, "GATEWAY_FSYNC='sometimes': must be one of always, never"),
    ({"GATEWAY_PORT": "http"}, "GATEWAY_PORT='http'"),
    ({"GATEWAY_SEND_TIMEOUT": "0"}, "must be > 0"),
    ({"GATEWAY_HOST": "0.0.0.0"}, "GATEWAY_ALLOW_ANONYMOUS=1"),
    ({"GATEWAY_AUTH": "token"}, "GATEWAY_TOKENS_FILE"),
    ({"GATEWAY_FRAME_BYTES": "100"}, "at least 1024"),
])
def test_bad_settings_are_refused_with_the_variable_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        Settings.from_env(env)


def test_anonymous_on_a_network_needs_an_explicit_yes() -> None:
    settings = Settings.from_env({"GATEWAY_HOST": "0.0.0.0", "GATEWAY_ALLOW_ANONYMOUS": "1"})
    assert settings.host == "0.0.0.0" and settings.auth == "none"
    assert Settings.from_env({"GATEWAY_HOST": "::1"}).host == "::1"


def test_serve_refuses_bad_settings_before_listening(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "GATEWAY_ALLOW_ANONYMOUS=1" in result.stderr


def test_serve_lifts_the_descriptor_limit_for_its_connections() -> None:
    """In a child process with a low soft limit: the limit ends at what 4000 connections and 100
    open logs (three descriptors each) need."""
    code = "\n".join([
        "import resource",
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))",
        "from gateway.server import raise_fd_limit",
        "raise_fd_limit(4000, 100)",
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    soft, hard = (int(x) for x in result.stdout.split())
    assert soft == (4556 if hard < 0 else min(4556, hard))
