"""Headless Debian Chromium driven over the Chrome DevTools protocol (no browser download, no node).

`chromium` installs the browser with apt-get once per test session when it is missing (CI runs
as root with Debian's registry); `Page` launches it and offers the few commands the tests need.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1280,800"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium, installed on first use (a missing browser fails, never skips)."""
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=900, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, timeout=1800, env=env)
    return CHROMIUM


class Page:
    """One tab. Commands are sent one at a time; events the browser pushes meanwhile are ignored."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self._ws, self._session, self._ids = ws, session_id, itertools.count(1)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> Any:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self._session
        await self._ws.send(orjson.dumps(msg).decode())
        while True:
            reply = orjson.loads(await self._ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'")

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 20) -> Any:
        """Poll until `expression` is truthy; the timeout message shows the page's status line."""
        with anyio.move_on_after(seconds):
            while True:
                if value := await self.eval(expression):
                    return value
                await anyio.sleep(0.05)
        status = await self.eval("document.getElementById('status')?.textContent")
        raise AssertionError(f"timed out waiting for {expression!r}; page status: {status!r}")

    async def screenshot(self) -> bytes:
        """The visible page as PNG bytes."""
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(shot["data"])


@contextlib.asynccontextmanager
async def open_page(chromium: str, profile: Path) -> AsyncIterator[Page]:
    """Launch a fresh headless browser with its own profile and attach to a new tab."""
    process = await anyio.open_process([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        with anyio.fail_after(30):
            while True:  # the browser writes its port and path here once it listens
                lines = port_file.read_text().splitlines() if port_file.exists() else []
                if len(lines) >= 2:
                    break
                await anyio.sleep(0.05)
        port, path = lines[:2]
        async with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, compression=None) as ws:
            browser = Page(ws, "")
            target = await browser.send("Target.createTarget", {"url": "about:blank"}, page=False)
            attached = await browser.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                                    "flatten": True}, page=False)
            page = Page(ws, attached["sessionId"])
            await page.send("Page.enable")
            yield page
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
