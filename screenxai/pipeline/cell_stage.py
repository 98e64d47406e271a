"""The cell stage as Dask tasks: one task per field, each writing its own Parquet file.

A task opens the plate itself (cached per worker process), so no image or
plate object travels through the scheduler; it returns only a small status
row with the field's QC numbers and flags. A failing field is recorded with
its error, never dropped silently.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from screenxai.cells import CellConfig, process_field
from screenxai.plate.reader import Plate, open_plate
from screenxai.pipeline.allocator import release_free_memory
from screenxai.pipeline.sinks import write_parquet_atomic
from screenxai.pipeline.summary import OWN_FIELD_FLAGS, field_flags

PARTITION_COLUMNS = ("plate", "well")
FAILED_QC = {"label_source": "", "n_cells": 0, "saturated_fraction": float("nan"), "focus": float("nan"),
             "missing_chunks": 0}


@dataclass(frozen=True)
class FieldTask:
    """What one cell-stage task needs: where the plate is, which field, where to write."""

    plate_url: str
    plate_name: str
    well: str
    field: int
    out: str

    @property
    def cells_path(self) -> Path:
        """The field's Parquet file under hive partitions plate=/well=."""
        folder = Path(self.out) / "cells" / f"plate={self.plate_name}" / f"well={self.well}"
        return folder / f"field-{self.field}.parquet"

    @property
    def identity(self) -> dict:
        """The keys that start every status row of the field."""
        return {"plate": self.plate_name, "well": self.well, "field": self.field}


@lru_cache(maxsize=16)
def cached_plate(url: str, name: str) -> Plate:
    """Open each plate once per worker process."""
    return open_plate(url, name=name)


def done_status(identity: dict, qc: dict) -> dict:
    """A processed field's status row: its QC numbers and the flags it decides alone."""
    numbers = {k: v for k, v in qc.items() if k not in identity}
    return {**identity, "status": "done", "error": "", **numbers, **field_flags(numbers)}


def failed_status(identity: dict, err: Exception) -> dict:
    """A failed field's status row (call inside ``except``): the error and traceback, 0 cells, NaN measures.

    It has a done row's columns and dtypes, so the fields table keeps its
    documented dtypes whether or not fields failed.
    """
    return {**identity, "status": "failed", "error": f"{type(err).__name__}: {err}", **FAILED_QC,
            **dict.fromkeys(OWN_FIELD_FLAGS, False), "traceback": traceback.format_exc(limit=5)}


def run_field(task: FieldTask, config: CellConfig) -> dict:
    """Process one field and write its cells; return its status and QC row."""
    start = time.perf_counter()
    try:
        batch = process_field(cached_plate(task.plate_url, task.plate_name), task.well, task.field, config)
        table = batch.table.drop(columns=list(PARTITION_COLUMNS))
        status = {**done_status(task.identity, batch.qc), "seconds": time.perf_counter() - start}
        write_parquet_atomic(table, task.cells_path, marker=status)
        return status
    except Exception as err:  # recorded per field; the rest of the plate goes on
        return {**failed_status(task.identity, err), "seconds": time.perf_counter() - start}
    finally:
        release_free_memory()  # the field's temporaries go back to the system, not to this worker's heap
