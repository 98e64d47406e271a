"""A Zarr cache of normalised single-cell crops, filled by Dask tasks, read by training.

Training needs many passes over the same crops, while segmenting and
cropping a field costs far more than reading its crops back. So the cells
of the chosen wells are cut once, one Dask task per field, and each task
writes its field's crops as a Zarr array plus its cell table as Parquet:

    CACHE/fields/{plate}/{well}/field-{f}.zarr      crops (N, C, S, S) float32 in [-1, 1]
    CACHE/fields/{plate}/{well}/field-{f}.parquet   one row per crop, same order
    CACHE/layouts/{plate}.parquet                   each plate's layout, joined to the cells on reading
    CACHE/cache.json                                channels, crop size, normalisation per plate

A field whose Parquet file has its done-marker is not cut again, so an
interrupted cache fill resumes. Each task writes only its own files, so no
two tasks touch the same Zarr metadata. Cells are sampled per field (at most
``ceil(max_cells_per_well / fields in the well)``), with a seed derived from
the plate, well and field, so a cache is the same however the tasks run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from distributed import Client, as_completed

from screenxai.cells import CellConfig, fit_normalisation, process_field
from screenxai.cells.normalise import NormalisationStats
from screenxai.errors import ScreenxaiError
from screenxai.io import atomic_folder, write_json_atomic
from screenxai.pipeline.cell_stage import cached_plate
from screenxai.pipeline.sinks import is_done, write_parquet_atomic
from screenxai.plate.reader import Plate

CACHE_DESCRIPTION = "cache.json"


class CropCacheError(ScreenxaiError):
    """A crop cache is incomplete, inconsistent, or was built with other settings."""


@dataclass(frozen=True)
class CropTask:
    """One field to cut into the cache."""

    plate_url: str
    plate_name: str
    well: str
    field: int
    cache: str
    max_cells: int | None
    seed: int

    @property
    def stem(self) -> Path:
        """The field's files without suffix."""
        return Path(self.cache) / "fields" / self.plate_name / self.well / f"field-{self.field}"


def _field_seed(seed: int, plate: str, well: str, field: int) -> int:
    digest = hashlib.sha256(f"{seed}/{plate}/{well}/{field}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def cache_field(task: CropTask, config: CellConfig) -> dict:
    """Cut one field's interior cells (border cells excluded), sample them, write crops and table."""
    table_path = task.stem.with_suffix(".parquet")
    if is_done(table_path):
        return {"plate": task.plate_name, "well": task.well, "field": task.field, "status": "cached",
                "n_cells": len(pd.read_parquet(table_path, columns=["cell_id"]))}
    batch = process_field(cached_plate(task.plate_url, task.plate_name), task.well, task.field, config)
    keep = np.flatnonzero(~batch.table["border"].to_numpy())
    if task.max_cells is not None and len(keep) > task.max_cells:
        rng = np.random.default_rng(_field_seed(task.seed, task.plate_name, task.well, task.field))
        keep = np.sort(rng.choice(keep, task.max_cells, replace=False))
    crops = np.ascontiguousarray(batch.crops[keep])
    with atomic_folder(task.stem.with_suffix(".zarr")) as crops_path:
        zarr.create_array(crops_path, data=crops, chunks=(max(1, min(len(crops), 256)), *crops.shape[1:]),
                          overwrite=True)
    write_parquet_atomic(batch.table.iloc[keep].reset_index(drop=True), table_path)
    return {"plate": task.plate_name, "well": task.well, "field": task.field, "status": "cut",
            "n_cells": len(keep)}


def crop_tasks(plates: Sequence[Plate], cache: Path, wells: dict[str, list[str]] | None,
               max_cells_per_well: int | None, seed: int) -> list[CropTask]:
    """One task per field of each plate's chosen wells (``wells[plate name]``; all wells when absent)."""
    tasks = []
    for plate in plates:
        chosen = (wells or {}).get(plate.name) or list(plate.wells)
        for well in chosen:
            keys = plate.field_keys([well])
            cap = None if max_cells_per_well is None else math.ceil(max_cells_per_well / len(keys))
            tasks.extend(CropTask(plate.url, plate.name, well, key.field, str(cache), cap, seed) for key in keys)
    return tasks


def build_crop_cache(plates: Sequence[Plate], cache: str | Path, client: Client, wells: dict[str, list[str]] | None,
                     crop_size: int, nuclear_channel: str | None = None, max_cells_per_well: int | None = None,
                     seed: int = 0, on_field: Callable[[dict], None] | None = None) -> Path:
    """Fill ``cache`` with the crops of the chosen wells of ``plates``, one Dask task per field.

    Each plate's crops are normalised with statistics fitted on its own
    negative-control wells. A cache made earlier with other settings is
    refused rather than mixed with new crops.
    """
    cache = Path(cache)
    description = {
        "crop_size": crop_size, "nuclear_channel": nuclear_channel, "max_cells_per_well": max_cells_per_well,
        "seed": seed, "channel_names": list(plates[0].channel_names),
        "normalisation": {p.name: fit_normalisation(p).to_dict() for p in plates},
        "wells": {p.name: (wells or {}).get(p.name) or list(p.wells) for p in plates},
    }
    for plate in plates[1:]:
        if list(plate.channel_names) != description["channel_names"]:
            raise CropCacheError(f"plate {plate.name} has channels {plate.channel_names}, but plate "
                                 f"{plates[0].name} has {plates[0].channel_names}; one model needs one channel set")
    _check_or_write_description(cache, description)
    for plate in plates:
        if plate.layout is not None:
            write_parquet_atomic(plate.layout.assign(plate=plate.name), cache / "layouts" / f"{plate.name}.parquet")
    configs = {p.name: CellConfig(crop_size=crop_size, nuclear_channel=nuclear_channel,
                                  normalisation=NormalisationStats.from_dict(description["normalisation"][p.name]))
               for p in plates}
    tasks = crop_tasks(plates, cache, wells, max_cells_per_well, seed)
    futures = [client.submit(cache_field, task, configs[task.plate_name], pure=False,
                             key=f"crops-{task.plate_name}-{task.well}-{task.field}") for task in tasks]
    for future in as_completed(futures, loop=client.loop):  # this client's loop, not the default's
        row = future.result()
        if on_field is not None:
            on_field(row)
    return cache


def _check_or_write_description(cache: Path, description: dict) -> None:
    path = cache / CACHE_DESCRIPTION
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != description:
            changed = sorted(k for k in description if existing.get(k) != description[k])
            raise CropCacheError(f"crop cache {cache} was built with other settings ({', '.join(changed)}); "
                                 "delete it or choose another output")
        return
    write_json_atomic(path, description)


def read_crop_cache(cache: str | Path) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """All crops of a filled cache, their table (same order) and the cache description."""
    cache = Path(cache)
    path = cache / CACHE_DESCRIPTION
    if not path.exists():
        raise CropCacheError(f"{cache} is not a crop cache (no {CACHE_DESCRIPTION})")
    description = json.loads(path.read_text())
    tables, crops = [], []
    for plate, wells in description["wells"].items():
        for well in wells:
            stems = sorted((cache / "fields" / plate / well).glob("field-*.parquet"),
                           key=lambda p: int(p.stem.split("-")[1]))
            if not stems or not all(is_done(s) for s in stems):
                raise CropCacheError(f"crop cache {cache}: well {plate}/{well} is incomplete; fill the cache again")
            for table_path in stems:
                table = pd.read_parquet(table_path)
                array = zarr.open_array(table_path.with_suffix(".zarr"), mode="r")
                if array.shape[0] != len(table):
                    raise CropCacheError(f"crop cache {table_path.with_suffix('.zarr')}: {array.shape[0]} crops "
                                         f"but {len(table)} table rows")
                tables.append(table)
                crops.append(array[:])
    if not tables:
        raise CropCacheError(f"crop cache {cache} holds no cells")
    table = pd.concat(tables, ignore_index=True)
    layouts = [pd.read_parquet(p) for p in sorted((cache / "layouts").glob("*.parquet"))]
    if layouts:
        layout = pd.concat(layouts, ignore_index=True)
        extra = [c for c in layout.columns if c not in table.columns or c in ("plate", "well")]
        table = table.merge(layout[extra], on=["plate", "well"], how="left", validate="many_to_one")
    return np.concatenate(crops), table, description
