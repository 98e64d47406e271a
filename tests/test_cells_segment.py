"""Nucleus segmentation and matched-object scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import filters, measure, morphology
from skimage.draw import disk

from screenxai.cells import SegmentationParams, match_objects, segment_nuclei
from screenxai.cells.segment import foreground_mask, h_maxima_per_clump, marker_relief


def disks(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    """A label image of disks numbered 1.. in the given order (later disks overwrite earlier)."""
    labels = np.zeros(shape, np.int32)
    for i, centre in enumerate(centres, start=1):
        labels[disk(centre, radius, shape=shape)] = i
    return labels


def test_identical_label_images_match_perfectly():
    truth = disks((64, 64), [(15, 15), (40, 45)], 8)
    assert match_objects(truth * 3, truth) == pytest.approx((1.0, 1.0, 1.0, 1.0))


def test_a_small_shift_still_matches_and_lowers_mean_iou():
    truth = disks((64, 64), [(20, 20)], 10)
    pred = np.roll(truth, 3, axis=1)
    inter = np.sum((pred > 0) & (truth > 0))
    expected_iou = inter / (2 * np.sum(truth > 0) - inter)
    f1, precision, recall, mean_iou = match_objects(pred, truth)
    assert (f1, precision, recall) == (1.0, 1.0, 1.0)
    assert mean_iou == pytest.approx(expected_iou)
    assert 0.5 < mean_iou < 1


def test_an_overlap_below_the_iou_threshold_is_no_match():
    truth = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4] = 1
    pred = np.zeros_like(truth)
    pred[0:4, 2:6] = 1                      # IoU = 8 / 24 = 1/3
    assert match_objects(pred, truth).f1 == 0.0
    assert match_objects(pred, truth, iou=0.3).f1 == 1.0


def test_a_merged_prediction_matches_at_most_one_truth():
    truth = np.zeros((10, 20), np.int32)
    truth[2:8, 2:8] = 1
    truth[2:8, 8:10] = 2                    # small neighbour merged into the prediction
    truth[2:8, 14:18] = 3                   # missed entirely
    pred = np.zeros_like(truth)
    pred[2:8, 2:10] = 5                     # IoU with 1: 36/48 = 0.75; with 2: 12/48
    pred[0:1, 0:1] = 6                      # a false positive
    f1, precision, recall, mean_iou = match_objects(pred, truth)
    assert (precision, recall) == pytest.approx((1 / 2, 1 / 3))
    assert f1 == pytest.approx(2 * 1 / (2 + 3))
    assert mean_iou == pytest.approx(0.75)


def test_a_prediction_split_in_halves_matches_only_one_half_at_iou_one_half():
    truth = np.zeros((4, 8), np.int32)
    truth[:, :4], truth[:, 4:] = 1, 2
    pred = np.ones_like(truth)              # IoU 0.5 with each truth: a tie, one match only
    assert match_objects(pred, truth) == pytest.approx((2 / 3, 1.0, 0.5, 0.5))


def test_empty_images():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert match_objects(empty, empty).f1 == 1.0
    assert match_objects(one, empty).f1 == 0.0
    assert match_objects(empty, one).recall == 0.0


def test_segmentation_splits_touching_nuclei_and_drops_debris():
    truth = disks((96, 96), [(30, 30), (30, 47), (70, 70)], 9)   # the first two touch
    image = np.where(truth > 0, 200.0, 20.0)
    image[85:87, 10:12] = 200.0                                      # 4 px of debris
    image += np.random.default_rng(0).normal(0, 5, image.shape)
    labels = segment_nuclei(image.astype(np.float32))
    assert labels.dtype == np.int32
    assert sorted(np.unique(labels)) == [0, 1, 2, 3]
    result = match_objects(labels, truth)
    assert result.f1 == 1.0
    assert result.mean_iou > 0.85


def test_segmentation_of_an_empty_image_is_empty():
    assert segment_nuclei(np.full((32, 32), 7, np.uint16)).max() == 0


def test_a_nucleus_filling_a_small_crop_is_found():
    """Background cut into corners by the crop's edge is no hole: the nucleus is not grown over the whole crop."""
    truth = disks((16, 16), [(8, 8)], 7.5)
    image = np.where(truth > 0, 200.0, 20.0) + np.random.default_rng(0).normal(0, 2, truth.shape)
    with np.errstate(all="raise"):  # no median of an empty background
        labels = segment_nuclei(image.astype(np.float32), SegmentationParams(min_area=10))
    assert labels.max() == 1
    assert match_objects(labels, truth).mean_iou > 0.8


def test_segmentation_rejects_a_stack():
    with pytest.raises(ValueError, match="2D"):
        segment_nuclei(np.zeros((2, 8, 8)))


def test_min_area_removes_small_nuclei():
    truth = disks((64, 64), [(20, 20), (45, 45)], 3)                # about 29 px each
    image = np.where(truth > 0, 100.0, 0.0)
    assert segment_nuclei(image, SegmentationParams(min_area=10)).max() == 2
    assert segment_nuclei(image, SegmentationParams(min_area=80)).max() == 0


@pytest.mark.acceptance
def test_nuclei2d_matched_f1_at_iou_one_half(nuclei2d_dir: Path):
    """Default parameters (tuned on simulated plates) on a real image never used for tuning."""
    image = tifffile.imread(nuclei2d_dir / "img2d.tif")
    truth = tifffile.imread(nuclei2d_dir / "mask2d.tif")
    result = match_objects(segment_nuclei(image), truth, iou=0.5)
    print(f"nuclei2d: {result}")
    assert result.f1 >= 0.7
    assert result.mean_iou >= 0.7


def h_maxima_clump_by_clump(relief: np.ndarray, clumps: np.ndarray, h: float) -> np.ndarray:
    """The reference: ``skimage.morphology.h_maxima`` over each clump alone, the rest of its box at 0."""
    maxima = np.zeros(relief.shape, bool)
    for label, box in enumerate(ndi.find_objects(clumps), start=1):
        inside = clumps[box] == label
        maxima[box] |= morphology.h_maxima(np.where(inside, relief[box], 0), h).astype(bool) & inside
    return maxima


def watershed_relief(dna: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The relief and clumps ``split_touching`` finds its markers in, with the default parameters."""
    params = SegmentationParams()
    smooth = filters.gaussian(dna.astype(np.float32), sigma=params.smoothing_sigma, preserve_range=True)
    mask = foreground_mask(smooth, params)
    clumps = measure.label(mask)
    return marker_relief(mask, clumps, smooth, params), clumps


def test_h_maxima_per_clump_equal_skimage_clump_by_clump_on_real_nuclei(nuclei2d_dir: Path, bbbc013_dir: Path):
    """Clumps with one regional maximum skip the reconstruction; the markers must not change."""
    images = [tifffile.imread(nuclei2d_dir / "img2d.tif")]
    images += [tifffile.imread(path) for path in sorted(bbbc013_dir.glob("Channel2-*.tif"))[:2]]
    h = SegmentationParams().h
    for dna in images:
        relief, clumps = watershed_relief(dna)
        peaks = measure.label(morphology.local_maxima(np.where(clumps > 0, relief, 0)))
        peaks_per_clump = np.bincount(ndi.maximum(clumps, peaks, np.arange(1, peaks.max() + 1)).astype(int))
        assert (peaks_per_clump[1:] == 1).sum() > 10 and (peaks_per_clump[1:] > 1).sum() > 5  # both paths run
        np.testing.assert_array_equal(h_maxima_per_clump(relief, clumps, h), h_maxima_clump_by_clump(relief, clumps, h))


def test_a_clump_whose_relief_spans_less_than_h_has_no_maximum():
    clumps = disks((40, 40), [(10, 10), (28, 28)], 5)
    relief = np.where(clumps == 1, 0.3, 0.0) + np.where(clumps == 2, 2.0, 0.0)
    relief = (relief * (1 + 0.01 * np.random.default_rng(0).random(relief.shape))).astype(np.float32)
    maxima = h_maxima_per_clump(relief, clumps, h=0.5)
    assert not maxima[clumps == 1].any()
    assert maxima[clumps == 2].any()
    np.testing.assert_array_equal(maxima, h_maxima_clump_by_clump(relief, clumps, 0.5))
