"""A symbolic link planted under a session folder is refused with a clear error, never followed.

Each file the store reads or writes there is tried: the target outside the state root keeps its
content, and the client gets a JSON error that names the link (PROTOCOL §1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.store.layout import INDEX_NAME, LEGACY_NAME, LOG_NAME, META_NAME
from tests.conftest import RunningGateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

SECRET = b'{"type":"SECRET","text":"outside the state root"}\n'


def plant(tmp_path: Path, link: Path) -> Path:
    """A file outside the state root, and `link` pointing at it."""
    target = tmp_path / f"outside-{link.name}"
    target.write_bytes(SECRET)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return target


def assert_refused(resp: object, name: str) -> None:
    status = getattr(resp, "status_code")  # noqa: B009
    body = getattr(resp, "json")()  # noqa: B009
    assert status == 500 and body["error"]["code"] == "symlink_refused", body
    assert name in body["error"]["message"] and "symbolic link" in body["error"]["message"]


async def new_session(gw: RunningGateway, session: str) -> Path:
    await gw.append(session, [{"type": "X", "n": 1}])
    gw.gateway.store.evict(session)  # the next request opens the folder afresh
    return gw.settings.state_dir / "sessions" / session


@pytest.mark.parametrize("name", [LOG_NAME, INDEX_NAME, META_NAME])
async def test_links_read_at_open_are_refused(gw: RunningGateway, tmp_path: Path, name: str) -> None:
    folder = await new_session(gw, "s")
    (folder / name).unlink()
    target = plant(tmp_path, folder / name)
    for resp in (await gw.http.get(gw.events_url("s")), await gw.http.post(gw.events_url("s"), json={"type": "X"})):
        assert_refused(resp, name)
    assert target.read_bytes() == SECRET


async def test_a_linked_legacy_log_is_not_migrated_nor_served(gw: RunningGateway, tmp_path: Path) -> None:
    folder = gw.settings.state_dir / "sessions" / "old"
    target = plant(tmp_path, folder / LEGACY_NAME)
    resp = await gw.http.get(gw.events_url("old"))
    assert_refused(resp, LEGACY_NAME)
    assert target.read_bytes() == SECRET and not (folder / f"{LEGACY_NAME}.migrated").exists()


async def test_a_linked_migrated_legacy_log_is_not_exported(gw: RunningGateway, tmp_path: Path) -> None:
    folder = await new_session(gw, "s")
    plant(tmp_path, folder / f"{LEGACY_NAME}.migrated")
    resp = await gw.http.get(f"{gw.base}/api/projects/p/agentic-sessions/s/export")
    assert_refused(resp, f"{LEGACY_NAME}.migrated")
    assert b"SECRET" not in resp.content




async def test_a_linked_meta_tmp_is_replaced_not_written_through(gw: RunningGateway, tmp_path: Path) -> None:
    folder = await new_session(gw, "s")
    target = plant(tmp_path, folder / f".{META_NAME}.tmp")
    assert (await gw.http.delete(gw.events_url("s"))).status_code == 200  # a new epoch rewrites meta.json
    assert target.read_bytes() == SECRET
    assert not (folder / META_NAME).is_symlink() and b'"project"' in (folder / META_NAME).read_bytes()


async def test_a_linked_torn_aside_file_is_refused(gw: RunningGateway, tmp_path: Path) -> None:
    folder = await new_session(gw, "s")
    log_path = folder / LOG_NAME
    size = log_path.stat().st_size
    with open(log_path, "ab") as fh:
        fh.write(b'{"type":"torn')  # another writer died mid-line
    target = plant(tmp_path, folder / f"{LOG_NAME}.torn-{size}")
    resp = await gw.http.post(gw.events_url("s"), json={"type": "X", "n": 2})
    assert_refused(resp, f"{LOG_NAME}.torn-{size}")
    assert target.read_bytes() == SECRET
    assert log_path.read_bytes().endswith(b'{"type":"torn')  # nothing was cut: the torn bytes are not lost
