"""FileCatalog on real folders: project filter, legacy folders, paging, search, newest-first offsets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.sessions.catalog import CatalogError, FileCatalog, SessionInfo, encode_token
from tests.catalogs import walk

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_session(
    root: Path, name: str, meta: dict[str, object] | None = None, mtime: float | None = None
) -> None:
    folder = root / "sessions" / name
    folder.mkdir(parents=True)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    if mtime is not None:
        os.utime(folder, (mtime, mtime))


ALPHA_MS = 1_700_000_000_000
BETA_MS = 1_600_000_000_000


@pytest.fixture
def state(tmp_path: Path) -> Path:
    for i in range(25):
        make_session(tmp_path, f"a-{i:02d}", {"project": "alpha", "epoch": "e1", "createdAt": ALPHA_MS + i})
    for i in range(5):
        make_session(tmp_path, f"b-{i}", {"project": "beta", "epoch": "e1", "createdAt": BETA_MS + i})
    make_session(tmp_path, "legacy-1", None, mtime=1_650_000_000)
    make_session(
        tmp_path,
        "named",
        {"project": "alpha", "epoch": "e2", "createdAt": 1_800_000_000_000, "displayName": "Fix The BUG",
         "runnerPort": 9000},
    )
    (tmp_path / "sessions" / "Not_A_Label").mkdir()
    (tmp_path / "sessions" / "plain-file").write_text("x")
    make_session(tmp_path, "broken", None)
    (tmp_path / "sessions" / "broken" / "meta.json").write_text("{not json")
    return tmp_path


async def test_project_filter_and_legacy(state: Path) -> None:
    """Unclaimed folders (no meta.json, or its project null) are listed in every project to admins only."""
    make_session(state, "legacy-2", {"project": None, "epoch": "e3"})
    catalog = FileCatalog(state)
    alpha = await walk(catalog, "alpha", 100)
    assert alpha == sorted([f"a-{i:02d}" for i in range(25)] + ["named"])
    assert await walk(catalog, "beta", 100) == ["b-0", "b-1", "b-2", "b-3", "b-4"]
    assert await walk(catalog, "gamma", 10) == []
    admin = await catalog.page("gamma", 10, None, None, unclaimed=True)
    assert [(i.name, i.claimed) for i in admin.items] == [("legacy-1", False), ("legacy-2", False)]
    assert (await catalog.offset_page("beta", 10, 0, None, unclaimed=True)).total == 7


async def test_paging_covers_each_once(state: Path) -> None:
    catalog = FileCatalog(state)
    full = await walk(catalog, "alpha", 100)
    for limit in (1, 2, 7, 26, 27):
        assert await walk(catalog, "alpha", limit) == full


async def test_last_full_page_has_no_token(state: Path) -> None:
    page = await FileCatalog(state).page("beta", 5, None, None)
    assert len(page.items) == 5
    assert page.continue_token is None


async def test_paging_is_stable_while_folders_are_added(state: Path) -> None:
    catalog = FileCatalog(state)
    first = await catalog.page("alpha", 10, None, None)
    make_session(state, "a-00a", {"project": "alpha", "epoch": "x", "createdAt": 1})  # sorts into page one
    make_session(state, "zz-new", {"project": "alpha", "epoch": "x", "createdAt": 1})  # sorts after
    rest: list[str] = []
    token = first.continue_token
    while token is not None:
        page = await catalog.page("alpha", 10, token, None)
        rest += [i.name for i in page.items]
        token = page.continue_token
    seen = [i.name for i in first.items] + rest
    assert len(seen) == len(set(seen))
    assert "zz-new" in rest
    assert set(seen) >= {f"a-{i:02d}" for i in range(25)}


async def test_search_name_and_display_name(state: Path) -> None:
    catalog = FileCatalog(state)
    assert await walk(catalog, "alpha", 3, "the bug") == ["named"]
    assert await walk(catalog, "alpha", 3, "NAM") == ["named"]
    assert await walk(catalog, "alpha", 2, "a-1") == [f"a-{i}" for i in range(10, 20)]
    assert await walk(catalog, "alpha", 2, "nothing-matches") == []


async def test_session_fields(state: Path) -> None:
    catalog = FileCatalog(state)
    named = await catalog.get("alpha", "named")
    assert named == SessionInfo("alpha", "named", "Fix The BUG", "2027-01-15T08:00:00.000Z", 9000, None)
    assert named.to_json() == {
        "project": "alpha", "session": "named", "displayName": "Fix The BUG",
        "created": "2027-01-15T08:00:00.000Z", "runnerPort": 9000, "phase": None, "claimed": True,
    }
    legacy = await catalog.get("anything", "legacy-1")
    assert legacy is not None and legacy.created == "2022-04-15T05:20:00.000Z"


async def test_get_absent_foreign_broken_invalid(state: Path) -> None:
    catalog = FileCatalog(state)
    assert await catalog.get("beta", "a-01") is None  # belongs to alpha
    assert await catalog.get("alpha", "missing") is None
    assert await catalog.get("alpha", "broken") is None
    assert await catalog.get("alpha", "../etc") is None
    assert (await catalog.get("alpha", "a-01")) is not None


async def test_offset_page_newest_first(state: Path) -> None:
    catalog = FileCatalog(state)
    everything = await catalog.offset_page("alpha", 100, 0, None)
    order = [i.name for i in everything.items]
    assert order == ["named"] + [f"a-{i:02d}" for i in reversed(range(25))]
    assert everything.total == 26
    for offset in (0, 5, 20, 25, 26, 40):
        page = await catalog.offset_page("alpha", 6, offset, None)
        assert [i.name for i in page.items] == order[offset : offset + 6]
        assert page.total == 26


async def test_offset_page_search(state: Path) -> None:
    page = await FileCatalog(state).offset_page("alpha", 3, 1, "A-0")
    assert [i.name for i in page.items] == ["a-08", "a-07", "a-06"]
    assert page.total == 10


async def test_missing_root_is_empty(tmp_path: Path) -> None:
    catalog = FileCatalog(tmp_path / "nowhere")
    assert (await catalog.page("p", 5, None, None)).items == []
    assert (await catalog.offset_page("p", 5, 0, None)).total == 0


async def test_bad_arguments(state: Path) -> None:
    catalog = FileCatalog(state)
    for token in ("%%%", "bm90anNvbg", encode_token({"other": "x"})):
        with pytest.raises(CatalogError) as info:
            await catalog.page("alpha", 5, token, None)
        assert info.value.code == "invalid"
    with pytest.raises(CatalogError):
        await catalog.page("alpha", 0, None, None)
    with pytest.raises(CatalogError):
        await catalog.offset_page("alpha", 5, -1, None)
