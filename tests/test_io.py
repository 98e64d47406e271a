"""Atomic files and folders: a crash or an error at any step leaves the old or the new content, and never
blocks the next write; temporaries do not collide; outputs get the umask."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pandas as pd
import pytest

from screenxai import io

CRASHED = 17
FILE_STEPS = ["_write", "_fsync_file", "_rename", "_fsync_dir"]
# (step, which call of it): the order replace_folder runs them in, with and without an exchanging rename
EXCHANGE_STEPS = [("_fsync_tree", 1), ("_exchange", 1), ("rmtree", 1), ("_fsync_dir", 1)]
TWO_RENAME_STEPS = [("_fsync_tree", 1), ("_rename", 1), ("_rename", 2), ("rmtree", 1), ("_fsync_dir", 1)]


class Fault(OSError):
    """An error raised by a patched step."""


def _patch(step: str, nth: int, action) -> None:
    """Replace ``step`` of ``screenxai.io`` (``rmtree``: shutil's) so that its ``nth`` call does ``action``."""
    owner, name = (io.shutil, "rmtree") if step == "rmtree" else (io, step)
    real, calls = getattr(owner, name), []

    def patched(*args, **kwargs):
        calls.append(args)
        if len(calls) == nth:
            action()
        return real(*args, **kwargs)

    setattr(owner, name, patched)


def _crash() -> None:
    os._exit(CRASHED)  # the process dies here: no except or finally block runs


def _crash_during(step: str, nth: int, write, no_exchange: bool = False) -> None:
    """Run ``write`` in a forked process that dies just before the ``nth`` call of ``step``."""

    def child() -> None:
        if no_exchange:
            io._exchange = lambda a, b: False
        _patch(step, nth, _crash)
        write()

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    if process.is_alive():
        process.kill()
    assert process.exitcode == CRASHED, f"the write never reached {step} call {nth}"


def _write_folder(target: Path, text: str) -> None:
    with io.atomic_folder(target) as built:
        (built / "sub").mkdir()
        (built / "a.txt").write_text(text)
        (built / "sub" / "b.txt").write_text(text * 2)


def _folder_content(target: Path) -> dict[str, str] | None:
    if not target.exists():
        return None
    return {p.relative_to(target).as_posix(): p.read_text() for p in target.rglob("*") if p.is_file()}


def _whole(text: str) -> dict[str, str]:
    return {"a.txt": text, "sub/b.txt": text * 2}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("step", FILE_STEPS)
def test_a_crash_at_any_step_of_a_file_write_leaves_old_or_new_and_the_next_write_succeeds(tmp_path, step):
    target = tmp_path / "table.json"
    io.write_json_atomic(target, {"version": "old", "rows": list(range(1000))})
    _crash_during(step, 1, lambda: io.write_json_atomic(target, {"version": "new", "rows": list(range(2000))}))
    found = json.loads(target.read_text())
    assert found["version"] in ("old", "new")
    assert len(found["rows"]) == (1000 if found["version"] == "old" else 2000)
    assert found["version"] == ("new" if step == "_fsync_dir" else "old")
    io.write_json_atomic(target, {"version": "next", "rows": [1]})
    assert json.loads(target.read_text())["version"] == "next"


def test_a_temporary_left_by_a_crash_is_ignored_by_readers_of_the_folder(tmp_path):
    table = pd.DataFrame({"x": range(5)})
    io.write_parquet_atomic(table, tmp_path / "part-0.parquet")
    _crash_during("_rename", 1, lambda: io.write_parquet_atomic(table.assign(x=table["x"] + 10),
                                                               tmp_path / "part-1.parquet"))
    assert len(_hidden(tmp_path)) == 1  # the crashed write's temporary, complete but never renamed
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path), table)
    io.write_parquet_atomic(table, tmp_path / "part-1.parquet")
    assert len(pd.read_parquet(tmp_path)) == 10


@pytest.mark.parametrize("step", FILE_STEPS)
def test_an_error_at_any_step_of_a_file_write_leaves_old_or_new_and_no_temporary(tmp_path, monkeypatch, step):
    target = tmp_path / "data.bin"
    io.write_bytes_atomic(target, b"old" * 100)

    def fail():
        raise Fault("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(io, step, getattr(io, step))  # undone after the block
        _patch(step, 1, fail)
        with pytest.raises(Fault):
            io.write_bytes_atomic(target, b"new" * 200)
    assert target.read_bytes() == (b"new" * 200 if step == "_fsync_dir" else b"old" * 100)
    assert _hidden(tmp_path) == []
    io.write_bytes_atomic(target, b"next")
    assert target.read_bytes() == b"next"


@pytest.mark.parametrize("step, nth", EXCHANGE_STEPS)
def test_a_crash_at_any_step_of_a_folder_swap_leaves_the_old_or_the_new_folder_whole(tmp_path, step, nth):
    target = tmp_path / "bundle"
    _write_folder(target, "old")
    _crash_during(step, nth, lambda: _write_folder(target, "new"))
    assert _folder_content(target) in (_whole("old"), _whole("new"))
    _write_folder(target, "next")
    assert _folder_content(target) == _whole("next")


@pytest.mark.parametrize("step, nth", TWO_RENAME_STEPS)
def test_without_an_exchanging_rename_a_crashed_swap_is_undone_by_the_next_write(tmp_path, step, nth):
    target = tmp_path / "bundle"
    _write_folder(target, "old")
    _crash_during(step, nth, lambda: _write_folder(target, "new"), no_exchange=True)
    io.recover_folder(target)
    assert _folder_content(target) in (_whole("old"), _whole("new"))
    assert not [n for n in _hidden(tmp_path) if n.endswith(".old")]
    _crash_during(step, nth, lambda: _write_folder(target, "newer"), no_exchange=True)
    _write_folder(target, "next")  # recovers first, then writes
    assert _folder_content(target) == _whole("next")
    assert not [n for n in _hidden(tmp_path) if n.endswith(".old")]


@pytest.mark.parametrize("no_exchange, step, nth", [(False, "_fsync_tree", 1), (False, "_exchange", 1),
                                                    (True, "_fsync_tree", 1), (True, "_rename", 1),
                                                    (True, "_rename", 2)])
def test_an_error_during_a_folder_swap_keeps_the_old_folder_and_no_temporary(tmp_path, monkeypatch, no_exchange,
                                                                             step, nth):
    target = tmp_path / "bundle"
    _write_folder(target, "old")
    if no_exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    monkeypatch.setattr(io, step, getattr(io, step))

    def fail():
        raise Fault("no space left")

    _patch(step, nth, fail)
    with pytest.raises(Fault):
        _write_folder(target, "new")
    assert _folder_content(target) == _whole("old")
    assert _hidden(tmp_path) == []
    monkeypatch.undo()
    _write_folder(target, "next")
    assert _folder_content(target) == _whole("next")


def test_an_error_while_building_a_folder_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "bundle"
    _write_folder(target, "old")
    with pytest.raises(ValueError), io.atomic_folder(target) as built:
        (built / "a.txt").write_text("half")
        raise ValueError("the writer failed")
    assert _folder_content(target) == _whole("old") and _hidden(tmp_path) == []


def test_the_first_write_of_a_folder_creates_it_and_its_parents(tmp_path):
    target = tmp_path / "deep" / "er" / "bundle"
    _write_folder(target, "first")
    assert _folder_content(target) == _whole("first") and _hidden(target.parent) == []


def test_concurrent_writes_of_one_file_and_one_folder_each_leave_one_whole_version(tmp_path):
    file_target, folder_target = tmp_path / "shared.txt", tmp_path / "shared"
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for round_ in range(5):
                io.write_text_atomic(file_target, f"{i}-{round_}\n" * 5000)
                _write_folder(folder_target, f"{i}-{round_}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    lines = set(file_target.read_text().splitlines())
    assert len(lines) == 1 and len(file_target.read_text().splitlines()) == 5000
    text = _folder_content(folder_target)["a.txt"]
    assert _folder_content(folder_target) == _whole(text)
    assert _hidden(tmp_path) == []


@pytest.fixture()
def umask():
    """Set the process umask for a test and restore it after."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_and_folders_get_the_process_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    io.write_bytes_atomic(tmp_path / "a.bin", b"x")
    io.write_parquet_atomic(pd.DataFrame({"x": [1]}), tmp_path / "t.parquet")
    with io.atomic_file(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    _write_folder(tmp_path / "folder", "x")
    for name in ("a.bin", "t.parquet", "b.bin", "folder/a.txt", "folder/sub/b.txt"):
        assert _mode(tmp_path / name) == file_mode, name
    for name in ("folder", "folder/sub"):
        assert _mode(tmp_path / name) == folder_mode, name
