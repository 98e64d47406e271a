"""``screenxai run``: plates in, per-cell and per-well Parquet tables out, on a Dask cluster.

Today the run is the cell stage (segmentation or plate labels, crops,
morphology features, QC) followed by the per-well gather; the model stages
slot in after the cell stage.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from distributed import Client, as_completed

from screenxai import __version__
from screenxai.cells import CellConfig
from screenxai.errors import ScreenxaiError
from screenxai.plate.reader import Plate, open_plate
from screenxai.pipeline.cell_stage import FieldTask, run_field
from screenxai.pipeline.sinks import write_parquet_atomic
from screenxai.pipeline.summary import well_table

DEPENDENCIES = ("dask", "distributed", "zarr", "ome-zarr", "xarray", "torch", "diffusers", "pandas", "pyarrow",
                "scikit-image")


@dataclass
class RunResult:
    """Where a run wrote its tables, and the tables it gathered."""

    out: Path
    wells: pd.DataFrame
    fields: pd.DataFrame
    seconds: float
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)


def field_tasks(plates: Sequence[Plate], out: Path, wells: Sequence[str] | None = None) -> list[FieldTask]:
    """One task per field of the selected wells of every plate."""
    names = [p.name for p in plates]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ScreenxaiError(f"plates share the name(s) {clashes}; every plate of a run needs its own name")
    return [FieldTask(plate.url, plate.name, key.well, key.field, str(out))
            for plate in plates for key in plate.field_keys(list(wells) if wells else None)]


def run_cells(plates: Sequence[Plate], out: Path, client: Client, config: CellConfig | None = None,
              wells: Sequence[str] | None = None,
              on_field: Callable[[dict], None] | None = None) -> RunResult:
    """Run the cell stage of every field on ``client`` and gather the per-well table.

    ``on_field`` is called with each field's status row as it completes
    (progress bars). Writes ``cells/``, ``fields.parquet``, ``wells.parquet``
    (and ``failures.parquet`` when fields failed) and ``manifest.json``.
    """
    config = config or CellConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = field_tasks(plates, out, wells)
    futures = client.map(run_field, tasks, config=config, key=[f"cells-{t.plate_name}-{t.well}-{t.field}"
                                                                 for t in tasks])
    rows = []
    for future in as_completed(futures):
        row = future.result()
        rows.append(row)
        if on_field is not None:
            on_field(row)
    fields = pd.DataFrame(rows).sort_values(["plate", "well", "field"]).reset_index(drop=True)
    failures = fields[fields["status"] == "failed"][["plate", "well", "field", "error"]]
    fields = fields.drop(columns=[c for c in ("traceback",) if c in fields])
    done = fields[fields["status"] == "done"]
    if done.empty:
        raise ScreenxaiError(f"every field failed; first error: {failures['error'].iloc[0]}")
    cells = pd.read_parquet(out / "cells")
    wells_table = well_table(cells, fields, {p.name: p.layout for p in plates})
    write_parquet_atomic(fields, out / "fields.parquet")
    write_parquet_atomic(wells_table, out / "wells.parquet")
    if not failures.empty:
        write_parquet_atomic(failures, out / "failures.parquet")
    seconds = time.perf_counter() - start
    write_manifest(out, plates, config, fields, seconds)
    return RunResult(out, wells_table, fields, seconds, failures)


def write_manifest(out: Path, plates: Sequence[Plate], config: CellConfig, fields: pd.DataFrame,
                   seconds: float) -> Path:
    """``manifest.json``: versions, config, plates, timings and per-field status."""
    manifest = {
        "screenxai": __version__,
        "python": platform.python_version(),
        "dependencies": {name: version(name) for name in DEPENDENCIES},
        "config": {"cells": _jsonable(asdict(config))},
        "plates": [{"name": p.name, "url": p.url, "ngff_version": p.ngff_version, "wells": len(p.wells),
                    "fields": len(p.field_keys()), "channels": p.channel_names} for p in plates],
        "seconds": round(seconds, 3),
        "fields": fields[["plate", "well", "field", "status", "error", "seconds"]].to_dict(orient="records"),
    }
    path = out / "manifest.json"
    tmp = path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return path


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def open_plates(paths: Sequence[str | Path], layout: str | Path | None = None) -> list[Plate]:
    """Open every plate; one layout CSV, when given, applies to all of them."""
    return [open_plate(path, layout=layout) for path in paths]
