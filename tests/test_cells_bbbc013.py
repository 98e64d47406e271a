"""Acceptance on real data: BBBC013's FKHR-EGFP nuclear translocation rises with wortmannin dose.

BBBC013, Ljosa et al., Nature Methods 2012, images by Ilya Ravkin (CC BY 3.0).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import spearmanr

from screenxai.cells import CellConfig, process_field
from screenxai.plate import open_plate


@pytest.fixture(scope="module")
def well_ratios(bbbc013_plate: Path) -> pd.DataFrame:
    """Per-well median nucleus/ring GFP ratio of non-border cells, with the layout; DNA segmented."""
    plate = open_plate(bbbc013_plate)
    config = CellConfig(crop_size=8, nuclear_channel="DNA")
    tables = [process_field(plate, key.well, key.field, config).table for key in plate.field_keys()]
    cells = pd.concat(tables, ignore_index=True)
    cells = cells[~cells["border"]]
    ratios = cells.groupby("well")["GFP_ratio"].median().rename("ratio").reset_index()
    return ratios.merge(plate.layout, on="well")


@pytest.mark.acceptance
def test_ratio_rises_with_dose(well_ratios: pd.DataFrame):
    dose = well_ratios[well_ratios["control"] == "dose"]
    assert len(dose) == 36
    rho = spearmanr(dose["dose_index"], dose["ratio"]).statistic
    by_dose = well_ratios.groupby("dose_index")["ratio"].median().round(2).to_dict()
    print(f"BBBC013 Spearman(dose_index, well ratio) = {rho:.3f}; median ratio by dose_index {by_dose}")
    assert rho >= 0.9


@pytest.mark.acceptance
def test_controls_sit_at_the_ends(well_ratios: pd.DataFrame):
    negative = well_ratios.loc[well_ratios["control"] == "negative", "ratio"]
    positive = well_ratios.loc[well_ratios["control"] == "positive", "ratio"]
    print(f"BBBC013 negative wells {negative.round(2).tolist()}, positive wells {positive.round(2).tolist()}")
    assert negative.max() < 1.2
    assert positive.min() > 3
