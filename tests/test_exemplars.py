"""``choose_exemplars``: each class's most certain cells, found in one pass over the cell table."""

import dask.dataframe as dd
import pandas as pd
import pytest

from screenxai.errors import ScreenxaiError
from screenxai.pipeline.counterfactual_stage import choose_exemplars

LAYOUTS = {"p1": pd.DataFrame({"well": ["A01", "A02", "A03"], "control": ["negative", "positive", "other"]}),
           "p2": pd.DataFrame({"well": ["A01"], "control": ["positive"]})}


def _cells() -> pd.DataFrame:
    rows = [  # plate, well, cell, p_negative, p_positive, in_training
        ("p1", "A01", "n1", 0.90, 0.10, True), ("p1", "A01", "n2", 0.80, 0.20, False),
        ("p1", "A01", "n3", 0.70, 0.30, False), ("p1", "A01", "n4", 0.60, 0.40, False),
        ("p1", "A02", "a1", 0.05, 0.95, True), ("p1", "A02", "a2", 0.20, 0.80, True),
        ("p1", "A02", "a3", 0.40, 0.60, False),
        ("p1", "A03", "o1", 0.01, 0.99, False),  # a well of no class of the bundle
        ("p2", "A01", "b1", 0.30, 0.70, True),  # p2's A01 is positive, p1's A01 negative
    ]
    frame = pd.DataFrame(rows, columns=["plate", "well", "cell_id", "p_negative", "p_positive", "in_training"])
    return frame.assign(field=0, label=range(1, len(frame) + 1))


def test_each_class_keeps_its_most_certain_cells_outside_training_first_across_plates():
    cells = dd.from_pandas(_cells(), npartitions=4)
    chosen = choose_exemplars(cells, LAYOUTS, "control", ["negative", "positive"], per_condition=2)
    # negative: n1 is the most certain but a training cell, and two others are there.
    # positive: a3 is its only cell outside training; a1 then fills the place; o1's well is no class's.
    assert list(chosen["cell_id"]) == ["n2", "n3", "a3", "a1"]
    assert list(chosen["condition"]) == ["negative", "negative", "positive", "positive"]
    assert list(chosen["plate"]) == ["p1"] * 4


def test_a_cell_is_scored_by_its_own_plates_class():
    cells = dd.from_pandas(_cells().query("cell_id != 'a3'"), npartitions=2)
    chosen = choose_exemplars(cells, LAYOUTS, "control", ["negative", "positive"], per_condition=3)
    positive = chosen[chosen["condition"] == "positive"]
    assert list(positive["cell_id"]) == ["a1", "a2", "b1"] and "exemplar_score" not in chosen.columns


def test_no_well_of_the_classes_gives_no_exemplar_and_a_missing_column_is_refused():
    cells = dd.from_pandas(_cells(), npartitions=2)
    assert choose_exemplars(cells, LAYOUTS, "control", ["absent"], per_condition=2).empty
    with pytest.raises(ScreenxaiError, match="no plate has the layout column 'compound'"):
        choose_exemplars(cells, LAYOUTS, "compound", ["negative"], per_condition=2)
