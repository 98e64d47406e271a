"""The notebook API: ``Screen.open(plates)`` to explore and run, ``open_results(out)`` to read a run back.

``Screen.cells()`` is a lazy dask DataFrame with one partition per field:
nothing is read or segmented until it is computed. ``Screen.run`` is
``screenxai run`` from Python. ``open_results`` gives the tables of a run
folder; each is also a plain Parquet file or folder that
``pandas.read_parquet`` reads (``plate`` and ``well`` of ``cells/`` and
``embeddings/`` come back as categoricals: they are hive partitions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
from distributed import Client

from screenxai.cells import CellConfig, process_field
from screenxai.cells.field import empty_cell_table
from screenxai.errors import ScreenxaiError
from screenxai.pipeline.cell_stage import cached_plate
from screenxai.pipeline.cluster import connect
from screenxai.pipeline.run import open_plates, run_cells
from screenxai.plate.reader import FieldKey, Plate


def _field_cells(key: tuple[str, str, str, int], config: CellConfig) -> pd.DataFrame:
    """The cell table of one field (a partition of ``Screen.cells()``)."""
    url, name, well, field = key
    return process_field(cached_plate(url, name), well, field, config).table


@dataclass
class Screen:
    """One or more plates to analyse together."""

    plates: list[Plate]

    @classmethod
    def open(cls, plates: str | Path | Sequence[str | Path], layout: str | Path | None = None) -> Screen:
        """Open plates (paths or URLs); ``layout`` (a CSV) replaces the layouts stored in them."""
        paths = [plates] if isinstance(plates, (str, Path)) else list(plates)
        return cls(open_plates(paths, layout=layout))

    def fields(self, wells: Sequence[str] | None = None) -> list[FieldKey]:
        """Every field of the selected wells of every plate."""
        return [key for plate in self.plates for key in plate.field_keys(list(wells) if wells else None)]

    def cells(self, config: CellConfig | None = None, wells: Sequence[str] | None = None) -> dd.DataFrame:
        """Per-cell morphology of every field as a lazy dask DataFrame, one partition per field."""
        config = config or CellConfig()
        if len({tuple(p.channel_names) for p in self.plates}) > 1:
            raise ScreenxaiError("the plates have different channels; open them as separate screens")
        urls = {p.name: p.url for p in self.plates}
        keys = [(urls[k.plate], k.plate, k.well, k.field) for k in self.fields(wells)]
        meta = empty_cell_table(self.plates[0].channel_names, config)
        return dd.from_map(_field_cells, keys, config=config, meta=meta, enforce_metadata=False,
                           label="screenxai-cells")

    def run(self, out: str | Path, client: Client | None = None, bundle: str | Path | None = None,
            config: CellConfig | None = None, wells: Sequence[str] | None = None, resume: bool = False,
            strict: bool = False) -> Results:
        """Compute and write the run's tables to ``out`` (``screenxai run``); a local cluster when no client."""
        if client is None:
            with connect() as local:
                result = run_cells(self.plates, Path(out), local, config, wells, bundle=bundle, resume=resume,
                                   strict=strict)
        else:
            result = run_cells(self.plates, Path(out), client, config, wells, bundle=bundle, resume=resume,
                               strict=strict)
        return open_results(result.out)


@dataclass
class Results:
    """The tables of a run folder."""

    out: Path

    @property
    def manifest(self) -> dict:
        """Versions, configuration, bundle hash, plates, timings and per-field status."""
        return json.loads((self.out / "manifest.json").read_text())

    @property
    def wells(self) -> pd.DataFrame:
        """One row per plate and well."""
        return pd.read_parquet(self.out / "wells.parquet")

    @property
    def fields(self) -> pd.DataFrame:
        """One row per field with its status and QC."""
        return pd.read_parquet(self.out / "fields.parquet")

    def cells(self, filters: list | None = None) -> pd.DataFrame:
        """The per-cell table, e.g. ``filters=[("well", "==", "B03")]``."""
        return pd.read_parquet(self.out / "cells", filters=filters)

    def embeddings(self, filters: list | None = None) -> pd.DataFrame:
        """``z_sem`` per cell (runs with a bundle)."""
        return pd.read_parquet(self.out / "embeddings", filters=filters)


def open_results(out: str | Path) -> Results:
    """Re-open the run written to ``out``."""
    out = Path(out)
    if not (out / "manifest.json").is_file():
        raise ScreenxaiError(f"{out} holds no finished screenxai run (manifest.json is missing)")
    return Results(out)

