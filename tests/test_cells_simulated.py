"""Acceptance on a simulated screen: measured features track the planted per-cell truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from screenxai.cells import CellConfig, match_objects, process_field, segment_nuclei
from screenxai.plate import open_plate
from screenxai.plate.simulate import SimulatedScreen, simulate_screen

MAX_CENTROID_DISTANCE = 3.0     # pixels between a segmented and a planted nucleus centre to pair them


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> SimulatedScreen:
    """Two rows of negative, four doses and positive controls; one 256 px field per well."""
    out = tmp_path_factory.mktemp("simulated") / "sim.zarr"
    return simulate_screen(out, rows=2, columns=6, fields=1, size=256, seed=0)


def _cells(screen: SimulatedScreen, config: CellConfig) -> pd.DataFrame:
    plate = open_plate(screen.plate_path)
    return pd.concat([process_field(plate, k.well, k.field, config).table for k in plate.field_keys()],
                     ignore_index=True)


def _pair_by_centroid(cells: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Each measured cell with the planted cell nearest its centroid in the same field, if close."""
    pairs = []
    for (well, field), measured in cells.groupby(["well", "field"]):
        planted = truth[(truth["well"] == well) & (truth["field"] == field)].reset_index(drop=True)
        distance, nearest = cKDTree(planted[["centroid_y", "centroid_x"]]).query(
            measured[["centroid_y", "centroid_x"]])
        close = distance <= MAX_CENTROID_DISTANCE
        pairs.append(measured[close].assign(translocation=planted["translocation"].to_numpy()[nearest[close]]))
    return pd.concat(pairs, ignore_index=True)


@pytest.mark.acceptance
def test_ratio_tracks_planted_translocation_with_plate_labels(screen: SimulatedScreen):
    cells = _cells(screen, CellConfig(crop_size=8))
    assert (cells["label_source"] == "plate").all()
    merged = cells.merge(screen.truth, on=["plate", "well", "field", "label"], suffixes=("", "_planted"))
    assert len(merged) == len(screen.truth) == len(cells)
    ratio = spearmanr(merged["reporter_ratio"], merged["translocation"]).statistic
    area = spearmanr(merged["area"], merged["nuclear_area"]).statistic
    texture = spearmanr(merged["reporter_texture"], merged["texture"]).statistic
    print(f"simulated, plate labels, {len(merged)} cells: Spearman ratio~translocation {ratio:.3f}, "
          f"area~nuclear_area {area:.3f}, reporter_texture~texture {texture:.3f}")
    assert ratio >= 0.9
    assert area >= 0.95
    assert texture >= 0.8


@pytest.mark.acceptance
def test_ratio_tracks_planted_translocation_with_segmentation(screen: SimulatedScreen):
    cells = _cells(screen, CellConfig(crop_size=8, use_plate_labels=False))
    assert (cells["label_source"] == "segmented").all()
    paired = _pair_by_centroid(cells, screen.truth)
    found = len(paired) / len(screen.truth)
    ratio = spearmanr(paired["reporter_ratio"], paired["translocation"]).statistic
    print(f"simulated, segmented: {len(cells)} cells for {len(screen.truth)} planted, {found:.3f} paired; "
          f"Spearman ratio~translocation {ratio:.3f}")
    assert found >= 0.9
    assert ratio >= 0.9


def test_segmentation_agrees_with_the_plate_labels(screen: SimulatedScreen):
    plate = open_plate(screen.plate_path)
    scores = [match_objects(segment_nuclei(plate.image(k.well, k.field).values[0, 0]),
                            plate.labels(k.well, k.field).values[0]) for k in plate.field_keys()]
    f1, iou = np.mean([s.f1 for s in scores]), np.mean([s.mean_iou for s in scores])
    print(f"simulated: segmentation vs plate labels F1 {f1:.3f}, mean IoU {iou:.3f}")
    assert f1 >= 0.9 and iou >= 0.8
