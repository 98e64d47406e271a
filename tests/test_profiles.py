"""Per-well profiles: a real run's well table renamed so that pycytominer's steps run on it unchanged."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import documented_columns
from screenxai.cells import CellConfig
from screenxai.pipeline.cluster import connect
from screenxai.pipeline.run import open_plates, run_cells
from screenxai.plate.simulate import simulate_screen, simulated_layout
from screenxai.profiles import ProfileError, feature_names, well_profiles

pycytominer = pytest.importorskip("pycytominer")
KEYS = ["Metadata_Plate", "Metadata_Well"]


@pytest.fixture(scope="module")
def run_wells(tmp_path_factory) -> pd.DataFrame:
    """wells.parquet of a cells-only run on a simulated 2 x 4 plate (negative controls in column 1)."""
    root = tmp_path_factory.mktemp("profiles")
    simulate_screen(root / "sim.zarr", rows=2, columns=4, fields=1, size=256)
    with connect(n_workers=1) as client:
        run_cells(open_plates([root / "sim.zarr"]), root / "out", client, CellConfig())
    return pd.read_parquet(root / "out" / "wells.parquet")


def hand_made_wells() -> pd.DataFrame:
    """A two-well table with every kind of column a run with a full bundle writes."""
    return pd.DataFrame({
        "plate": ["p1", "p1"], "well": ["B02", "A01"], "n_fields": [1, 1], "n_cells": [10, 12],
        "focus": [3.0, 4.0], "qc_low_count": [False, True], "median_area": [100.0, 120.0],
        "mean_p_negative": [0.9, 0.2], "mean_p_positive": [0.1, 0.8],
        "mean_attribute_d1p": [-1.0, 2.0], "mean_attribute_d3n": [0.5, 0.7],
        "sd_attribute_d1p": [0.3, 0.4], "robust_z_attribute_d1p": [0.0, 5.0],
        "mean_formula_value": [-0.2, 0.4], "fraction_formula_positive": [0.1, 0.9],
        "n_training_cells": [3, 0], "compound": ["DMSO", "drug"], "dose_index": [0, 3], "control": ["negative", "dose"],
    })


def undocumented(profiles: pd.DataFrame, layout: list[str]) -> list[str]:
    """Profile columns that match no row of docs/outputs.md's profiles.parquet table, or not its dtype."""
    rows = documented_columns("outputs.md", "profiles.parquet")
    wrong = []
    for column in profiles.columns:
        if column.removeprefix("Metadata_") in layout:
            documented = rows.get("Metadata_{column}") == "layout"
        else:
            documented = any(re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(name)), column)
                             and dtype == str(profiles[column].dtype)
                             for name, dtype in rows.items() if name != "Metadata_{column}")
        if not documented:
            wrong.append(column)
    return wrong


@pytest.fixture(scope="module")
def profiles(run_wells) -> pd.DataFrame:
    return well_profiles(run_wells)


def test_profiles_have_one_row_per_well_with_metadata_and_cells_features(run_wells, profiles):
    assert len(profiles) == len(run_wells) == 8
    assert list(zip(profiles["Metadata_Plate"], profiles["Metadata_Well"])) == \
        sorted(zip(run_wells["plate"], run_wells["well"]))
    for column in ("compound", "dose_index", "control", "n_cells", "qc_low_count", "qc_out_of_focus"):
        assert f"Metadata_{column}" in profiles
    wells = run_wells.set_index("well")
    by_well = profiles.set_index("Metadata_Well")
    assert (by_well["Metadata_n_cells"] == wells.loc[by_well.index, "n_cells"]).all()
    assert (by_well["Cells_Morphology_reporter_ratio"] == wells.loc[by_well.index, "median_reporter_ratio"]).all()
    medians = [c for c in run_wells.columns if c.startswith("median_")]
    assert feature_names(profiles) == [f"Cells_Morphology_{c.removeprefix('median_')}" for c in medians]
    assert pycytominer.cyto_utils.infer_cp_features(profiles) == feature_names(profiles)
    metadata = pycytominer.cyto_utils.infer_cp_features(profiles, metadata=True)
    assert set(metadata) | set(feature_names(profiles)) == set(profiles.columns)


def test_pycytominer_normalize_feature_select_aggregate_run_on_profiles(profiles):
    normalized = pycytominer.normalize(profiles, samples="Metadata_control == 'negative'", features="infer")
    assert list(normalized[KEYS].itertuples(index=False)) == list(profiles[KEYS].itertuples(index=False))
    negative = normalized[normalized["Metadata_control"] == "negative"]
    positive = normalized[normalized["Metadata_control"] == "positive"]
    assert len(negative) == 2
    varying = [f for f in feature_names(profiles) if profiles.loc[negative.index, f].std() > 0]
    assert "Cells_Morphology_reporter_ratio" in varying
    assert negative[varying].median().abs().max() < 1e-9
    assert positive["Cells_Morphology_reporter_ratio"].min() > 2  # the treatment's readout, in control SDs

    selected = pycytominer.feature_select(normalized, features="infer",
                                          operation=["variance_threshold", "drop_na_columns"])
    assert len(selected) == len(profiles)
    assert set(feature_names(selected)) <= set(feature_names(profiles)) and feature_names(selected)
    assert "Cells_Morphology_reporter_ratio" in selected

    aggregated = pycytominer.aggregate(selected, strata=KEYS, features="infer")
    assert sorted(aggregated[KEYS].itertuples(index=False)) == sorted(profiles[KEYS].itertuples(index=False))
    merged = aggregated.merge(selected, on=KEYS, suffixes=("", "_one"))
    assert (merged["Cells_Morphology_reporter_ratio"] == merged["Cells_Morphology_reporter_ratio_one"]).all()


def test_model_columns_map_to_classifier_attribute_and_formula_features():
    profiles = well_profiles(hand_made_wells())
    assert list(profiles.columns) == [
        "Metadata_Plate", "Metadata_Well", "Metadata_n_fields", "Metadata_n_cells", "Metadata_focus",
        "Metadata_qc_low_count", "Metadata_n_training_cells", "Metadata_compound", "Metadata_dose_index",
        "Metadata_control", "Cells_Morphology_area", "Cells_Classifier_p_negative", "Cells_Classifier_p_positive",
        "Cells_Attribute_d1p", "Cells_Attribute_d3n", "Cells_Attribute_d1p_sd", "Cells_Formula_value",
        "Cells_Formula_fraction_positive"]
    assert profiles["Metadata_Well"].tolist() == ["A01", "B02"]  # sorted by plate and well
    a01 = profiles.iloc[0]
    measured = (a01["Cells_Classifier_p_positive"], a01["Cells_Attribute_d1p"], a01["Cells_Attribute_d3n"])
    assert measured == (0.8, 2.0, 0.7)
    assert a01["Metadata_dose_index"] == 3 and a01["Metadata_qc_low_count"]
    assert all(profiles[c].dtype == "float64" for c in feature_names(profiles))
    assert profiles["Metadata_Plate"].dtype == "string"


def test_every_profile_column_is_documented_with_its_dtype(profiles):
    layout = [c for c in simulated_layout(2, 4).columns if c != "well"]
    assert undocumented(profiles, layout) == []
    assert undocumented(well_profiles(hand_made_wells()), ["compound", "dose_index", "control"]) == []
    renamed = profiles.rename(columns={"Cells_Morphology_area": "Cells_Area"})
    assert undocumented(renamed.astype({"Metadata_n_cells": "float64"}), layout) == ["Metadata_n_cells", "Cells_Area"]


def test_bad_well_tables_are_refused_by_name():
    with pytest.raises(ProfileError, match="'well'"):
        well_profiles(pd.DataFrame({"plate": ["p"], "median_area": [1.0]}))
    with pytest.raises(ProfileError, match="plate 'p', well 'A01'"):
        well_profiles(pd.DataFrame({"plate": ["p", "p"], "well": ["A01", "A01"], "median_area": [1.0, 2.0]}))
    with pytest.raises(ProfileError, match="Metadata_Plate"):
        well_profiles(pd.DataFrame({"plate": ["p"], "well": ["A01"], "Plate": ["x"], "median_area": [1.0]}))
