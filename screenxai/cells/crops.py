"""Fixed-size single-cell crops centred on nuclei, with a table describing each cell."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from skimage import measure

CROP_COLUMNS = ["label", "centroid_y", "centroid_x", "area",
                "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "border"]


def nucleus_table(labels: np.ndarray) -> pd.DataFrame:
    """Label, centroid, area and bounding box of every nucleus, sorted by label.

    Bounding boxes are half-open: rows ``bbox_min_y`` to ``bbox_max_y - 1``.
    """
    props = measure.regionprops_table(labels, properties=("label", "centroid", "area", "bbox"))
    table = pd.DataFrame(props).rename(columns={
        "centroid-0": "centroid_y", "centroid-1": "centroid_x",
        "bbox-0": "bbox_min_y", "bbox-1": "bbox_min_x", "bbox-2": "bbox_max_y", "bbox-3": "bbox_max_x",
    })
    table["label"] = table["label"].astype(np.int64)
    table["area"] = table["area"].astype(np.int64)
    return table.sort_values("label", ignore_index=True)


def crop_origins(table: pd.DataFrame, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corner (y, x) of each cell's crop window: the rounded centroid minus half the size."""
    half = crop_size // 2
    top = np.round(table["centroid_y"].to_numpy()).astype(np.int64) - half
    left = np.round(table["centroid_x"].to_numpy()).astype(np.int64) - half
    return top, left


def border_flags(table: pd.DataFrame, top: np.ndarray, left: np.ndarray, crop_size: int,
                 shape: tuple[int, int]) -> np.ndarray:
    """True where the crop window leaves the field or the nucleus touches the field's edge."""
    height, width = shape
    window_out = (top < 0) | (left < 0) | (top + crop_size > height) | (left + crop_size > width)
    touches = ((table["bbox_min_y"] == 0) | (table["bbox_min_x"] == 0)
               | (table["bbox_max_y"] == height) | (table["bbox_max_x"] == width)).to_numpy()
    return window_out | touches


def crop_cells(
    image: np.ndarray,
    labels: np.ndarray,
    crop_size: int,
    pad_mode: Literal["constant", "reflect"] = "constant",
) -> tuple[np.ndarray, pd.DataFrame]:
    """Cut a ``crop_size`` x ``crop_size`` window around every nucleus.

    The window's centre pixel (``crop_size // 2``, ``crop_size // 2``) is the
    nucleus centroid rounded to the nearest pixel. Where a window leaves the
    field it is padded: with zeros (``pad_mode="constant"``, the default, so
    that padding reads as empty background) or by mirroring the field
    (``"reflect"``).

    Parameters
    ----------
    image : ndarray, shape (c, y, x)
        The field's channels.
    labels : ndarray of int, shape (y, x)
        Nucleus labels, 0 = background.
    crop_size : int
        Height and width of each crop in pixels.
    pad_mode : {"constant", "reflect"}
        How pixels outside the field are filled.

    Returns
    -------
    crops : ndarray of float32, shape (n_cells, c, crop_size, crop_size)
        In the image's own intensity units, in label order.
    table : DataFrame
        One row per cell, same order, with columns ``label``,
        ``centroid_y``, ``centroid_x`` (pixels), ``area`` (pixels),
        ``bbox_min_y``, ``bbox_min_x``, ``bbox_max_y``, ``bbox_max_x``
        (half-open bounding box of the nucleus) and ``border`` (True when
        the crop window leaves the field or the nucleus touches its edge).
    """
    if image.ndim != 3:
        raise ValueError(f"crop_cells expects a (c, y, x) image, got shape {image.shape}")
    if labels.shape != image.shape[1:]:
        raise ValueError(f"labels shape {labels.shape} does not match image shape {image.shape[1:]}")
    if crop_size < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    table = nucleus_table(labels)
    top, left = crop_origins(table, crop_size)
    table["border"] = border_flags(table, top, left, crop_size, labels.shape)
    padded = np.pad(image.astype(np.float32), ((0, 0), (crop_size, crop_size), (crop_size, crop_size)),
                    mode=pad_mode)
    crops = np.empty((len(table), image.shape[0], crop_size, crop_size), np.float32)
    for i, (y, x) in enumerate(zip(top + crop_size, left + crop_size)):
        crops[i] = padded[:, y:y + crop_size, x:x + crop_size]
    return crops, table[CROP_COLUMNS]
