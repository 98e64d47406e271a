"""Normalisation statistics fitted on negative-control wells, and their use on crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from screenxai.cells import NormalisationStats, crop_cells, fit_normalisation, normalise, segment_nuclei
from screenxai.errors import LayoutError
from screenxai.plate import FieldImage, open_plate, write_plate

CHANNELS = ["DNA", "reporter"]
WELLS = {"A01": ("negative", 1000), "A02": ("negative", 1000), "B01": ("positive", 5000), "B02": ("dose", 3000)}


def _field(well: str, field: int, brightness: int) -> FieldImage:
    """Gamma-distributed pixels whose scale is the well's brightness."""
    rng = np.random.default_rng(hash((well, field)) % 2**32)
    image = rng.gamma(2.0, brightness / 2, (2, 48, 48)).astype(np.uint16)
    return FieldImage(well, field, image)


@pytest.fixture(scope="module")
def plate_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two negative, one positive and one dose well, two fields each, with a layout."""
    fields = [_field(w, f, b) for w, (_, b) in WELLS.items() for f in range(2)]
    layout = pd.DataFrame({"well": list(WELLS), "control": [c for c, _ in WELLS.values()]})
    path = tmp_path_factory.mktemp("norm") / "plate.zarr"
    return write_plate(path, fields, name="N1", channel_names=CHANNELS, layout=layout)


def test_stats_are_percentiles_of_the_negative_wells(plate_path: Path):
    plate = open_plate(plate_path)
    stats = fit_normalisation(plate)
    pixels = np.concatenate([plate.image(w, f).values[:, 0].reshape(2, -1)
                             for w in ("A01", "A02") for f in range(2)], axis=1)
    low, high = np.percentile(pixels, [0.5, 99.5], axis=1)
    assert stats.channel_names == tuple(CHANNELS)
    assert stats.low == pytest.approx(low) and stats.high == pytest.approx(high)


def test_max_fields_spreads_over_the_wells(plate_path: Path):
    plate = open_plate(plate_path)
    stats = fit_normalisation(plate, max_fields=2)
    pixels = np.concatenate([plate.image(w, 0).values[:, 0].reshape(2, -1) for w in ("A01", "A02")], axis=1)
    assert stats.high == pytest.approx(np.percentile(pixels, 99.5, axis=1))


def test_negative_control_pixels_land_in_range_and_brighter_wells_above(plate_path: Path):
    plate = open_plate(plate_path)
    stats = fit_normalisation(plate)
    negative = normalise(plate.image("A01", 1).values[:, 0][None], stats)
    positive = normalise(plate.image("B01", 0).values[:, 0][None], stats)
    assert negative.dtype == np.float32
    assert negative.min() >= -1 and negative.max() <= 1
    assert np.mean(np.abs(negative) == 1) < 0.03        # 1% expected outside [low, high]
    assert np.median(negative) < 0 < np.median(positive)


def test_normalise_maps_low_and_high_to_minus_one_and_one():
    stats = NormalisationStats(("a", "b"), (0.0, 10.0), (100.0, 20.0))
    crops = np.array([[0, 10], [50, 15], [100, 20], [200, 0]], np.float32).T[None, :, :, None]
    out = normalise(crops, stats)
    np.testing.assert_allclose(out[0, :, :, 0], [[-1, 0, 1, 1], [-1, 0, 1, -1]])
    with pytest.raises(ValueError, match="expected crops"):
        normalise(crops[:, :1], stats)


def test_stats_round_trip_through_json():
    stats = NormalisationStats(("DNA", "GFP"), (1.5, 2.0), (200.0, 1e4))
    again = NormalisationStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats


def test_a_plate_without_layout_or_negative_wells_is_an_error(tmp_path: Path):
    fields = [_field("A01", 0, 1000), _field("A02", 0, 1000)]
    bare = write_plate(tmp_path / "bare.zarr", fields, name="bare", channel_names=CHANNELS)
    with pytest.raises(LayoutError, match="no layout"):
        fit_normalisation(open_plate(bare))
    assert fit_normalisation(open_plate(bare), wells=["A02"]).channel_names == tuple(CHANNELS)
    layout = pd.DataFrame({"well": ["A01", "A02"], "control": ["positive", "dose"]})
    with pytest.raises(LayoutError, match="no well has control == 'negative'"):
        fit_normalisation(open_plate(bare, layout=layout))


@pytest.mark.acceptance
def test_bbbc013_negative_control_crops_land_in_range(bbbc013_plate: Path):
    plate = open_plate(bbbc013_plate)
    stats = fit_normalisation(plate)
    image = plate.image("B01", 0).values[:, 0]
    crops, table = crop_cells(image, segment_nuclei(image[plate.channel_names.index("DNA")]), 32)
    crops = crops[~table["border"].to_numpy()]          # zero padding is not the plate's data
    low, high = (np.asarray(v)[None, :, None, None] for v in (stats.low, stats.high))
    below, above = np.mean(crops < low), np.mean(crops > high)
    print(f"BBBC013 {stats}; B01 crop values below low {below:.4f}, above high {above:.4f}")
    assert below < 0.02 and above < 0.02
    assert np.median(normalise(crops, stats)) < 0
