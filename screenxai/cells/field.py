"""The cell stage's unit of work: one field of a plate in, its cells' crops and table out.

``process_field`` reads the field, takes the plate's nucleus labels when it
has them (else segments the nuclear channel), cuts crops, measures features
and a few quality numbers. Rows carry stable ids: plate, well, field, label
and ``cell_id`` = ``"{plate}/{well}/{field}/{label}"``.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from skimage import filters, util

from screenxai.cells.crops import crop_cells
from screenxai.cells.features import SHAPE_COLUMNS, measure_features
from screenxai.cells.normalise import NormalisationStats, normalise
from screenxai.cells.segment import SegmentationParams, segment_nuclei
from screenxai.errors import PlateError
from screenxai.plate.reader import Plate

NUCLEAR_STAIN_NAMES = ("dna", "dapi", "hoechst", "draq5", "nuclei")


@dataclass(frozen=True)
class CellConfig:
    """How the cells of a field are found, cropped and measured.

    Attributes
    ----------
    crop_size : int
        Side of the square crops, pixels. Default 32.
    nuclear_channel : str or None
        Channel to segment and to judge focus on; ``None`` picks the channel
        named DNA, DAPI, Hoechst, DRAQ5 or nuclei (any case).
    label_name : str
        Name of the plate's nucleus label image.
    use_plate_labels : bool
        Use the plate's ``label_name`` labels when a field has them; when
        False, or when a field has none, segment.
    segmentation : SegmentationParams
        Parameters of ``segment_nuclei``.
    ring_width : int
        Width of the perinuclear ring of the features, pixels. Default 5.
    normalisation : NormalisationStats or None
        When given, crops are normalised to [-1, 1]; else raw float32.
    """

    crop_size: int = 32
    nuclear_channel: str | None = None
    label_name: str = "nuclei"
    use_plate_labels: bool = True
    segmentation: SegmentationParams = dataclasses.field(default_factory=SegmentationParams)
    ring_width: int = 5
    normalisation: NormalisationStats | None = None


@dataclass
class CellBatch:
    """The cells of one field.

    Attributes
    ----------
    crops : ndarray of float32, shape (n_cells, c, crop_size, crop_size)
        Normalised to [-1, 1] when the config has statistics, else raw.
    table : DataFrame
        One row per cell, same order: ``plate``, ``well``, ``field``,
        ``label``, ``cell_id``, the columns of ``crop_cells`` (centroid, area,
        bounding box, ``border``), those of ``measure_features`` and
        ``label_source`` (``"plate"`` or ``"segmented"``).
    qc : dict
        The field's quality numbers (see ``field_qc``) with its identity.
    """

    crops: np.ndarray
    table: pd.DataFrame
    qc: dict


def nuclear_channel_index(channel_names: Sequence[str], nuclear_channel: str | None) -> int:
    """Index of the nuclear channel: the one named, or the one with a nuclear-stain name."""
    names = list(channel_names)
    if nuclear_channel is not None:
        if nuclear_channel not in names:
            raise PlateError(f"nuclear channel {nuclear_channel!r} is not among the channels {names}")
        return names.index(nuclear_channel)
    guesses = [i for i, name in enumerate(names) if name.lower() in NUCLEAR_STAIN_NAMES]
    if len(guesses) != 1:
        found = "several" if guesses else "none"
        raise PlateError(f"cannot tell the nuclear channel among {names} ({found} named one of "
                         f"{list(NUCLEAR_STAIN_NAMES)}); set nuclear_channel in the cell config")
    return guesses[0]


def reporter_channel_index(channel_names: Sequence[str], nuclear: int, reporter_channel: str | None = None) -> int:
    """Index of the reporter channel: the one named, else the first channel that is not the nuclear one."""
    names = list(channel_names)
    if reporter_channel is not None:
        if reporter_channel not in names:
            raise PlateError(f"reporter channel {reporter_channel!r} is not among the channels {names}")
        return names.index(reporter_channel)
    others = [i for i in range(len(names)) if i != nuclear]
    if not others:
        raise PlateError(f"no reporter channel besides the nuclear one among {names}")
    return others[0]


def field_qc(image: np.ndarray, nuclear: np.ndarray, n_cells: int, missing_chunks: int = 0) -> dict:
    """Quality numbers of a field.

    ``n_cells``; ``saturated_fraction``: fraction of all pixel values at the
    dtype's maximum (NaN for float images); ``focus``: variance of the
    Laplacian of the nuclear channel scaled to [0, 1] (low when blurred);
    ``missing_chunks``: chunks of the image and of the plate labels used
    absent from the store (read as the fill value, so the pixels alone
    cannot tell).
    """
    saturated = (float(np.mean(image == np.iinfo(image.dtype).max))
                 if np.issubdtype(image.dtype, np.integer) else float("nan"))
    focus = float(filters.laplace(util.img_as_float(nuclear)).var())
    return {"n_cells": n_cells, "saturated_fraction": saturated, "focus": focus, "missing_chunks": int(missing_chunks)}


@dataclass
class FieldPixels:
    """A field's pixels as the cell stage reads them.

    ``image`` is (c, y, x), ``labels`` the (y, x) nucleus labels,
    ``label_source`` ``"plate"`` or ``"segmented"``; ``missing_chunks``
    counts the chunks absent from the store of the arrays read (see
    ``OpenField.missing_chunks``).
    """

    image: np.ndarray
    labels: np.ndarray
    label_source: str
    missing_chunks: int


def labels_read(config: CellConfig, label_source: str) -> tuple[str, ...]:
    """The plate label images a field's cells were found with: ``label_name`` when they came from the plate."""
    return (config.label_name,) if label_source == "plate" else ()


def read_field(plate: Plate, well: str, field: int, config: CellConfig, nuclear: int) -> FieldPixels:
    """The field's image, its nucleus labels (the plate's, else segmented) and the chunks they lack.

    Stacks with several planes are max-projected along z, images and labels alike. ``Plate.read_pixels``
    reads them in this thread and names a chunk it cannot decode. The field's metadata is parsed once.
    """
    opened = plate.open_field(well, field)
    image = plate.read_pixels(opened.image().max(dim="z", keep_attrs=True))
    if config.use_plate_labels and config.label_name in opened.label_names:
        labels = plate.read_pixels(opened.labels(config.label_name).max(dim="z", keep_attrs=True)).astype(np.int32)
        source = "plate"
    else:
        labels, source = segment_nuclei(image[nuclear], config.segmentation), "segmented"
    return FieldPixels(image, labels, source, opened.missing_chunks(labels_read(config, source)))


def _check_channels(stats: NormalisationStats, plate: Plate) -> None:
    """Raise unless ``stats`` were fitted on the plate's channels, in its order."""
    if list(stats.channel_names) != list(plate.channel_names):
        raise PlateError(f"plate {plate.name} has channels {plate.channel_names} but the normalisation "
                         f"statistics are for {list(stats.channel_names)}")


def process_field(plate: Plate, well: str, field: int, config: CellConfig) -> CellBatch:
    """Find, crop and measure the cells of one field (see ``CellBatch``)."""
    nuclear = nuclear_channel_index(plate.channel_names, config.nuclear_channel)
    if config.normalisation is not None:
        _check_channels(config.normalisation, plate)
    pixels = read_field(plate, well, field, config, nuclear)
    well_id = plate.well(well).id
    crops, table = measure_cells(pixels.image, pixels.labels, plate.channel_names, config, plate.name, well_id,
                                 field, pixels.label_source)
    qc = {"plate": plate.name, "well": well_id, "field": field, "label_source": pixels.label_source,
          **field_qc(pixels.image, pixels.image[nuclear], len(table), pixels.missing_chunks)}
    return CellBatch(crops, table, qc)


def measure_cells(image: np.ndarray, labels: np.ndarray, channel_names: Sequence[str], config: CellConfig,
                  plate: str, well: str, field: int, source: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Crops and cell table of a (c, y, x) image and its nucleus labels, with the cells' stable ids."""
    crops, cells = crop_cells(image, labels, config.crop_size)
    features = measure_features(image, labels, channel_names, ring_width=config.ring_width)
    identity = pd.DataFrame({"plate": plate, "well": well, "field": field}, index=cells.index)
    identity["label"] = cells["label"]
    identity["cell_id"] = [f"{plate}/{well}/{field}/{label}" for label in cells["label"]]
    measured = features.drop(columns=[c for c in SHAPE_COLUMNS if c in cells.columns])
    table = identity.join(cells.drop(columns="label")).merge(measured, on="label", how="left")
    table["label_source"] = source
    if config.normalisation is not None:
        crops = normalise(crops, config.normalisation)
    return crops, table


def empty_cell_table(channel_names: Sequence[str], config: CellConfig) -> pd.DataFrame:
    """A cell table with no rows but every column and dtype ``process_field`` gives (dask's ``meta``)."""
    image = np.zeros((len(channel_names), 4 * config.crop_size, 4 * config.crop_size), np.uint16)
    labels = np.zeros(image.shape[1:], np.int32)
    centre = slice(2 * config.crop_size - 4, 2 * config.crop_size + 4)
    labels[centre, centre] = 1
    image[:, centre, centre] = 100
    _, table = measure_cells(image, labels, channel_names, replace(config, normalisation=None), "", "", 0, "")
    return table.iloc[:0]
