"""The conditions of a screen read from its layout: which column holds the classes, which wells train.

Two kinds of layout are understood:

- **two-class**: a ``control`` column with ``negative`` and ``positive``
  wells (and ``dose`` wells between them); the classifier tells negative
  from positive controls, and the one treatment is the positive class;
- **multi-treatment**: a ``compound`` column naming each well's treatment,
  a ``control`` column marking the ``negative`` wells, and a dose column;
  the classifier tells the negative control's compound from every other
  compound, trained on each treatment's highest dose levels.

The class column is ``compound`` when the non-negative wells hold more than
one compound, else ``control``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from screenxai.errors import ScreenxaiError
from screenxai.plate.layout import CONTROL_COLUMN, NEGATIVE, POSITIVE

TREATMENT_COLUMN = "compound"
DOSE_COLUMNS = ("dose", "dose_index")


class ConditionError(ScreenxaiError):
    """A layout does not hold the conditions asked for."""


@dataclass(frozen=True)
class Conditions:
    """The classes of a screen: the column, the negative class (first) and the treatments."""

    class_column: str
    negative: str
    treatments: tuple[str, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classifier's classes: the negative control first, then every treatment."""
        return (self.negative, *self.treatments)

    @property
    def two_class(self) -> bool:
        """Whether this is the negative-versus-positive-control design."""
        return self.class_column == CONTROL_COLUMN


def default_class_column(layout: pd.DataFrame) -> str:
    """``compound`` when the non-negative wells hold more than one compound, else ``control``."""
    if TREATMENT_COLUMN in layout.columns and CONTROL_COLUMN in layout.columns:
        treated = layout.loc[layout[CONTROL_COLUMN] != NEGATIVE, TREATMENT_COLUMN].dropna().unique()
        if len(treated) > 1:
            return TREATMENT_COLUMN
    return CONTROL_COLUMN


def screen_conditions(layout: pd.DataFrame, class_column: str | None = None,
                      class_names: Sequence[str] | None = None, source: str = "layout") -> Conditions:
    """The classes of ``layout`` in ``class_column`` (default: ``default_class_column``).

    ``class_names`` (negative first) overrides the classes found. For the
    ``control`` column the classes are ``negative`` and ``positive``; for any
    other column the negative class is the value of that column in the
    ``negative`` control wells, the treatments every other value, sorted.
    """
    column = class_column or default_class_column(layout)
    if column not in layout.columns:
        raise ConditionError(f"{source} has no column {column!r} (columns: {list(layout.columns)}); "
                             "choose one with --class-column")
    if class_names:
        names = tuple(class_names)
        absent = sorted(set(names) - set(layout[column].dropna().astype(str)))
        if absent:
            raise ConditionError(f"{source}: no well has {column} = {absent}; the column holds "
                                 f"{sorted(layout[column].dropna().astype(str).unique())} (--classes)")
        if len(names) < 2:
            raise ConditionError(f"--classes needs at least 2 classes, got {list(names)}")
        return Conditions(column, names[0], names[1:])
    if column == CONTROL_COLUMN:
        return Conditions(column, NEGATIVE, (POSITIVE,))
    if CONTROL_COLUMN not in layout.columns:
        raise ConditionError(f"{source} has no {CONTROL_COLUMN!r} column marking the negative wells")
    negatives = layout.loc[layout[CONTROL_COLUMN] == NEGATIVE, column].dropna().astype(str).unique()
    if len(negatives) != 1:
        raise ConditionError(f"{source}: the negative wells must share one {column} value, found "
                             f"{sorted(negatives)}")
    values = layout[column].dropna().astype(str)
    treatments = tuple(sorted(set(values) - {negatives[0]}))
    if not treatments:
        raise ConditionError(f"{source}: column {column!r} names no treatment besides {negatives[0]!r}")
    return Conditions(column, str(negatives[0]), treatments)


def dose_column(layout: pd.DataFrame) -> str | None:
    """The layout's dose axis: ``dose``, else ``dose_index``, else None."""
    return next((c for c in DOSE_COLUMNS if c in layout.columns), None)


def treatment_wells(layout: pd.DataFrame, conditions: Conditions, treatment: str) -> list[str]:
    """Every well of ``treatment``, all doses: in the two-class design every non-negative well."""
    if conditions.two_class:
        return layout.loc[layout[CONTROL_COLUMN] != NEGATIVE, "well"].astype(str).tolist()
    return layout.loc[layout[conditions.class_column].astype(str) == treatment, "well"].astype(str).tolist()


def negative_wells(layout: pd.DataFrame, conditions: Conditions) -> list[str]:
    """The wells of the negative class."""
    return layout.loc[layout[conditions.class_column].astype(str) == conditions.negative, "well"].astype(str).tolist()


def training_wells(layout: pd.DataFrame, conditions: Conditions, top_dose_levels: int = 2) -> list[str]:
    """Wells the classifier trains on: the negative wells and each treatment's ``top_dose_levels`` highest doses.

    In the two-class design these are the wells of the two control classes.
    A treatment without a dose column trains on all its wells.
    """
    if top_dose_levels < 1:
        raise ConditionError(f"top dose levels must be at least 1, got {top_dose_levels}")
    column = conditions.class_column
    if conditions.two_class:
        return layout.loc[layout[column].isin(conditions.class_names), "well"].astype(str).tolist()
    chosen = negative_wells(layout, conditions)
    dose = dose_column(layout)
    for treatment in conditions.treatments:
        rows = layout[layout[column].astype(str) == treatment]
        if dose is not None:
            levels = sorted(rows[dose].dropna().unique())[-top_dose_levels:]
            rows = rows[rows[dose].isin(levels)]
        chosen.extend(rows["well"].astype(str))
    return chosen

