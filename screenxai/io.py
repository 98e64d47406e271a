"""Atomic writes of files and folders: a reader sees the old content or the new, never a part.

A file is written to a uniquely named hidden temporary beside its target,
flushed to disk, then renamed onto the target. A folder is built in a
uniquely named hidden temporary beside its target, flushed, then swapped
with the target in one ``renameat2(RENAME_EXCHANGE)`` call where the file
system offers it (Linux), so the target always holds a complete folder.
Elsewhere the old folder is first moved aside under a unique name; should
the process die between the two renames, the next write of that folder
(or ``recover_folder``) puts the old one back first.

Temporaries start with ``.``, so pyarrow, pandas and the bundle reader skip
them; one left by a crash never blocks a later write (every name is new)
and moved-aside old folders are removed by the next write. New files and
folders get the process umask, like any other file the user creates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_TEMPORARY = "tmp"
_ASIDE = "old"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def temporary_sibling(path: Path, kind: str = _TEMPORARY) -> Path:
    """A new hidden name beside ``path``: ``.{name}.{uuid}.{kind}``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.{kind}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(folder) / name)
        _fsync_dir(Path(folder))


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is flushed and renamed onto ``path``.

    For writers that take a path (``torch.save``, ``pq.write_table``). On an
    exception the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        _fsync_file(tmp)
        _rename(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _write(tmp: Path, data: bytes) -> None:
    with open(tmp, "xb") as handle:
        handle.write(data)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path``."""
    with atomic_file(path) as tmp:
        _write(tmp, data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: object, *, indent: int | None = 2, default=None) -> Path:
    """Replace ``path`` with ``value`` as JSON atomically; ``default`` as for ``json.dumps``."""
    return write_text_atomic(path, json.dumps(value, indent=indent, default=default))


def write_parquet_atomic(table: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Replace ``path`` with ``table`` as Parquet (a DataFrame without its index) atomically."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def _libc_renameat2():
    """libc's ``renameat2``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _libc_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step; False where the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _asides(target: Path) -> list[Path]:
    """Old folders of ``target`` moved aside by earlier swaps, newest first."""
    found = target.parent.glob(f".{target.name}.*.{_ASIDE}")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_folder(target: str | Path) -> None:
    """Put back the old folder a crashed swap moved aside, if ``target`` is missing; remove older leftovers."""
    target = Path(target)
    asides = _asides(target)
    if asides and not target.exists():
        _rename(asides.pop(0), target)
        _fsync_dir(target.parent)
    for leftover in asides:
        shutil.rmtree(leftover, ignore_errors=True)


def _move_into_place(built: Path, target: Path) -> bool:
    """Rename ``built`` to ``target`` if there is no ``target``; False when there is one."""
    if target.exists():
        return False
    try:
        _rename(built, target)
    except OSError as err:  # another writer created it meanwhile
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def replace_folder(built: Path, target: Path) -> None:
    """Swap the complete folder ``built`` into ``target``'s place and remove the old ``target``."""
    _fsync_tree(built)
    if _move_into_place(built, target):
        pass
    elif _exchange(built, target):
        shutil.rmtree(built, ignore_errors=True)  # now the old folder
    else:
        aside = temporary_sibling(target, _ASIDE)
        _rename(target, aside)
        try:
            _rename(built, target)
        except BaseException:
            _rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(target.parent)


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``target`` to fill; on success it replaces ``target`` as a whole.

    On an exception the new folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    built = temporary_sibling(target)
    built.mkdir()
    try:
        yield built
        replace_folder(built, target)
    finally:
        if built.exists():
            shutil.rmtree(built, ignore_errors=True)
