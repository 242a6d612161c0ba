"""The pure parts of the platform's run behaviours (tests/test_platform.py runs them end to end)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import pytest
from ag_ui.core import UserMessage

from gateway.config import Settings
from gateway.k8s.activity import Throttle, rfc3339
from gateway.k8s.runner_access import registry_ports
from gateway.runner.hooks import Caller, NoHooks
from gateway.runner.identity import hidden_events, identity_headers, with_sender
from gateway.runner.listener import Backoff
from gateway.runtime import Gateway

pytestmark = pytest.mark.unit

ALICE = "Bearer alice-token"


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in (1, 2, 3)] == [1.0, 1.5, 2.25]
    assert backoff.delay(9) == 1.5 ** 8 and backoff.delay(10) == 30.0 and backoff.delay(10_000) == 30.0


def test_throttle_writes_once_per_interval_except_run_started() -> None:
    throttle, key = Throttle(10.0), ("p", "s")
    assert throttle.due(key, 0.0, immediate=False)
    assert not throttle.due(key, 9.9, immediate=False)
    assert throttle.due(key, 9.95, immediate=True)  # RUN_STARTED, and the interval restarts
    assert not throttle.due(key, 19.9, immediate=False)
    assert throttle.due(key, 19.95, immediate=False)
    assert throttle.due(("p", "other"), 19.95, immediate=False)


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(datetime.fromisoformat("2026-01-02T03:04:05.678901+02:00")) == "2026-01-02T01:04:05.678Z"


def test_agent_registry_ports() -> None:
    data = orjson.dumps([{"id": "a", "container": {"port": 9000}}, {"id": "b", "container": {}},
                         {"id": "c", "container": {"port": 70000}}, {"name": "no id"}])
    assert registry_ports(data) == {"a": 9000, "b": 8001, "c": 8001}
    with pytest.raises(ValueError):
        registry_ports(b'{"id": "a"}')


def test_sender_identity_marks_user_messages_only() -> None:
    user = UserMessage(id="u1", role="user", content="hi", metadata={"hidden": True})
    out = with_sender([user], Caller("alice", ALICE))
    assert out[0].metadata == {"hidden": True, "senderId": "alice", "senderDisplayName": "alice"}
    assert user.metadata == {"hidden": True}  # copies, not changes
    assert with_sender([user], Caller(None)) == [user]
    assert orjson.loads(hidden_events("r1", "t1", [user])[0])["event"]["messageId"] == "u1"
    assert identity_headers(Caller(None, ALICE)) == {}
    assert "alice-token" not in repr(Caller("alice", ALICE))


def test_platform_behaviour_is_off_with_the_files_registry(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert (settings.runner_token, settings.session_activity, settings.runner_events) == (True, 10.0, True)
    assert isinstance(Gateway.create(settings).runs.hooks, NoHooks)
