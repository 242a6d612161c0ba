"""The Durable Streams conformance suite (npm `@durable-streams/server-conformance-tests`, all 338
tests, the reserved subscription APIs included) against a real gateway on each store.

The suite is installed with npm into `.cache/node/` (tests/node/package.json) and run by vitest;
the tests it may fail are exactly those docs/durable-streams.md names, each with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.conftest import SCRIPTS, RunningGateway

pytestmark = [pytest.mark.anyio, pytest.mark.external]

STORES = ("files", "nats")
SUITE_TESTS = 338
MIN_PASSED = 332
LONG_POLL_S = 2.0
"""The gateway's long-poll wait (GATEWAY_HEARTBEAT_INTERVAL): the suite waits it out in a few tests."""
DOC = Path(__file__).resolve().parent.parent / "docs" / "durable-streams.md"


def documented_failures(text: str) -> set[str]:
    """The `group :: test` names listed under the doc's 'Conformance' section as failing."""
    section = text.split("## Conformance", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `([^`]+ :: [^`]+)`", section, flags=re.MULTILINE))


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    """`group :: test` -> passed / failed / skipped, from vitest's JSON report."""
    return {" > ".join(a["ancestorTitles"]) + " :: " + a["title"]: a["status"]
            for f in report["testResults"] for a in f["assertionResults"]}


async def run_suite(node_modules: Path, url: str, report: Path) -> dict[str, Any]:
    cache = node_modules.parent
    shutil.copyfile(SCRIPTS / "ds_conformance.test.mjs", cache / "ds_conformance.test.mjs")
    env = {**os.environ, "CONFORMANCE_TEST_URL": url, "DS_LONG_POLL_MS": str(int(LONG_POLL_S * 1000))}
    with anyio.fail_after(280):  # a hung suite, not a timing check
        await anyio.run_process([str(node_modules / ".bin" / "vitest"), "run", "ds_conformance.test.mjs",
                                 "--no-coverage", "--reporter=json", f"--outputFile.json={report}"],
                                cwd=cache, env=env, check=False)
    return dict(orjson.loads(await anyio.Path(report).read_bytes()))


def test_the_documented_failures_are_read() -> None:
    listed = documented_failures(DOC.read_text())
    assert listed and all(" :: " in name for name in listed)


async def test_conformance_suite(
        node_modules: Path, tmp_path: Path,
        gateway_factory: Callable[..., AbstractAsyncContextManager[RunningGateway]]) -> None:
    async with gateway_factory(heartbeat_interval=LONG_POLL_S) as gw:
        results = outcomes(await run_suite(node_modules, f"{gw.base}/ds/conformance", tmp_path / "report.json"))
    failed = sorted(name for name, status in results.items() if status != "passed")
    assert len(results) == SUITE_TESTS
    assert set(failed) == documented_failures(DOC.read_text()), failed
    assert len(results) - len(failed) >= MIN_PASSED
