"""Per-nucleus features on synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk, ellipse

from screenxai.cells import measure_features, perinuclear_rings
from screenxai.cells.features import CHANNEL_SUFFIXES, SHAPE_COLUMNS

SIZE = 120
RADIUS = 10


@pytest.fixture(scope="module")
def cell() -> tuple[np.ndarray, np.ndarray]:
    """One disk nucleus (label 4) at intensity 100 inside a cytoplasm at 20, on a 0 background."""
    labels = np.zeros((SIZE, SIZE), np.int32)
    labels[disk((60, 60), RADIUS)] = 4
    reporter = np.zeros((SIZE, SIZE), np.float32)
    reporter[disk((60, 60), RADIUS + 15)] = 20
    reporter[labels == 4] = 100
    return reporter[None], labels


def test_disk_area_shape_and_ratio(cell):
    image, labels = cell
    table = measure_features(image, labels, ["FKHR-EGFP"], ring_width=5)
    assert list(table.columns) == ["label", *SHAPE_COLUMNS, *[f"FKHR_EGFP_{s}" for s in CHANNEL_SUFFIXES]]
    row = table.iloc[0]
    assert row.label == 4
    assert row.area == np.sum(labels == 4)
    assert row.eccentricity < 0.05 and row.solidity > 0.95
    assert row.major_axis_length == pytest.approx(2 * RADIUS, rel=0.05)
    assert row.form_factor == pytest.approx(1, abs=0.1)
    assert (row.FKHR_EGFP_nucleus_mean, row.FKHR_EGFP_ring_mean) == pytest.approx((100, 20))
    assert row.FKHR_EGFP_ratio == pytest.approx(5)


def test_ratio_subtracts_the_background(cell):
    image, labels = cell
    table = measure_features(image + 30, labels, ["reporter"])
    assert table.loc[0, "reporter_ring_mean"] == pytest.approx(50)
    assert table.loc[0, "reporter_ratio"] == pytest.approx(5)


def test_ring_is_the_grown_nucleus_minus_nuclei_and_avoids_neighbours():
    labels = np.zeros((60, 60), np.int32)
    labels[disk((30, 20), 8)] = 1
    labels[disk((30, 37), 8)] = 2        # a neighbour 1 px away
    rings = perinuclear_rings(labels, 4)
    assert not np.any((rings > 0) & (labels > 0))
    assert set(np.unique(rings)) == {0, 1, 2}
    image = np.where(labels == 2, 1000.0, 10.0)[None]
    image[0, labels == 1] = 50
    table = measure_features(image, labels, ["reporter"], ring_width=4, background_percentile=0)
    assert table.loc[0, "reporter_ring_mean"] == pytest.approx(10)


def test_elongated_nucleus_is_eccentric_with_lower_form_factor():
    labels = np.zeros((60, 60), np.int32)
    labels[ellipse(30, 30, 6, 20)] = 1
    row = measure_features(np.ones((1, 60, 60)), labels, ["DNA"]).iloc[0]
    assert row.eccentricity > 0.9
    assert row.major_axis_length == pytest.approx(40, rel=0.05)
    assert row.minor_axis_length == pytest.approx(12, rel=0.1)
    assert row.form_factor < 0.8


def test_texture_measures_relative_speckle_and_ignores_the_edge(cell):
    _, labels = cell
    speckle = np.random.default_rng(0).normal(0, 1, labels.shape)
    flat = np.where(labels > 0, 100.0, 0.0)
    speckled = flat * (1 + 0.2 * speckle * (labels > 0))
    image = np.stack([flat, speckled, 3 * speckled])
    row = measure_features(image, labels, ["flat", "speckled", "bright"]).iloc[0]
    assert row.flat_texture == pytest.approx(0, abs=1e-6)
    assert 0.1 < row.speckled_texture < 0.2
    assert row.bright_texture == pytest.approx(row.speckled_texture)


def test_rows_follow_labels_and_keep_their_values():
    labels = np.zeros((50, 50), np.int32)
    labels[disk((12, 12), 5)] = 900
    labels[disk((35, 35), 7)] = 3
    image = np.where(labels == 900, 40.0, np.where(labels == 3, 80.0, 0.0))[None]
    table = measure_features(image, labels, ["DNA"])
    assert table["label"].tolist() == [3, 900]
    assert table["DNA_nucleus_mean"].tolist() == pytest.approx([80, 40])
    assert table["area"].tolist() == [np.sum(labels == 3), np.sum(labels == 900)]


def test_no_nuclei_gives_an_empty_table_with_all_columns():
    table = measure_features(np.ones((2, 20, 20)), np.zeros((20, 20), np.int32), ["DNA", "GFP"])
    assert len(table) == 0
    assert "GFP_ratio" in table.columns and "form_factor" in table.columns


def test_channel_names_must_fit_the_image_and_give_distinct_columns(cell):
    image, labels = cell
    with pytest.raises(ValueError, match="channel names"):
        measure_features(image, labels, ["a", "b"])
    with pytest.raises(ValueError, match="clashing"):
        measure_features(np.concatenate([image, image]), labels, ["GFP-1", "GFP 1"])
    assert isinstance(measure_features(image, labels, ["GFP (488)"]), pd.DataFrame)
