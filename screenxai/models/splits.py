"""Class labels of cells and the train/validation split by well.

Cells of one well share their culture, treatment and imaging, so they are
not independent: a split by cell would let a model score well on validation
by recognising wells. Here whole wells go to one side or the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from screenxai.errors import ScreenxaiError

DEFAULT_CLASS_COLUMN = "control"
DEFAULT_CLASSES = ("negative", "positive")
WELL_KEYS = ("plate", "well")


class SplitError(ScreenxaiError):
    """Cells cannot be labelled or split by well as asked."""


@dataclass(frozen=True)
class WellSplit:
    """Row positions (into the table given) and ``(plate, well)`` keys of each side."""

    train_index: np.ndarray
    val_index: np.ndarray
    train_wells: tuple[tuple[str, str], ...]
    val_wells: tuple[tuple[str, str], ...]


def class_labels(table: pd.DataFrame, class_column: str = DEFAULT_CLASS_COLUMN,
                 class_names: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer class of every row (-1 where the row's class is not one of ``class_names``).

    ``class_names`` defaults to the column's sorted distinct values.
    """
    if class_column not in table.columns:
        raise SplitError(f"cell table has no class column {class_column!r} (columns are {list(table.columns)})")
    values = table[class_column].astype("string")
    names = tuple(class_names) if class_names is not None else tuple(sorted(values.dropna().unique()))
    if len(names) < 2:
        raise SplitError(f"class column {class_column!r} needs at least 2 classes, found {list(names)}")
    lookup = {name: i for i, name in enumerate(names)}
    labels = np.array([lookup.get(v, -1) if v is not pd.NA else -1 for v in values], dtype=np.int64)
    missing = [name for name in names if not (labels == lookup[name]).any()]
    if missing:
        raise SplitError(f"class column {class_column!r} has no cell of class {missing}")
    return labels, names


def _well_keys(table: pd.DataFrame) -> list[tuple[str, str]]:
    for column in WELL_KEYS:
        if column not in table.columns:
            raise SplitError(f"cell table has no {column!r} column, needed to split by well")
    return list(zip(table["plate"].astype(str), table["well"].astype(str), strict=True))


def split_by_well(table: pd.DataFrame, class_column: str = DEFAULT_CLASS_COLUMN, val_fraction: float = 0.25,
                  seed: int = 0, class_names: Sequence[str] | None = None) -> WellSplit:
    """Split the cells of ``class_names`` into train and validation by ``(plate, well)``.

    Each class keeps at least one well on each side; about ``val_fraction``
    of each class's wells go to validation. Rows of other classes are left
    out of both sides. Raises ``SplitError`` when a class has fewer than 2
    wells or a well holds cells of two classes.
    """
    if not 0 < val_fraction < 1:
        raise SplitError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    labels, names = class_labels(table, class_column, class_names)
    keys = np.array([f"{p}\x00{w}" for p, w in _well_keys(table)])
    rng = np.random.default_rng(seed)
    val_keys: set[str] = set()
    for label, name in enumerate(names):
        wells = np.unique(keys[labels == label])
        other = np.unique(keys[(labels != label) & (labels >= 0)])
        mixed = np.intersect1d(wells, other)
        if mixed.size:
            raise SplitError(f"well {mixed[0].replace(chr(0), '/')} holds cells of class {name!r} and of another "
                             f"class in column {class_column!r}; a well must hold one class")
        if wells.size < 2:
            raise SplitError(f"class {name!r} of column {class_column!r} has {wells.size} well(s) "
                             f"({[w.replace(chr(0), '/') for w in wells]}); a split by well needs at least 2")
        n_val = int(np.clip(round(val_fraction * wells.size), 1, wells.size - 1))
        val_keys.update(rng.permutation(wells)[:n_val].tolist())
    used = labels >= 0
    in_val = np.isin(keys, list(val_keys))
    train_index = np.flatnonzero(used & ~in_val)
    val_index = np.flatnonzero(used & in_val)

    def as_pairs(index: np.ndarray) -> tuple[tuple[str, str], ...]:
        return tuple(tuple(k.split("\x00")) for k in np.unique(keys[index]))

    return WellSplit(train_index, val_index, as_pairs(train_index), as_pairs(val_index))
