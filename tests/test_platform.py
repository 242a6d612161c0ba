"""Runs on the platform (GATEWAY_REGISTRY=kubernetes): what the platform's backend does on the cluster side.

Real parts throughout: the gateway on uvicorn, the real kubernetes-asyncio client against the fake
API server (Secrets, AgenticSession objects and their status subresource), an agent registry file,
and a runner that refuses any call without the session's token and serves between-run events.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from gateway.runner.listener import Backoff
from tests.conftest import RunningGateway, run_gateway
from tests.fake_k8s import FakeKube, serve, use_kubeconfig, write_agent_registry
from tests.runner_helpers import PlatformRunner, run_body, serve_runner, session_url, stored, wait_until_done

pytestmark = [pytest.mark.anyio, pytest.mark.server]

TOKEN = "runner-token-7f3a9c"
ALICE = "Bearer alice-token"


@contextlib.asynccontextmanager
async def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeKube, runner: PlatformRunner,
                   *, delay: float = 0.0, **settings: Any) -> AsyncIterator[tuple[RunningGateway, Path]]:
    """The runner on a free port that only the agent registry's `gemini` entry names, the fake
    cluster, and a gateway in Kubernetes mode (registry and auth) whose client is alice."""
    async with serve_runner(runner.app(delay)) as port, serve(fake.app()) as api_url:
        assert port != 8001
        use_kubeconfig(tmp_path / "kubeconfig", api_url, monkeypatch)
        agents = write_agent_registry(tmp_path / "agent-registry.json", {"claude-code": None, "gemini": port})
        fake.users["alice-token"] = {"username": "alice", "uid": "u-alice", "groups": ["devs"]}
        fake.grants |= {("alice", "p", verb) for verb in ("get", "list", "update")}
        async with run_gateway(tmp_path / "state", registry="kubernetes", auth="kubernetes",
                               runner_url="http://127.0.0.1:{port}/", agent_registry=str(agents),
                               **settings) as gw:
            gw.http.headers["authorization"] = ALICE
            yield gw, agents


def add_platform_session(fake: FakeKube, name: str, *, runner_type: str | None = "gemini",
                         token: str | None = TOKEN, **kwargs: Any) -> None:
    env = {"RUNNER_TYPE": runner_type, "LLM_MODEL": "m"} if runner_type else None
    fake.add_session("p", name, "2026-01-01T00:00:00Z", phase="Running", env=env, **kwargs)
    if token is not None:
        fake.add_secret("p", f"ambient-runner-token-{name}", {"agui-token": token})


async def start_run(gw: RunningGateway, session: str, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    resp = await gw.http.post(session_url(gw, session, "/runs"), json=body or run_body())
    assert resp.status_code == 202, resp.text
    return await wait_until_done(gw, session)


async def wait_for(predicate: Any) -> None:
    """Poll until `predicate()` holds; bounded, not a timing assertion."""
    with anyio.fail_after(30):
        while not predicate():
            await anyio.sleep(0.02)


# --- runner port, token and identity -------------------------------------------------------------


async def test_run_reaches_the_registry_port_with_token_and_identity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake, runner = FakeKube(), PlatformRunner(TOKEN)
    add_platform_session(fake, "s1")
    body = run_body("Summarize the repo")
    body["messages"][0]["metadata"] = {"hidden": True}
    async with platform(tmp_path, monkeypatch, fake, runner, runner_events=False) as (gw, _):
        events = await start_run(gw, "s1", body)
        caps = await gw.http.get(session_url(gw, "s1", "/capabilities"))
    assert events[-1]["type"] == "RUN_FINISHED"
    assert caps.status_code == 200 and caps.json()["name"] == "fake-runner"
    assert runner.refused == 0
    (run_call,) = [headers for method, path, headers in runner.calls if (method, path) == ("POST", "/")]
    assert run_call["x-ambient-session-token"] == TOKEN
    assert run_call["x-current-user-id"] == "alice" and run_call["x-current-user-name"] == "alice"
    assert run_call["x-caller-token"] == ALICE
    assert ("GET", "/capabilities") in [(m, p) for m, p, _ in runner.calls]
    # Sender identity: the hidden message is announced first, then stored with its sender.
    message_id = body["messages"][0]["id"]
    raw, snapshot = events[0], events[1]
    assert raw["type"] == "RAW"
    assert raw["event"] == {"type": "message_metadata", "messageId": message_id, "hidden": True}
    assert snapshot["type"] == "MESSAGES_SNAPSHOT"
    assert snapshot["messages"][0]["metadata"] == {"hidden": True, "senderId": "alice",
                                                   "senderDisplayName": "alice"}
    (sent,) = runner.run_inputs
    assert sent["messages"][0]["metadata"]["senderId"] == "alice"  # the runner sees the sender too
    assert fake.counts["secret"] == 1  # reused for the capabilities call
    assert not [r for r in caplog.records if TOKEN in r.getMessage() or TOKEN in str(r.__dict__)]


async def test_missing_secret_or_registry_entry_is_a_clear_run_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake, runner = FakeKube(), PlatformRunner(TOKEN)
    add_platform_session(fake, "no-secret", token=None)
    add_platform_session(fake, "wrong-key", token=None)
    fake.add_secret("p", "ambient-runner-token-wrong-key", {"token": "s3cret-value"})
    add_platform_session(fake, "unknown-type", runner_type="nope")
    async with platform(tmp_path, monkeypatch, fake, runner, runner_events=False) as (gw, agents):
        no_secret = (await start_run(gw, "no-secret"))[-1]
        wrong_key = (await start_run(gw, "wrong-key"))[-1]
        unknown = (await start_run(gw, "unknown-type"))[-1]
    assert no_secret["type"] == "RUN_ERROR" and no_secret["code"] == "runner_token_missing"
    assert "Secret ambient-runner-token-no-secret in namespace p does not exist" in no_secret["message"]
    assert "agui-token" in no_secret["message"]
    assert wrong_key["code"] == "runner_token_missing"
    assert wrong_key["message"] == "Secret ambient-runner-token-wrong-key in namespace p has no key agui-token"
    assert unknown["code"] == "runner_type_unknown"
    assert f"runner type 'nope' is not in the agent registry {agents}" in unknown["message"]
    assert "claude-code, gemini" in unknown["message"]
    assert runner.calls == [] and runner.refused == 0  # the runner was never called without its token
    assert not [r for r in caplog.records if "s3cret-value" in r.getMessage() or "s3cret-value" in str(r.__dict__)]


async def test_a_runner_refusing_a_call_without_a_token_is_logged_once_per_project(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With runner tokens off (the chart's default until rbac.namespaces is set), a runner that
    needs one refuses every run: the RUN_ERROR says the runner refused, the log says why."""
    fake, runner = FakeKube(), PlatformRunner(TOKEN)
    add_platform_session(fake, "s1")
    add_platform_session(fake, "s2")
    async with platform(tmp_path, monkeypatch, fake, runner, runner_events=False, runner_token=False) as (gw, _):
        ends = [(await start_run(gw, name))[-1] for name in ("s1", "s2", "s1")]
    assert [end["type"] for end in ends] == ["RUN_ERROR"] * 3 and runner.refused == 3
    assert fake.counts["secret"] == 0
    (warning,) = [r for r in caplog.records if r.getMessage() == "runner refused a call without a runner token"]
    assert warning.levelno == logging.WARNING and (warning.project, warning.session) == ("p", "s1")  # type: ignore[attr-defined]
    assert "GATEWAY_RUNNER_TOKEN is off" in warning.hint and "rbac.namespaces" in warning.hint  # type: ignore[attr-defined]


async def test_a_default_runner_type_uses_port_8001(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """claude-code has no port in the registry: 8001 (asked of the runner client, so nothing that
    happens to listen on 8001 here is called)."""
    fake, runner = FakeKube(), PlatformRunner(TOKEN)
    add_platform_session(fake, "s1", runner_type="claude-code")
    add_platform_session(fake, "s2", runner_type=None)
    fake.objects["p"]["s2"]["status"]["runnerPort"] = 9123
    async with platform(tmp_path, monkeypatch, fake, runner, runner_events=False) as (gw, _):
        client = gw.gateway.runs.runner
        assert await client.base_url("p", "s1") == "http://127.0.0.1:8001/"
        assert await client.base_url("p", "s2") == "http://127.0.0.1:9123/"  # no RUNNER_TYPE: the object's port


# --- activity and stop -----------------------------------------------------------------------------


async def test_last_activity_time_moves_while_a_run_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    interval = 1.0
    fake, runner = FakeKube(), PlatformRunner(TOKEN)
    add_platform_session(fake, "s1")
    async with platform(tmp_path, monkeypatch, fake, runner, delay=0.15, runner_events=False,
                        session_activity=interval) as (gw, _):
        events = await start_run(gw, "s1")
    assert events[-1]["type"] == "RUN_FINISHED"
    writes = [p for p in fake.patches if p.name == "s1"]
    assert all(p.subresource == "status" and set(p.body) == {"status"} for p in writes)
    stamps = [datetime.fromisoformat(p.body["status"]["lastActivityTime"]) for p in writes]
    assert len(stamps) >= 2, stamps  # the run lasts well over one interval
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert all(gap >= interval * 0.99 for gap in gaps), gaps  # throttled: at most one write per interval
    status = fake.objects["p"]["s1"]["status"]
    assert status["lastActivityTime"] == writes[-1].body["status"]["lastActivityTime"]
    assert status["phase"] == "Running"  # a merge patch: the rest of the status is kept


async def test_stop_on_run_finished_sets_both_annotations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, runner = FakeKube(), PlatformRunner(TOKEN)
    add_platform_session(fake, "keep")
    add_platform_session(fake, "once", stop_on_run_finished=True)
    async with platform(tmp_path, monkeypatch, fake, runner, runner_events=False) as (gw, _):
        await start_run(gw, "keep")
        await start_run(gw, "once")
        await wait_for(lambda: [p for p in fake.patches if p.name == "once" and not p.subresource])
    assert fake.annotations("p", "once") == {"ambient-code.io/desired-phase": "Stopped",
                                             "ambient-code.io/stop-reason": "run-finished"}
    assert fake.annotations("p", "keep") == {}
    assert not [p for p in fake.patches if p.name == "keep" and not p.subresource]


# --- between-run events -----------------------------------------------------------------------------


async def test_between_run_events_are_persisted_and_live_across_reconnects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """35 events, one per connection, after a refused first connection: more reconnects than the
    30 the backend's listener ever makes."""
    count = 35
    fake, runner = FakeKube(), PlatformRunner(TOKEN, between_runs=count, fail_first=True)
    add_platform_session(fake, "s1")
    async with platform(tmp_path, monkeypatch, fake, runner) as (gw, _):
        seen: list[int] = []

        async def follow() -> None:
            url = session_url(gw, "s1", "/events?follow=1")
            async with gw.http.stream("GET", url, headers={"accept": "application/x-ndjson"}) as resp:
                async for line in resp.aiter_lines():
                    event = orjson.loads(line)["event"]
                    if event["type"] == "CUSTOM":
                        seen.append(event["value"]["n"])
                        if len(seen) == count:
                            return

        async with anyio.create_task_group() as tg:
            await start_run(gw, "s1")  # the listener starts with the run
            tg.start_soon(follow)
            with anyio.fail_after(60):
                while len(seen) < count:
                    await anyio.sleep(0.05)
        listeners = gw.gateway.runs.hooks.listeners  # type: ignore[attr-defined]
        assert ("p", "s1") in listeners.listening  # still listening, on the quiet connection
    assert seen == list(range(1, count + 1))
    stored_custom = [e["value"]["n"] for e in stored(gw, "s1") if e["type"] == "CUSTOM"]
    assert stored_custom == list(range(1, count + 1))
    assert runner.events_connections >= count + 2  # the refused one, 35 with events, the quiet one
    assert runner.refused == 0


async def test_a_new_run_ends_the_listeners_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first events connection is refused and the wait before the next is an hour: only the
    second run's start can bring the listener back."""
    fake, runner = FakeKube(), PlatformRunner(TOKEN, between_runs=3, fail_first=True)
    add_platform_session(fake, "s1")
    async with platform(tmp_path, monkeypatch, fake, runner) as (gw, _):
        listeners = gw.gateway.runs.hooks.listeners  # type: ignore[attr-defined]
        listeners.backoff = Backoff(first=3600.0, cap=3600.0)
        await start_run(gw, "s1")
        await wait_for(lambda: runner.events_connections == 1)
        await start_run(gw, "s1")
        await wait_for(lambda: len([e for e in stored(gw, "s1") if e["type"] == "CUSTOM"]) == 3)
    assert runner.events_connections >= 4  # refused, three with an event, the quiet one
