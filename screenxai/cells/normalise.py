"""Per-channel intensity normalisation fitted on a plate's negative-control wells.

Each channel's ``low`` and ``high`` are its 0.5th and 99.5th percentiles
over the pixels of negative-control fields (background included), robust to
a few hot pixels and saturated spots. ``normalise`` maps ``[low, high]``
linearly to ``[-1, 1]`` and clips, which is the input range of the models.
Fitting on the plate's own controls removes plate-to-plate differences in
exposure and staining.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from screenxai.errors import LayoutError
from screenxai.plate.layout import CONTROL_COLUMN, NEGATIVE, wells_with
from screenxai.plate.reader import FieldKey, Plate

PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class NormalisationStats:
    """Per-channel intensities that map to -1 (``low``) and 1 (``high``)."""

    channel_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.channel_names) == len(self.low) == len(self.high):
            raise ValueError(f"NormalisationStats: {len(self.channel_names)} channels but "
                             f"{len(self.low)} low and {len(self.high)} high values")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"channel_names": list(self.channel_names), "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict) -> NormalisationStats:
        """The inverse of ``to_dict``."""
        return cls(tuple(data["channel_names"]), tuple(map(float, data["low"])), tuple(map(float, data["high"])))


def stats_from_images(images: Iterable[np.ndarray], channel_names: Sequence[str],
                      percentiles: tuple[float, float] = PERCENTILES) -> NormalisationStats:
    """Fit ``NormalisationStats`` to the pixels of (c, y, x) images."""
    pixels = np.concatenate([image.reshape(image.shape[0], -1) for image in images], axis=1)
    if pixels.shape[0] != len(channel_names):
        raise ValueError(f"{len(channel_names)} channel names for {pixels.shape[0]} channels")
    low, high = np.percentile(pixels, percentiles, axis=1)
    high = np.maximum(high, low + 1e-6)
    return NormalisationStats(tuple(channel_names), tuple(map(float, low)), tuple(map(float, high)))


def negative_wells(plate: Plate) -> list[str]:
    """The plate's negative-control wells, from its layout."""
    if plate.layout is None:
        raise LayoutError(f"plate {plate.name} ({plate.url}) has no layout, so no negative-control wells "
                          "to normalise with; give a layout or the wells to use")
    if CONTROL_COLUMN not in plate.layout.columns:
        raise LayoutError(f"plate {plate.name}: layout has no {CONTROL_COLUMN!r} column "
                          f"(columns are {list(plate.layout.columns)})")
    wells = wells_with(plate.layout, CONTROL_COLUMN, [NEGATIVE])
    if not wells:
        raise LayoutError(f"plate {plate.name}: no well has {CONTROL_COLUMN} == {NEGATIVE!r} in the layout")
    return wells


def _spread_fields(plate: Plate, wells: Sequence[str], max_fields: int) -> list[FieldKey]:
    """Up to ``max_fields`` fields of ``wells``, taking one field per well in turn."""
    if not wells:
        raise ValueError(f"plate {plate.name}: no wells given to fit the normalisation on")
    keys_per_well = [plate.field_keys([w]) for w in wells]
    depth = max(len(keys) for keys in keys_per_well)
    ordered = [keys[i] for i in range(depth) for keys in keys_per_well if i < len(keys)]
    return ordered[:max_fields]


def fit_normalisation(plate: Plate, wells: Sequence[str] | None = None, max_fields: int = 16,
                      percentiles: tuple[float, float] = PERCENTILES) -> NormalisationStats:
    """Fit per-channel statistics on a plate's negative-control fields.

    Parameters
    ----------
    plate : Plate
        The plate to normalise.
    wells : sequence of str, optional
        Wells to fit on; default the layout's ``control == "negative"`` wells.
    max_fields : int
        At most this many fields are read, spread over the wells.
    percentiles : (float, float)
        The percentiles that become ``low`` and ``high``.

    Raises
    ------
    LayoutError
        When ``wells`` is not given and the plate has no layout or no
        negative-control wells.
    """
    wells = list(wells) if wells is not None else negative_wells(plate)
    keys = _spread_fields(plate, wells, max_fields)
    images = (plate.read_pixels(plate.image(k.well, k.field).max(dim="z", keep_attrs=True)) for k in keys)
    return stats_from_images(images, plate.channel_names, percentiles)


def normalise(crops: np.ndarray, stats: NormalisationStats) -> np.ndarray:
    """Map each channel's ``[low, high]`` to ``[-1, 1]`` and clip; (N, C, H, W) -> float32."""
    if crops.ndim != 4 or crops.shape[1] != len(stats.channel_names):
        raise ValueError(f"expected crops (N, {len(stats.channel_names)}, H, W) for channels "
                         f"{list(stats.channel_names)}, got shape {crops.shape}")
    low = np.asarray(stats.low, np.float32)[None, :, None, None]
    high = np.asarray(stats.high, np.float32)[None, :, None, None]
    scaled = 2 * (crops.astype(np.float32) - low) / (high - low) - 1
    return np.clip(scaled, -1, 1, out=scaled)


def denormalise(crops: np.ndarray, stats: NormalisationStats) -> np.ndarray:
    """The inverse of ``normalise`` (before its clipping): ``[-1, 1]`` back to the plate's intensity units."""
    if crops.ndim < 3 or crops.shape[-3] != len(stats.channel_names):
        raise ValueError(f"expected images (..., {len(stats.channel_names)}, H, W) for channels "
                         f"{list(stats.channel_names)}, got shape {crops.shape}")
    low = np.asarray(stats.low, np.float32)[:, None, None]
    high = np.asarray(stats.high, np.float32)[:, None, None]
    return ((np.asarray(crops, np.float32) + 1) / 2 * (high - low) + low).astype(np.float32)
