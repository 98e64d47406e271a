"""Copy a finished run folder to object storage (any fsspec URL: ``s3://``, ``gs://``, ``abfs://``, ...).

A run is computed in a local (or shared) folder, where its fields are
written atomically and a killed run resumes; object stores have neither
renames nor appends, so the finished folder is copied there afterwards,
file by file, the run's hidden record first and ``manifest.json`` last: a
reader who finds the manifest at the URL finds every table beside it, and a
copy that stopped half-way is known by its record. Credentials come from the
environment or a profile, as fsspec's file systems read them; a URL that
carries them is refused, so that they reach no manifest or log.

A destination that holds a finished run is replaced only when asked
(``overwrite``), one that holds a stopped copy is replaced, and one that
holds anything else is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.spec import AbstractFileSystem

from screenxai.errors import ScreenxaiError
from screenxai.location import credentials_in_url, url_without_credentials
from screenxai.pipeline.run import RUN_RECORD

MANIFEST = "manifest.json"
_PROBE = ".screenxai-write-check"


class PublishError(ScreenxaiError):
    """A run folder cannot be copied to the destination asked for."""


@dataclass(frozen=True)
class Published:
    """What ``publish_run`` copied: to ``url``, ``n_files`` files of ``n_bytes`` bytes in ``seconds``."""

    url: str
    n_files: int
    n_bytes: int
    seconds: float


def run_files(run: Path) -> list[Path]:
    """The files of the finished run in ``run`` to copy: its record first, ``manifest.json`` last.

    Left out: the training's work folder (``*.work``: crop cache and
    checkpoints, kept only to resume a training) and the hidden temporaries
    of writes under way.
    """
    if not (run / MANIFEST).is_file():
        raise PublishError(f"{run}: no {MANIFEST}, so not a finished run; run `screenxai run` into it first "
                           "(or --resume it) and publish what it wrote")
    ends = [run / RUN_RECORD, run / MANIFEST]
    files = [path for path in sorted(run.rglob("*"))
             if path.is_file() and path not in ends and _is_output(path.relative_to(run))]
    return [*([ends[0]] if ends[0].is_file() else []), *files, ends[1]]


def _is_output(relative: Path) -> bool:
    """Whether a file of a run folder is one of its outputs (not a work folder's, not a temporary)."""
    if any(part.endswith(".work") for part in relative.parts[:-1]):
        return False
    name = relative.name
    return not (name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")))


def _file_system(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the path inside it; credentials in the URL are refused."""
    if "://" not in url:
        raise PublishError(f"{url}: not a URL; give an object-store location such as s3://bucket/runs/plate1")
    if credentials_in_url(url):
        raise PublishError(f"{url_without_credentials(url)}: credentials in a destination URL would be written "
                           "to logs; give them through the environment or a profile")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # no fsspec implementation for the scheme, or its package missing
        raise PublishError(f"{url}: cannot write there ({err})") from None
    return fs, root.rstrip("/")


def _store_error(url: str, action: str, err: Exception) -> PublishError:
    return PublishError(f"{url}: the store cannot be {action} ({type(err).__name__}: {err})")


def check_destination(url: str, overwrite: bool = False) -> None:
    """Fail now, not after a night's run, where ``url`` cannot take a run.

    Refused: an unreachable or unwritable store; a location that holds a
    finished run unless ``overwrite``; a location that holds anything but a
    run or a copy of one that stopped (which a new copy replaces). A small
    object is written and removed to prove that writing works.
    """
    _writable_destination(url, overwrite)


def _writable_destination(url: str, overwrite: bool) -> tuple[AbstractFileSystem, str, bool]:
    """``check_destination``'s checks; the file system, the path in it and whether it holds files."""
    fs, root = _file_system(url)
    try:
        held = fs.find(root) if fs.exists(root) else []
    except Exception as err:  # object-store clients raise many kinds (connection, permission, missing bucket)
        raise _store_error(url, "read", err) from err
    finished, started = f"{root}/{MANIFEST}" in held, f"{root}/{RUN_RECORD}" in held
    if held and not (finished or started):
        raise PublishError(f"{url}: holds {len(held)} files that are not a screenxai run; "
                           "choose an empty location")
    if finished and not overwrite:
        raise PublishError(f"{url}: already holds a run ({MANIFEST}); choose another location or pass --overwrite "
                           "to replace it")
    try:
        fs.pipe_file(f"{root}/{_PROBE}", b"")
        fs.rm_file(f"{root}/{_PROBE}")
    except Exception as err:
        raise _store_error(url, "written", err) from err
    return fs, root, bool(held)


def publish_run(run: str | Path, url: str, overwrite: bool = False,
                on_file: Callable[[int, int], None] | None = None) -> Published:
    """Copy the finished run in ``run`` to ``url``, ``manifest.json`` last; ``on_file(done, total)`` after each file.

    A stopped copy at ``url``, or with ``overwrite`` a finished run, is
    removed first, so that no file of it outlives the copy.
    """
    run = Path(run)
    _file_system(url)  # a bad URL is named before the folder is looked at
    files = run_files(run)
    fs, root, held = _writable_destination(url, overwrite)
    start = time.perf_counter()
    try:
        if held:
            fs.rm(root, recursive=True)
        for done, path in enumerate(files, start=1):
            fs.put_file(str(path), f"{root}/{path.relative_to(run).as_posix()}")
            if on_file is not None:
                on_file(done, len(files))
    except Exception as err:
        raise PublishError(f"{url}: copying {run} stopped ({type(err).__name__}: {err}); the run is whole in "
                           f"{run}; publish it again (screenxai publish {run} {url})") from err
    return Published(url, len(files), sum(path.stat().st_size for path in files), time.perf_counter() - start)
