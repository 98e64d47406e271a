"""The central-cell factors the model checks measure on crops and decodes, with the field's feature code."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from screenxai.cells.central import measure_cell_factors
from screenxai.cells.features import measure_features

SIZE = 32


def disk(radius: float, centre: tuple[float, float] = (SIZE / 2, SIZE / 2)) -> np.ndarray:
    y, x = np.indices((SIZE, SIZE))
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def crop(radius: float, nucleus: float, ring: float, spots: float = 0.0, seed: int = 0) -> np.ndarray:
    """A (dna, reporter) crop in [-1, 1]: a DNA disk, the reporter at ``nucleus`` inside it and ``ring`` around."""
    dna = np.where(disk(radius), 0.8, -0.9)
    cell = disk(radius + 6)
    reporter = np.where(disk(radius), nucleus, np.where(cell, ring, -0.9))
    reporter = reporter + spots * np.random.default_rng(seed).standard_normal((SIZE, SIZE)) * cell
    return np.stack([dna, np.clip(reporter, -1, 1)]).astype(np.float32)


def test_nuclear_area_is_the_smoothed_disks_whole_extent():
    radii = (4, 6, 8)
    areas = measure_cell_factors(np.stack([crop(r, 0.0, 0.0) for r in radii]))["nuclear_area"]
    for radius, area in zip(radii, areas, strict=True):  # the 10% contour of the disk smoothed by sigma 1
        assert disk(radius).sum() < area <= disk(radius + 2).sum()


def test_translocation_ranks_as_the_reporter_moves_into_the_nucleus():
    nucleus = np.linspace(-0.6, 0.6, 7)
    factors = measure_cell_factors(np.stack([crop(6, n, -0.3) for n in nucleus]))
    assert spearmanr(factors["translocation"], nucleus).statistic == pytest.approx(1.0)
    assert factors["translocation"].iloc[0] < 1 < factors["translocation"].iloc[-1]  # out of, then into, the nucleus


def test_texture_ranks_with_the_reporters_spots():
    spots = np.linspace(0.0, 0.3, 7)
    factors = measure_cell_factors(np.stack([crop(6, 0.1, 0.1, s, seed=i) for i, s in enumerate(spots)]))
    assert spearmanr(factors["texture"], spots).statistic == pytest.approx(1.0)
    assert factors["texture"].iloc[0] == pytest.approx(0.0, abs=1e-6)  # a uniform reporter has none


def test_a_crop_without_a_nucleus_gives_zeros_not_nan():
    blank = np.full((1, 2, SIZE, SIZE), -0.9, np.float32)
    factors = measure_cell_factors(blank)
    assert factors.iloc[0].tolist() == [0.0, 0.0, 0.0]


def test_the_last_nucleus_without_a_ring_has_a_nan_ring_mean_and_the_others_keep_theirs():
    labels = np.zeros((SIZE, SIZE), np.int32)
    labels[disk(10)] = 1
    labels[disk(1.5)] = 2  # enclosed by nucleus 1: expand_labels never grows it a ring
    image = np.stack([labels * 100.0 + 10.0]).astype(np.float32)
    table = measure_features(image, labels, ["dna"]).set_index("label")
    assert np.isnan(table.loc[2, "dna_ring_mean"]) and table.loc[1, "dna_ring_mean"] == pytest.approx(10.0)


def test_translocation_and_texture_are_the_field_feature_codes_ratio_and_texture():
    """The central cell's reporter figures equal ``measure_features`` on the same masks, shape features aside."""
    from scipy.ndimage import gaussian_filter

    from screenxai.cells.central import AREA_LEVEL, DNA_SIGMA, NUCLEUS_LEVEL, RING_WIDTH, central_object
    from screenxai.cells.features import perinuclear_rings

    crops = np.stack([crop(r, n, -0.2, s, seed=i) for i, (r, n, s) in
                      enumerate([(4, 0.5, 0.0), (6, -0.4, 0.2), (8, 0.1, 0.3)])])
    factors = measure_cell_factors(crops)
    for scaled, (_, row) in zip(np.clip((crops + 1) / 2, 0, None), factors.iterrows(), strict=True):
        dna = gaussian_filter(scaled[0], DNA_SIGMA)
        nucleus = central_object(dna, NUCLEUS_LEVEL).astype(np.int32)
        cell = nucleus + perinuclear_rings(nucleus, RING_WIDTH)
        channels = ["dna", "reporter"]
        assert row["translocation"] == pytest.approx(
            measure_features(scaled, nucleus, channels, ring_width=RING_WIDTH)["reporter_ratio"].iloc[0], rel=1e-6)
        assert row["texture"] == pytest.approx(
            measure_features(scaled, cell, channels, ring_width=RING_WIDTH)["reporter_texture"].iloc[0], rel=1e-6)
        assert row["nuclear_area"] == central_object(dna, AREA_LEVEL).sum()
