"""The cell stage as Dask tasks: one task per field, each writing its own Parquet file.

A task opens the plate itself (cached per worker process), so no image or
plate object travels through the scheduler; it returns only a small status
row. A failing field is recorded with its error, never dropped silently.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from screenxai.cells import CellConfig, process_field
from screenxai.plate.reader import Plate, open_plate
from screenxai.pipeline.sinks import write_parquet_atomic

PARTITION_COLUMNS = ("plate", "well")


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
        return Path(self.out) / "cells" / f"plate={self.plate_name}" / f"well={self.well}" / f"field-{self.field}.parquet"


@lru_cache(maxsize=16)
def cached_plate(url: str, name: str) -> Plate:
    """Open each plate once per worker process."""
    return open_plate(url, name=name)


def run_field(task: FieldTask, config: CellConfig) -> dict:
    """Process one field and write its cells; return its status and QC row."""
    start = time.perf_counter()
    status = {"plate": task.plate_name, "well": task.well, "field": task.field}
    try:
        import torch

        torch.set_num_threads(1)
        batch = process_field(cached_plate(task.plate_url, task.plate_name), task.well, task.field, config)
        table = batch.table.drop(columns=list(PARTITION_COLUMNS))
        qc = {k: v for k, v in batch.qc.items() if k not in status}
        status.update(status="done", error="", **qc, seconds=time.perf_counter() - start)
        write_parquet_atomic(table, task.cells_path, marker=status)
        return status
    except Exception as err:  # recorded per field; the rest of the plate goes on
        status.update(status="failed", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=5))
    status["seconds"] = time.perf_counter() - start
    return status
