"""Morphology of the central cell of single-cell crops, measured with the field's feature code.

Model checks compare factors measured on crops and on the models' decodes
or adversarial images with the planted truth; the measurement must work the
same on all of them, so the nucleus is found by a fixed threshold rather
than by ``segment_nuclei``, and the reporter is measured by the intensity
part of ``measure_features`` (``channel_features``; the shape features,
most of its cost, are not needed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from skimage import measure

from screenxai.cells.features import channel_features, field_background, perinuclear_rings

NUCLEUS_LEVEL = 0.3  # the nucleus whose reporter is measured: 30% of the way from background to the central peak
AREA_LEVEL = 0.1  # the nucleus whose area is measured: its whole extent, down to 10%
DNA_SIGMA = 1.0  # smoothing of the DNA before the thresholds, pixels
RING_WIDTH = 5  # perinuclear ring, pixels
CHANNELS = ("dna", "reporter")


def central_object(dna: np.ndarray, level: float) -> np.ndarray:
    """The object of ``dna`` above ``level`` of the way from background to the central peak, at the centre.

    Background is the 5th percentile; when no object covers the centre the largest is taken; an
    all-background crop gives an empty mask.
    """
    centre = dna.shape[-1] // 2
    background, peak = np.percentile(dna, 5), dna[centre - 4:centre + 4, centre - 4:centre + 4].max()
    labels = measure.label(dna > background + level * (peak - background))
    label = labels[centre, centre]
    if label == 0 and labels.max() > 0:
        label = np.bincount(labels.ravel())[1:].argmax() + 1
    return labels == label if label else np.zeros(dna.shape, bool)


def central_cell_factors(crop: np.ndarray) -> dict[str, float]:
    """Translocation, nuclear area and reporter texture of the central cell of one (dna, reporter) crop in [0, 1].

    Translocation is the reporter's ``ratio`` of ``measure_features`` for
    the nucleus at ``NUCLEUS_LEVEL``; texture its ``texture`` over the whole
    cell (that nucleus and its perinuclear ring), since a reporter's spots
    lie mostly outside the nucleus; nuclear area is the pixels of the
    nucleus at ``AREA_LEVEL``. A crop without a nucleus, or whose reporter
    is not above background, gives 0 (NaN would drop the cell from rank
    statistics).
    """
    dna = gaussian_filter(crop[0], DNA_SIGMA)
    nucleus = central_object(dna, NUCLEUS_LEVEL).astype(np.int32)
    area = float(central_object(dna, AREA_LEVEL).sum())
    if not nucleus.any():
        return {"translocation": 0.0, "nuclear_area": area, "texture": 0.0}
    cell = nucleus + perinuclear_rings(nucleus, RING_WIDTH)
    background = field_background(crop)
    ratio = channel_features(crop, nucleus, CHANNELS, RING_WIDTH, background)["reporter_ratio"].iloc[0]
    texture = channel_features(crop, cell, CHANNELS, RING_WIDTH, background)["reporter_texture"].iloc[0]
    return {"translocation": float(np.nan_to_num(ratio)), "nuclear_area": area,
            "texture": float(np.nan_to_num(texture))}


def measure_cell_factors(crops: np.ndarray, nuclear_channel: int = 0, reporter_channel: int = 1) -> pd.DataFrame:
    """Translocation, nuclear area and reporter texture of the central cell of crops in [-1, 1] (N, c, y, x).

    One row per crop (see ``central_cell_factors``); crops are mapped to [0, 1] first.
    """
    scaled = np.clip((np.asarray(crops, np.float32)[:, [nuclear_channel, reporter_channel]] + 1) / 2, 0, None)
    return pd.DataFrame([central_cell_factors(crop) for crop in scaled],
                        columns=["translocation", "nuclear_area", "texture"])
