"""Write Parquet files so that a reader never sees a half-written one.

Each file is written under a temporary name in its final folder, then
renamed into place (atomic on POSIX file systems), then marked done. The
temporary file and the marker start with '.', so pyarrow and pandas skip
them when reading a folder of Parquet files.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet_atomic(table: pd.DataFrame, path: Path, marker: dict | None = None) -> Path:
    """Write ``table`` to ``path`` via a temporary file and a rename, then a done-marker.

    ``marker`` (JSON-ready) is stored in the done-marker: a field's status
    row, so that a resumed run knows the fields finished before it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    done = done_marker(path)
    tmp_marker = done.with_name(done.name + ".tmp")
    tmp_marker.write_text(json.dumps(marker or {}, default=_plain))
    os.replace(tmp_marker, done)
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
