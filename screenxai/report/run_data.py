"""Read one run folder's tables and counterfactuals, tolerating every optional part being absent.

The report is built from these only: it never opens the plate or the
models, so it can be rebuilt anywhere the run folder is copied.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from screenxai.errors import ScreenxaiError

OPTIONAL_TABLES = ("fields", "wells", "failures", "attributes", "readouts", "interpretable", "treatments",
                   "similarity")
WELL_NAME = re.compile(r"^([A-Za-z]+)0*(\d+)$")


class ReportError(ScreenxaiError):
    """A folder cannot be reported on: it is not a run folder, or a table in it is unreadable."""


@dataclass
class RunData:
    """The parts of a run folder the report shows; ``None`` (or empty) where the run has none."""

    out: Path
    manifest: dict
    tables: dict[str, pd.DataFrame | None]
    class_names: tuple[str, ...] = ()
    counterfactuals: object | None = None  # an xarray.Dataset
    adversarial: pd.DataFrame | None = None
    missing: list[str] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)


def load_run(out: Path) -> RunData:
    """Read ``out``'s manifest, tables, bundle class names and counterfactuals (lazily)."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise ReportError(f"{out}: not a screenxai run folder (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{manifest_path}: not valid JSON ({err})") from None
    tables = {name: _read_table(out / f"{name}.parquet") for name in OPTIONAL_TABLES}
    data = RunData(out, manifest, tables, _class_names(out), _open_counterfactuals(out),
                   _read_table(out / "bundle" / "interpretable" / "adversarial.parquet"))
    if tables["attributes"] is not None:
        tables["attributes"] = normalise_attributes(tables["attributes"], data.class_names)
    return data


def _read_table(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ReportError(f"{path}: unreadable Parquet table ({type(err).__name__}: {err})") from None


def _class_names(out: Path) -> tuple[str, ...]:
    config = out / "bundle" / "config.json"
    if not config.is_file():
        return ()
    return tuple(json.loads(config.read_text()).get("class_names", ()))


def _open_counterfactuals(out: Path):
    path = out / "counterfactuals.zarr"
    if not path.exists():
        return None
    import xarray as xr

    try:
        return _by_attribute_id(_small_parts_loaded(xr.open_zarr(path)))
    except Exception as err:  # zarr and xarray raise several types for a damaged store
        raise ReportError(f"{path}: unreadable counterfactuals ({type(err).__name__}: {err})") from None


def _small_parts_loaded(dataset):
    """The counterfactuals with every coordinate and every variable but the images read into memory, once.

    The report looks these up for every attribute; left lazy, each look-up
    would read the Zarr again. Images stay lazy, read a few cells at a time.
    """
    for variable in dataset.variables.values():
        if not {"y", "x"} & set(variable.dims):
            variable.load()
    return dataset


def _by_attribute_id(dataset):
    """The counterfactuals with the coordinates the report looks up by: ``cell_id``, ``channel``, attribute ids.

    A run's Zarr indexes cells by id, channels by name (``c``) and attributes
    by ``treatment/rank`` with the id in ``attribute_id``.
    """
    if "cell_id" not in dataset.coords:
        dataset = dataset.assign_coords(cell_id=("cell", dataset["cell"].values))
    if "channel" not in dataset.coords and "c" in dataset.coords:
        dataset = dataset.assign_coords(channel=("c", dataset["c"].values))
    if "attribute_id" in dataset.coords:
        dataset = dataset.assign_coords(attribute=dataset["attribute_id"].values)
    return dataset


def normalise_attributes(attributes: pd.DataFrame, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Give a two-class attribute table the multi-treatment columns: ``treatment`` and ``attribute``."""
    table = attributes.copy()
    if "treatment" not in table:
        table["treatment"] = class_names[1] if len(class_names) > 1 else "treatment"
    if "attribute" not in table:
        table["attribute"] = table["rank"].astype(str)
    table["treatment"] = table["treatment"].astype(str)
    table["attribute"] = table["attribute"].astype(str)
    return table.sort_values(["treatment", "rank"], kind="stable").reset_index(drop=True)


def attribute_column(columns, attribute: str, kind: str) -> str | None:
    """The wells (or cells) column of an attribute's ``mean``, ``sd``, ``robust_z`` or per-cell ``score``.

    Both namings are accepted: ``mean_attribute_X`` / ``sd_attribute_X`` /
    ``robust_z_attribute_X`` and the rank-based ``attribute_X_sd`` /
    ``attribute_X_robust_z``; ``None`` when the run has neither.
    """
    candidates = {"mean": [f"mean_attribute_{attribute}"],
                  "sd": [f"sd_attribute_{attribute}", f"attribute_{attribute}_sd"],
                  "robust_z": [f"robust_z_attribute_{attribute}", f"attribute_{attribute}_robust_z"],
                  "score": [f"attribute_{attribute}"]}[kind]
    return next((c for c in candidates if c in columns), None)


def well_position(wells: pd.DataFrame) -> pd.DataFrame:
    """``row`` and ``column`` (from 1) of every well: the layout's, else parsed from names like ``B03``."""
    if {"row", "column"} <= set(wells.columns) and pd.api.types.is_integer_dtype(wells["row"]):
        return pd.DataFrame({"row": wells["row"].astype(int), "column": wells["column"].astype(int)},
                            index=wells.index)
    rows, columns = [], []
    for name in wells["well"].astype(str):
        match = WELL_NAME.match(name)
        if match is None:
            raise ReportError(f"wells.parquet: well {name!r} has no row letter and column number")
        letters, number = match.groups()
        index = 0
        for letter in letters.upper():
            index = index * 26 + ord(letter) - ord("A") + 1
        rows.append(index)
        columns.append(int(number))
    return pd.DataFrame({"row": rows, "column": columns}, index=wells.index)
