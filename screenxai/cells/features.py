"""Per-nucleus morphology and intensity features, in the spirit of a CellProfiler pipeline.

Shape comes from the nucleus label; intensities from each channel in the
nucleus and in a perinuclear ring around it. The ring of a nucleus is the
nucleus grown by ``ring_width`` pixels (``skimage.segmentation.expand_labels``,
which never grows into another nucleus or past the midline to a neighbour)
minus the nucleus itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import measure, segmentation

from screenxai.cells.segment import label_means

SHAPE_COLUMNS = ["area", "perimeter", "eccentricity", "solidity",
                 "major_axis_length", "minor_axis_length", "form_factor"]
CHANNEL_SUFFIXES = ["nucleus_mean", "ring_mean", "ratio", "texture"]
TEXTURE_SIGMA = 2.0
BACKGROUND_SIGMA = 2.0


def column_prefix(channel_name: str) -> str:
    """A channel name made safe for column names: runs of non-word characters become '_'."""
    prefix = re.sub(r"\W+", "_", channel_name).strip("_")
    if not prefix:
        raise ValueError(f"channel name {channel_name!r} has no letters or digits to name columns with")
    return prefix


def feature_columns(channel_names: Sequence[str]) -> list[str]:
    """The columns ``measure_features`` returns after ``label``, in order."""
    prefixes = [column_prefix(name) for name in channel_names]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"channel names {list(channel_names)} give clashing column names {prefixes}")
    return SHAPE_COLUMNS + [f"{p}_{s}" for p in prefixes for s in CHANNEL_SUFFIXES]


def perinuclear_rings(labels: np.ndarray, ring_width: int) -> np.ndarray:
    """Label image of each nucleus's ring: the nucleus grown by ``ring_width`` px, minus all nuclei."""
    grown = segmentation.expand_labels(labels, distance=ring_width)
    return np.where(labels == 0, grown, 0)


def region_means(labels: np.ndarray, values: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Mean of ``values`` over each label 1..``n_labels`` (default: the largest present) (NaN when empty).

    ``n_labels`` lets a ring image, whose last nuclei may have no ring
    pixels, give one value per nucleus. One vectorised pass over all labels,
    much faster than one region at a time.
    """
    n = int(labels.max()) if n_labels is None else n_labels
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return np.where(counts > 0, label_means(labels, values, n + 1)[1:], np.nan)


def fine_detail(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The channel minus its local mean, a Gaussian (``TEXTURE_SIGMA``) taken over ``mask`` pixels only.

    Averaging only over nucleus pixels (normalised convolution) keeps the
    nucleus's edge and the dark background out of the local mean, so a
    uniform nucleus has no detail at all.
    """
    weight = mask.astype(np.float64)
    local_sum = ndi.gaussian_filter(channel * weight, TEXTURE_SIGMA)
    local_weight = ndi.gaussian_filter(weight, TEXTURE_SIGMA)
    return np.where(mask, channel - local_sum / np.maximum(local_weight, 1e-12), 0.0)


def ellipse_features(labels: np.ndarray) -> pd.DataFrame:
    """Area, eccentricity and axis lengths of the same-moments ellipse, for labels 1..max at once.

    The ellipse's squared semi-axes are 4 times the eigenvalues of the
    covariance of the pixel coordinates, as in ``regionprops``, computed here
    for every label in one vectorised pass.
    """
    y, x = np.indices(labels.shape, dtype=np.float64)
    area = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)[1:].astype(np.float64)
    mean_y, mean_x = region_means(labels, y), region_means(labels, x)
    var_y = region_means(labels, y * y) - mean_y**2
    var_x = region_means(labels, x * x) - mean_x**2
    cov = region_means(labels, y * x) - mean_y * mean_x
    spread = np.sqrt(((var_y - var_x) / 2) ** 2 + cov**2)
    major = np.maximum((var_y + var_x) / 2 + spread, 0)
    minor = np.maximum((var_y + var_x) / 2 - spread, 0)
    eccentricity = np.sqrt(1 - np.divide(minor, major, out=np.ones_like(major), where=major > 0))
    return pd.DataFrame({"area": area, "eccentricity": eccentricity, "major_axis_length": 4 * np.sqrt(major),
                         "minor_axis_length": 4 * np.sqrt(minor)},
                        index=pd.RangeIndex(1, len(area) + 1, name="label"))


def shape_features(labels: np.ndarray) -> pd.DataFrame:
    """Area, perimeter, eccentricity, solidity, axis lengths and form factor, for labels 1..max."""
    outline = pd.DataFrame(measure.regionprops_table(labels, properties=("label", "perimeter", "solidity")))
    shape = ellipse_features(labels).join(outline.set_index("label"))
    perimeter = shape["perimeter"].where(shape["perimeter"] > 0)
    shape["form_factor"] = 4 * np.pi * shape["area"] / perimeter**2
    return shape


def channel_features(image: np.ndarray, labels: np.ndarray, prefixes: Sequence[str], ring_width: int,
                     background: np.ndarray) -> pd.DataFrame:
    """Nucleus mean, ring mean, their ratio and texture per channel, for labels 1..max of sequential labels."""
    rings = perinuclear_rings(labels, ring_width)
    columns = {}
    for channel, prefix, level in zip(image.astype(np.float32), prefixes, background):
        nucleus_mean = region_means(labels, channel)
        ring_mean = region_means(rings, channel, int(labels.max()))
        detail = fine_detail(channel, labels > 0)
        detail_var = region_means(labels, detail**2) - region_means(labels, detail) ** 2
        above_ring = np.where(ring_mean > level, ring_mean - level, np.nan)
        above_nucleus = np.where(nucleus_mean > level, nucleus_mean - level, np.nan)
        columns[f"{prefix}_nucleus_mean"] = nucleus_mean
        columns[f"{prefix}_ring_mean"] = ring_mean
        columns[f"{prefix}_ratio"] = (nucleus_mean - level) / above_ring
        columns[f"{prefix}_texture"] = np.sqrt(np.maximum(detail_var, 0)) / above_nucleus
    return pd.DataFrame(columns, index=pd.RangeIndex(1, int(labels.max()) + 1, name="label"))


def field_background(image: np.ndarray, percentile: float = 5.0) -> np.ndarray:
    """Per-channel background level: a low percentile of the field's lightly smoothed pixels.

    Smoothing (Gaussian, sigma 2 px) first keeps camera noise from pulling
    the percentile below the true background.
    """
    smooth = ndi.gaussian_filter(image.astype(np.float32), sigma=(0, BACKGROUND_SIGMA, BACKGROUND_SIGMA))
    return np.percentile(smooth.reshape(image.shape[0], -1), percentile, axis=1)


def measure_features(
    image: np.ndarray,
    labels: np.ndarray,
    channel_names: Sequence[str],
    ring_width: int = 5,
    background_percentile: float = 5.0,
) -> pd.DataFrame:
    """Measure shape and per-channel intensity features of every nucleus.

    Parameters
    ----------
    image : ndarray, shape (c, y, x)
        The field's channels, in raw intensity units.
    labels : ndarray of int, shape (y, x)
        Nucleus labels, 0 = background.
    channel_names : sequence of str
        One name per channel; non-word characters become ``_`` in columns.
    ring_width : int
        Width in pixels of the perinuclear ring. Default 5.
    background_percentile : float
        Each channel's background is this percentile of the field's lightly
        smoothed pixels (``field_background``); it is subtracted from the
        means before their ratio and the texture. Default 5.

    Returns
    -------
    DataFrame
        One row per label, sorted by label, with columns:

        - ``label``: the nucleus's label value.
        - ``area``: pixels in the nucleus.
        - ``perimeter``: perimeter length in pixels (regionprops).
        - ``eccentricity``: of the ellipse with the same second moments, 0 = circle.
        - ``solidity``: area / convex hull area.
        - ``major_axis_length``, ``minor_axis_length``: axes of that ellipse, pixels.
        - ``form_factor``: 4 pi area / perimeter², about 1 for a disk, lower when
          irregular (NaN when the perimeter is 0).
        - ``{channel}_nucleus_mean``: mean raw intensity inside the nucleus.
        - ``{channel}_ring_mean``: mean raw intensity in the perinuclear ring (NaN
          when the nucleus has no ring pixels, e.g. when enclosed by others).
        - ``{channel}_ratio``: (nucleus mean - background) / (ring mean -
          background); above 1 when the channel is enriched in the nucleus.
          Background subtraction makes the ratio a ratio of concentrations
          rather than of camera counts. NaN when the ring is not above
          background.
        - ``{channel}_texture``: standard deviation over the nucleus of the
          channel minus its local mean (Gaussian, sigma 2 px, over nucleus
          pixels only; see ``fine_detail``), divided by the nucleus mean
          above background: the relative size of fine-grained variation such
          as speckles or condensed chromatin. Dimensionless, so bright and
          dim cells compare; blind to the nucleus's edge and to smooth
          gradients. NaN when the nucleus is not above background.
    """
    if image.ndim != 3 or labels.shape != image.shape[1:]:
        raise ValueError(f"expected image (c, y, x) and labels (y, x) of one size, "
                         f"got {image.shape} and {labels.shape}")
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for {image.shape[0]} channels")
    columns = feature_columns(channel_names)
    prefixes = [column_prefix(name) for name in channel_names]
    background = field_background(image, background_percentile)
    sequential, _, original = segmentation.relabel_sequential(labels)
    table = shape_features(sequential).join(channel_features(image, sequential, prefixes, ring_width, background))
    table = table[columns].reset_index()
    table["label"] = original[np.arange(1, len(table) + 1)].astype(np.int64)
    return table
