"""Plate layouts: the condition of each well.

A layout is a table with one row per well: a ``well`` column (``B03``) and
any condition columns (``compound``, ``dose_index``, ``control``...). It comes
from a CSV file or from the plate's own attributes, where ``screenxai
convert`` and ``screenxai simulate`` store it. The conventional column
``control`` holds ``negative``, ``positive`` or another label (``dose``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from screenxai.errors import LayoutError
from screenxai.plate.wells import normalise_well, well_sort_key

CONTROL_COLUMN = "control"
NEGATIVE = "negative"
POSITIVE = "positive"


def read_layout(path: str | Path, required_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a layout CSV and validate it (see ``validate_layout``)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"layout file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype={"well": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise LayoutError(f"layout file {path} is not a readable CSV: {err}") from err
    return validate_layout(table, source=str(path), required_columns=required_columns)


def validate_layout(
    table: pd.DataFrame,
    source: str = "layout",
    required_columns: Iterable[str] = (),
    plate_wells: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Return a clean copy of ``table`` with canonical well names, sorted by well.

    Checks: a ``well`` column exists, every well name parses, no well appears
    twice, every column in ``required_columns`` exists, and (when
    ``plate_wells`` is given) every layout well exists on the plate. Each
    failure raises one ``LayoutError`` naming ``source`` and the offending
    wells or columns.
    """
    if "well" not in table.columns:
        raise LayoutError(f"{source}: no 'well' column (columns are {list(table.columns)})")
    missing = [c for c in required_columns if c not in table.columns]
    if missing:
        raise LayoutError(f"{source}: missing column(s) {missing} (columns are {list(table.columns)})")
    bad, names = [], []
    for raw in table["well"]:
        try:
            names.append(normalise_well(raw))
        except ValueError:
            bad.append(raw)
    if bad:
        raise LayoutError(f"{source}: unreadable well name(s) {bad}; expected names like 'B03'")
    table = table.copy()
    table["well"] = names
    duplicated = sorted(set(table.loc[table["well"].duplicated(), "well"]), key=well_sort_key)
    if duplicated:
        raise LayoutError(f"{source}: well(s) listed more than once: {duplicated}")
    if plate_wells is not None:
        unknown = sorted(set(table["well"]) - set(plate_wells), key=well_sort_key)
        if unknown:
            raise LayoutError(f"{source}: well(s) {unknown} are not on the plate")
    order = sorted(range(len(table)), key=lambda i: well_sort_key(table["well"].iloc[i]))
    return table.iloc[order].reset_index(drop=True)


def wells_with(layout: pd.DataFrame, column: str, values: Iterable[str]) -> list[str]:
    """Wells whose ``column`` holds one of ``values`` (e.g. the negative controls)."""
    if column not in layout.columns:
        raise LayoutError(f"layout has no column {column!r} (columns are {list(layout.columns)})")
    wanted = {str(v) for v in values}
    return [w for w, v in zip(layout["well"], layout[column]) if str(v) in wanted]


def layout_to_records(layout: pd.DataFrame) -> list[dict]:
    """JSON-safe records for storing a layout in plate attributes."""
    return [
        {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in layout.to_dict(orient="records")
    ]


def layout_from_records(records: list[dict], source: str) -> pd.DataFrame:
    """Inverse of ``layout_to_records``, validated."""
    return validate_layout(pd.DataFrame.from_records(records), source=source)
