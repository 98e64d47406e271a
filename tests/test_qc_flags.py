"""QC flags per field and per well, on hand-made tables: exactly the flagged rows are flagged, none dropped."""

from __future__ import annotations

import pandas as pd

from screenxai.pipeline.cell_stage import FieldTask, done_status, failed_status
from screenxai.pipeline.summary import field_qc_flags, well_table

FLAGS = ["qc_no_cells", "qc_saturated", "qc_missing_chunks", "qc_low_count", "qc_out_of_focus"]
WELL_FLAGS = ["qc_low_count", "qc_out_of_focus", "qc_saturated", "qc_failed_fields", "qc_missing_chunks"]


def _done(well: str, field: int, n_cells: int, saturated: float = 0.0, focus: float = 1.0, missing: int = 0) -> dict:
    qc = {"plate": "P", "well": well, "field": field, "label_source": "plate", "n_cells": n_cells,
          "saturated_fraction": saturated, "focus": focus, "missing_chunks": missing}
    return done_status(FieldTask("url", "P", well, field, "out").identity, qc)


def _failed(well: str, field: int) -> dict:
    try:
        raise OSError("unreadable chunk")
    except OSError as err:
        return failed_status(FieldTask("url", "P", well, field, "out").identity, err)


def _flags(table: pd.DataFrame, flags: list[str], key: str) -> dict[str, list[str]]:
    """The flags set on each row, keyed by ``key``."""
    return {row[key]: [f for f in flags if row[f]] for _, row in table.iterrows()}


def test_each_field_gets_exactly_its_own_flags_and_failed_fields_none():
    rows = [_done("A01", 0, 100), _done("A02", 0, 100, saturated=0.05), _done("A03", 0, 100, focus=0.1),
            _done("A04", 0, 20), _done("A05", 0, 0), _done("A06", 0, 100, saturated=0.01),
            _done("A07", 0, 100, missing=2), _failed("B01", 0), _failed("B02", 0), _failed("B03", 0), _failed("B04", 0)]
    fields = field_qc_flags(pd.DataFrame(rows))
    assert len(fields) == len(rows)
    assert all(fields[f].dtype == bool for f in FLAGS)
    # medians over the done fields only: 100 cells, focus 1 (with the failed fields' 0 cells it would be 60)
    assert _flags(fields, FLAGS, "well") == {
        "A01": [], "A02": ["qc_saturated"], "A03": ["qc_out_of_focus"], "A04": ["qc_low_count"],
        "A05": ["qc_no_cells", "qc_low_count"], "A06": [], "A07": ["qc_missing_chunks"],
        "B01": [], "B02": [], "B03": [], "B04": []}
    assert list(fields["status"].iloc[-4:]) == ["failed"] * 4
    assert fields["error"].iloc[-1] == "OSError: unreadable chunk"


def test_failed_rows_keep_the_done_rows_dtypes():
    fields = pd.DataFrame([_done("A01", 0, 10), _failed("A02", 0)]).drop(columns="traceback")
    assert fields["n_cells"].dtype == "int64" and fields["qc_saturated"].dtype == bool
    assert fields["missing_chunks"].dtype == "int64" and fields["qc_missing_chunks"].dtype == bool
    assert fields.loc[1, "n_cells"] == 0 and fields.loc[1, "label_source"] == ""
    assert fields.loc[1, "missing_chunks"] == 0 and not fields.loc[1, "qc_missing_chunks"]


def test_low_count_and_focus_are_judged_within_each_plate():
    rows = [_done("A01", 0, 100), _done("A02", 0, 100), _done("A03", 0, 100),
            {**_done("A01", 0, 10, focus=0.1), "plate": "Q"}, {**_done("A02", 0, 10, focus=0.1), "plate": "Q"}]
    fields = field_qc_flags(pd.DataFrame(rows))  # against both plates' median, plate Q's fields would be flagged
    assert not fields[["qc_low_count", "qc_out_of_focus"]].any().any()


def test_each_well_gets_exactly_its_flags():
    fields = pd.DataFrame([_done("A01", 0, 100), _done("A01", 1, 100),
                           _done("A02", 0, 100), _done("A02", 1, 100, saturated=0.05),
                           _done("A03", 0, 100, focus=0.1), _done("A03", 1, 100, focus=0.1),
                           _done("A04", 0, 20), _done("A04", 1, 20),
                           _done("A05", 0, 100), _failed("A05", 1),
                           _done("A06", 0, 100), _done("A06", 1, 100),
                           _done("A07", 0, 100), _done("A07", 1, 100, missing=1)])
    aggregates = pd.DataFrame({"plate": "P", "well": ["A01", "A02", "A03", "A04", "A05", "A06", "A07"],
                               "n_cells": [200, 200, 200, 40, 100, 200, 200]})
    wells = well_table(aggregates, fields, {"P": None})
    assert all(wells[f].dtype == bool for f in WELL_FLAGS)
    # plate medians: 200 cells, focus 1: A04's 40 cells are under a quarter, A05's 100 are not
    assert _flags(wells, WELL_FLAGS, "well") == {
        "A01": [], "A02": ["qc_saturated"], "A03": ["qc_out_of_focus"], "A04": ["qc_low_count"],
        "A05": ["qc_failed_fields"], "A06": [], "A07": ["qc_missing_chunks"]}
    assert wells.set_index("well").loc["A05", "n_failed_fields"] == 1


def test_a_well_whose_every_field_failed_is_kept_with_no_cells():
    fields = pd.DataFrame([_done("A01", 0, 100), _done("A02", 0, 100), _failed("A03", 0)])
    aggregates = pd.DataFrame({"plate": "P", "well": ["A01", "A02"], "n_cells": [100, 100]})
    wells = well_table(aggregates, fields, {"P": None}).set_index("well")
    assert wells.loc["A03", "n_cells"] == 0
    assert wells.loc["A03", WELL_FLAGS].tolist() == [True, False, False, True, False]
