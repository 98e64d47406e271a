"""Atomic Parquet files: complete or absent, markers invisible to readers."""

from __future__ import annotations

import pandas as pd
import pytest

from screenxai.pipeline.sinks import done_marker, is_done, write_parquet_atomic


def test_atomic_write_reads_back_through_hive_partitions(tmp_path):
    root = tmp_path / "cells"
    for well, values in (("A01", [1.0, 2.0]), ("B02", [3.0])):
        write_parquet_atomic(pd.DataFrame({"label": range(len(values)), "area": values}),
                             root / "plate=P1" / f"well={well}" / "field-0.parquet")
    table = pd.read_parquet(root)
    assert sorted(table["area"]) == [1.0, 2.0, 3.0]
    assert isinstance(table["well"].dtype, pd.CategoricalDtype)
    assert list(pd.read_parquet(root, filters=[("well", "==", "B02")])["area"]) == [3.0]


def test_done_marker_written_last_and_hidden(tmp_path):
    path = tmp_path / "field-0.parquet"
    assert not is_done(path)
    write_parquet_atomic(pd.DataFrame({"x": [1]}), path)
    assert is_done(path) and done_marker(path).name.startswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".field-0.parquet.done", "field-0.parquet"]


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "field-0.parquet"
    with pytest.raises(Exception):
        write_parquet_atomic(pd.DataFrame({"x": [object()]}), path)
    assert not path.exists() and not is_done(path)
