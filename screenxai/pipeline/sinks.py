"""Write Parquet files so that a reader never sees a half-written one.

Each file is written atomically (``screenxai.io``), then marked done. The
temporary file and the marker start with '.', so pyarrow and pandas skip
them when reading a folder of Parquet files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from screenxai import io


def write_parquet_atomic(table: pd.DataFrame, path: Path, marker: dict | None = None) -> Path:
    """Write ``table`` to ``path`` atomically, then its done-marker.

    ``marker`` (JSON-ready) is stored in the done-marker: a field's status
    row, so that a resumed run knows the fields finished before it.
    """
    io.write_parquet_atomic(table, path)
    io.write_json_atomic(done_marker(path), marker or {}, indent=None, default=_plain)
    return path


def read_marker(path: Path) -> dict | None:
    """What the done-marker of ``path`` holds, or None when ``path`` is not completely written."""
    if not is_done(path):
        return None
    text = done_marker(path).read_text()
    return json.loads(text) if text else {}


def _plain(value):
    """numpy scalars as Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else str(value)


def is_done(path: Path) -> bool:
    """Whether ``path`` was completely written (its done-marker exists)."""
    return path.exists() and done_marker(path).exists()


def done_marker(path: Path) -> Path:
    """The hidden file whose existence says ``path`` is complete."""
    return path.with_name(f".{path.name}.done")
