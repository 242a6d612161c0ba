"""Runs with GATEWAY_REGISTRY=kubernetes: the runner port comes from the session's custom resource."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.fake_runner import build_app
from tests.conftest import run_gateway
from tests.fake_k8s import FakeKube, serve, use_kubeconfig
from tests.runner_helpers import run_body, serve_runner, session_url, wait_until_done

pytestmark = [pytest.mark.anyio, pytest.mark.server]


async def test_runner_port_from_the_session_resource(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RUNNER_TYPE, status.runnerPort (else spec.runnerPort, else 8001) names the port."""
    fake = FakeKube()
    async with serve_runner(build_app(delay=0)) as port, serve(fake.app()) as api_url:
        fake.add_session("p", "s1", "2025-01-01T00:00:00Z", status_port=port, spec_port=1)
        use_kubeconfig(tmp_path / "kubeconfig", api_url, monkeypatch)
        async with run_gateway(tmp_path / "state", registry="kubernetes", runner_token=False,
                               runner_url="http://127.0.0.1:{port}/") as gw:
            unknown = await gw.http.post(session_url(gw, "s2", "/runs"), json=run_body())
            assert unknown.status_code == 404  # not in the cluster: no log, no run
            resp = await gw.http.post(session_url(gw, "s1", "/runs"), json=run_body())
            assert resp.status_code == 202, resp.text
            events = await wait_until_done(gw, "s1")
    assert events[-1]["type"] == "RUN_FINISHED"  # status.runnerPort won over spec.runnerPort
    assert fake.counts["get"] >= 1
