"""`agui-gateway doctor DIR` as a user runs it: the installed console script on a real state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.store.layout import LEGACY_NAME, LOG_NAME, session_names, write_meta

pytestmark = pytest.mark.unit

SCRIPT = str(Path(sys.executable).with_name("agui-gateway"))
BIG = 10 * 1024 * 1024 + 100  # over the default GATEWAY_MAX_EVENT_BYTES

GOOD = b'{"type":"A","n":1}\n{"type":"B","n":2}\n{"type":"C","n":3}\n'
TORN = b'{"type":"D","n":4'
LEGACY = [
    {"type": "user_message", "payload": {"id": "u1", "content": "hello"}},
    {"type": "agent.message", "payload": {"id": "a1", "content": {"type": "text_block", "text": "hi"}}},
    {"type": "agent.message", "payload": {"id": "a2", "content": {"type": "tool_use", "name": "ls"}}},
    {"type": "system.event", "payload": {}},
    {"type": "system.event", "payload": {}},
]


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, "doctor", *args], capture_output=True, text=True, timeout=120, check=False)


def session(root: Path, name: str, log: bytes | None, *, meta: bool = True) -> Path:
    d = root / "sessions" / name
    d.mkdir(parents=True)
    if log is not None:
        (d / LOG_NAME).write_bytes(log)
    if meta:
        write_meta(d, {"project": "p", "epoch": "abcdef12", "createdAt": 1})
    return d


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def report_lines(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line and not line[0].isdigit()
            and not line.startswith("repaired")}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doctor") / "state"
    session(root, "healthy", GOOD)
    session(root, "corrupt", GOOD + b"not json\n" + b'{"type":"E"}\n' + b'{"type": "trunc\n')
    session(root, "oversize", GOOD + b'{"type":"big","pad":"' + b"x" * BIG + b'"}\n' + b'{"type":"E"}\n')
    session(root, "torn", GOOD + TORN)
    legacy = session(root, "legacy", None)
    (legacy / LEGACY_NAME).write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in LEGACY))
    session(root, "nometa", GOOD, meta=False)
    return root


def test_report_names_each_problem_and_changes_nothing(seeded: Path) -> None:
    before = snapshot(seeded)
    names = listing(seeded)
    result = doctor(str(seeded))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = report_lines(result.stdout)
    assert set(rows) == {"healthy", "corrupt", "oversize", "torn", "legacy", "nometa"}, result.stdout
    assert rows["healthy"].endswith(" ok") and "events=3" in rows["healthy"] and f"bytes={len(GOOD)}" in rows["healthy"]
    assert "2 corrupt" in rows["corrupt"] and "events=6" in rows["corrupt"]
    assert "1 oversize" in rows["oversize"] and "events=5" in rows["oversize"]
    assert f"torn tail of {len(TORN)} bytes" in rows["torn"] and "events=3" in rows["torn"]
    assert "legacy" in rows["legacy"] and "messages.jsonl" in rows["legacy"]
    assert "project=-" in rows["nometa"] and "events=3" in rows["nometa"]
    assert "6 session(s), 4 with problems" in result.stdout
    assert snapshot(seeded) == before and listing(seeded) == names


def test_report_counts_the_legacy_lines_that_will_be_skipped(seeded: Path) -> None:
    rows = report_lines(doctor(str(seeded)).stdout)
    line = rows["legacy"]
    assert "2 messages" in line, line
    assert "3 legacy lines skipped" in line and "system.event=2" in line and "agent.message=1" in line, line


def test_all_healthy_is_exit_0(tmp_path: Path) -> None:
    session(tmp_path, "one", GOOD)
    session(tmp_path, "two", b"")
    session(tmp_path, "three", None)
    before = snapshot(tmp_path)
    result = doctor(str(tmp_path))
    assert result.returncode == 0, result.stdout
    assert "3 session(s), 0 with problems" in result.stdout
    assert snapshot(tmp_path) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert doctor(str(empty)).returncode == 0


def test_corrupt_meta_is_reported_and_the_other_sessions_still_checked(tmp_path: Path) -> None:
    session(tmp_path, "good", GOOD)
    bad = session(tmp_path, "bad", GOOD + TORN, meta=False)
    (bad / "meta.json").write_bytes(b"garbage")
    before = snapshot(tmp_path)
    for args in ((), ("--repair",)):
        result = doctor(str(tmp_path), *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        rows = report_lines(result.stdout)
        assert rows["good"].endswith(" ok") and "meta.json" in rows["bad"], result.stdout
        assert snapshot(tmp_path) == before  # a session the store cannot open is left alone


def test_missing_dir_is_a_clear_error_exit_2(tmp_path: Path) -> None:
    result = doctor(str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "nope" in result.stderr and "no such directory" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_repair_cuts_torn_tails_migrates_legacy_keeps_corrupt_lines_and_is_idempotent(
        seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "state"
    subprocess.run(["cp", "-a", str(seeded), str(root)], check=True)
    corrupt = (root / "sessions" / "corrupt" / LOG_NAME).read_bytes()
    oversize = (root / "sessions" / "oversize" / LOG_NAME).read_bytes()
    result = doctor(str(root), "--repair")
    assert result.returncode == 1, result.stdout + result.stderr  # corrupt lines stay: never deleted
    assert "repaired 2 session(s)" in result.stdout
    torn = root / "sessions" / "torn"
    assert (torn / LOG_NAME).read_bytes() == GOOD
    assert (torn / f"{LOG_NAME}.torn-{len(GOOD)}").read_bytes() == TORN
    legacy = root / "sessions" / "legacy"
    assert not (legacy / LEGACY_NAME).exists() and (legacy / f"{LEGACY_NAME}.migrated").exists()
    (snap,) = [orjson.loads(x) for x in (legacy / LOG_NAME).read_bytes().splitlines()]
    assert snap["type"] == "MESSAGES_SNAPSHOT" and len(snap["messages"]) == 2
    assert (root / "sessions" / "corrupt" / LOG_NAME).read_bytes() == corrupt
    assert (root / "sessions" / "oversize" / LOG_NAME).read_bytes() == oversize
    assert (root / "sessions" / "healthy" / LOG_NAME).read_bytes() == GOOD
    assert not (root / "sessions" / "nometa" / "meta.json").exists()
    assert "6 session(s), 2 with problems" in result.stdout

    before = snapshot(root)
    plain = doctor(str(root))
    assert plain.returncode == 1 and snapshot(root) == before
    rows = report_lines(plain.stdout)
    assert rows["torn"].endswith(" ok") and rows["legacy"].endswith(" ok")
    assert "events=1" in rows["legacy"] and "events=3" in rows["torn"]
    assert "2 corrupt" in rows["corrupt"] and "1 oversize" in rows["oversize"]
    again = doctor(str(root), "--repair")
    assert again.returncode == 1 and "repaired 0 session(s)" in again.stdout
    assert snapshot(root) == before


def test_repair_makes_a_torn_only_volume_healthy(tmp_path: Path) -> None:
    d = session(tmp_path, "torn", GOOD + TORN)
    result = doctor(str(tmp_path), "--repair")
    assert result.returncode == 0, result.stdout
    assert (d / LOG_NAME).read_bytes() == GOOD
    assert [p.name for p in sorted(d.iterdir()) if "torn-" in p.name] == [f"{LOG_NAME}.torn-{len(GOOD)}"]
    assert os.path.getsize(d / f"{LOG_NAME}.torn-{len(GOOD)}") == len(TORN)


def test_assign_gives_unclaimed_folders_to_a_project(seeded: Path, tmp_path: Path) -> None:
    """`--assign PROJECT SESSION...` claims the named folders; a session of another project is left
    alone (exit 1); `--assign PROJECT` alone takes every unclaimed folder."""
    root = tmp_path / "state"
    subprocess.run(["cp", "-a", str(seeded), str(root)], check=True)
    write_meta(root / "sessions" / "healthy", {"project": None, "epoch": "abcdef12"})  # read by an admin once
    refused = doctor(str(root), "--assign", "team", "nometa", "corrupt", "missing")
    assert refused.returncode == 1
    assert "nometa: assigned to team" in refused.stdout
    assert "corrupt: not assigned: belongs to project 'p'" in refused.stdout
    assert "missing: not assigned: no such session" in refused.stdout
    meta = orjson.loads((root / "sessions" / "nometa" / "meta.json").read_bytes())
    assert meta["project"] == "team" and meta["epoch"]
    everything = doctor(str(root), "--assign", "other")
    assert "healthy: assigned to other" in everything.stdout and "nometa:" not in everything.stdout
    assert orjson.loads((root / "sessions" / "healthy" / "meta.json").read_bytes())["project"] == "other"


def test_only_real_session_names_with_valid_names_are_sessions(tmp_path: Path) -> None:
    """What doctor and migrate walk: a link (to a folder outside the root, or inside it), a file
    and a folder whose name is no session name are not sessions."""
    sessions = tmp_path / "sessions"
    for name in ("b-two", "a-one", "Not_Valid"):
        (sessions / name).mkdir(parents=True)
    (sessions / "c-file").write_bytes(GOOD)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", sessions / "d-link")
    os.symlink(sessions / "a-one", sessions / "e-link")
    assert session_names(sessions) == ["a-one", "b-two"]
    assert session_names(tmp_path / "missing") == [] and session_names(sessions / "c-file") == []


def test_compact_builds_every_missing_cache_with_a_progress_bar(tmp_path: Path) -> None:
    from tests.test_cache_builder import covered, write_session
    from tests.test_sidecar import run

    lines = [x for r in range(30) for x in run(r, messages=3, words=200)]
    for name in ("a", "b"):
        write_session(tmp_path, name, lines)
    (tmp_path / "sessions" / "b" / "agui-events.compact").write_bytes(b"AGUI-COMPACT 1 e0e0e0e\nE 1 2")  # torn
    primary, secondary = os.openpty()  # stderr a terminal: the bar is drawn
    try:
        done = subprocess.run([SCRIPT, "doctor", str(tmp_path), "--compact"], stdout=subprocess.PIPE,
                              stderr=secondary, text=True, timeout=120, check=False)
        os.close(secondary)
        bar = b""
        while chunk := _read_some(primary):
            bar += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0, done.stdout
    assert "compact caches: 2 built or extended, 0 already up to date" in done.stdout
    assert b"100%" in bar and b"MB" in bar
    for name in ("a", "b"):
        assert covered(tmp_path / "sessions" / name / "agui-events.compact", "e0e0e0e", lines) == len(lines)
    again = doctor(str(tmp_path), "--compact")
    assert "compact caches: 0 built or extended, 2 already up to date" in again.stdout


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed: all read
        return b""
