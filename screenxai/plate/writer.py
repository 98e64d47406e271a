"""Write OME-Zarr HCS plates with ome-zarr-py's writer functions.

A plate is written field by field into a temporary folder beside the
target and moved into place only when complete, so a failed or interrupted
write never leaves anything that looks like a finished plate.

Known upstream gap (ome-zarr-py 0.18): for NGFF 0.5 ``write_labels`` leaves
the ``labels`` group's ``ome`` attributes without ``version``, which the NGFF
0.5 schema (and ome-zarr-models) require. ``_patch_labels_version`` adds that
one attribute; ``tests/test_plate_io.py`` fails once upstream fixes it, so
the patch can then be removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import zarr
from ome_zarr.format import Format, FormatV04, FormatV05
from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

from screenxai.errors import PlateError
from screenxai.io import recover_folder, replace_folder, temporary_sibling
from screenxai.plate.layout import layout_to_records, validate_layout
from screenxai.plate.wells import parse_well, well_sort_key

SCREENXAI_ATTRS = "screenxai"
_PALETTE = ["0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF"]


@dataclass
class FieldImage:
    """One field of view: an image (c, z, y, x) or (c, y, x) and its label images."""

    well: str
    field: int
    image: np.ndarray
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)


def ngff_format(version: str) -> Format:
    """ome-zarr-py format object for an NGFF version string ("0.4" or "0.5")."""
    formats = {"0.4": FormatV04, "0.5": FormatV05}
    if version not in formats:
        raise ValueError(f"NGFF version {version!r} is not supported; use one of {sorted(formats)}")
    return formats[version]()


def _omero_channels(channel_names: Sequence[str], dtype: np.dtype, image: np.ndarray) -> dict:
    """OMERO rendering metadata: a label, colour and display window per channel."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    channels = []
    for i, name in enumerate(channel_names):
        plane = image[i]
        window = {"min": lo, "max": hi, "start": float(plane.min()), "end": float(plane.max())}
        channels.append({"label": name, "color": _PALETTE[i % len(_PALETTE)], "active": True, "window": window})
    return {"channels": channels}


def _as_czyx(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 3:
        return image[:, None]
    if image.ndim == 4:
        return image
    raise PlateError(f"{where}: image must have dims (c, y, x) or (c, z, y, x), got shape {image.shape}")


def _patch_labels_version(field_group: zarr.Group, fmt: Format) -> None:
    """Add the NGFF version ome-zarr-py 0.18 omits from 0.5 ``labels`` groups."""
    if fmt.version != "0.5":
        return
    labels_group = field_group["labels"]
    ome = dict(labels_group.attrs.get("ome", {}))
    if "version" not in ome:
        ome["version"] = fmt.version
        labels_group.attrs["ome"] = ome


class PlateWriter:
    """Stream fields into a new OME-Zarr HCS plate; publish it atomically on success.

    Use as a context manager::

        with PlateWriter("plate.zarr", name="P1", channel_names=["DNA", "GFP"]) as w:
            w.add_field(FieldImage("B03", 0, image, {"nuclei": labels}))
            w.set_layout(layout)

    On an exception inside the block the partial plate is deleted and nothing
    at ``path`` changes.
    """

    def __init__(
        self,
        path: str | Path,
        name: str,
        channel_names: Sequence[str],
        ngff_version: str = "0.5",
        pixel_size_um: float | None = None,
        pyramid_levels: int = 2,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.channel_names = list(channel_names)
        self.fmt = ngff_format(ngff_version)
        self.pixel_size_um = pixel_size_um
        self.scale_factors = [2**i for i in range(1, pyramid_levels)]
        self.overwrite = overwrite
        self.layout: pd.DataFrame | None = None
        self._fields: dict[str, list[int]] = {}
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self._tmp = temporary_sibling(self.path)
        self._root: zarr.Group | None = None

    def __enter__(self) -> "PlateWriter":
        if self.path.exists() and not self.overwrite:
            raise PlateError(f"{self.path} already exists; choose another output or allow overwriting")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recover_folder(self.path)
        zarr_format = 3 if self.fmt.version == "0.5" else 2
        self._root = zarr.open_group(str(self._tmp), mode="w", zarr_format=zarr_format)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def add_field(self, item: FieldImage) -> None:
        """Write one field's image pyramid and label images."""
        where = f"well {item.well} field {item.field}"
        image = self._checked_image(item, where)
        row, column = parse_well(item.well)
        well = f"{row}{column:02d}"
        fields = self._fields.setdefault(well, [])
        if item.field in fields:
            raise PlateError(f"{where}: this field was already written")
        fields.append(item.field)
        group = self._root.require_group(row).require_group(f"{column:02d}").require_group(str(item.field))
        size = self.pixel_size_um or 1.0
        units = {"y": "micrometer", "x": "micrometer"} if self.pixel_size_um else None
        chunks = (1, 1) + tuple(min(s, 1024) for s in image.shape[2:])
        write_image(da.from_array(image, chunks=chunks), group, axes="czyx", fmt=self.fmt,
                    scale_factors=self.scale_factors, scale={"c": 1.0, "z": 1.0, "y": size, "x": size},
                    axes_units=units, name=f"{well}-{item.field}",
                    omero=_omero_channels(self.channel_names, image.dtype, image))
        for label_name, label_image in item.labels.items():
            self._write_labels(group, label_name, label_image, image.shape[1:], where)

    def _checked_image(self, item: FieldImage, where: str) -> np.ndarray:
        """The field's image as (c, z, y, x), refused unless it has the plate's channels, shape and dtype."""
        image = _as_czyx(np.asarray(item.image), where)
        if image.shape[0] != len(self.channel_names):
            raise PlateError(
                f"{where}: image has {image.shape[0]} channels, the plate has {len(self.channel_names)} "
                f"({self.channel_names})"
            )
        if self._shape is None:
            self._shape, self._dtype = image.shape, image.dtype
        elif image.shape != self._shape or image.dtype != self._dtype:
            raise PlateError(
                f"{where}: image shape {image.shape} dtype {image.dtype} differs from the plate's "
                f"{self._shape} {self._dtype}"
            )
        return image

    def _write_labels(self, group: zarr.Group, name: str, labels: np.ndarray, shape: tuple[int, ...],
                      where: str) -> None:
        """Write one label image of a field, refused unless it has the field's (z, y, x) shape."""
        labels = np.asarray(labels)
        if labels.ndim == 2:
            labels = labels[None]
        if labels.shape != shape:
            raise PlateError(f"{where}: label image {name!r} has shape {labels.shape}, "
                             f"the field's (z, y, x) is {shape}")
        size = self.pixel_size_um or 1.0
        write_labels(labels, group, name=name, axes="zyx", fmt=self.fmt,
                     scaler=None,  # the deprecated default Scaler would override scale_factors
                     scale_factors=self.scale_factors, scale={"z": 1.0, "y": size, "x": size})
        _patch_labels_version(group, self.fmt)

    def set_layout(self, layout: pd.DataFrame) -> None:
        """Store the plate layout (validated) in the plate's attributes."""
        self.layout = validate_layout(layout, source=f"layout of plate {self.name}")

    def _finish(self) -> None:
        if not self._fields:
            raise PlateError(f"{self.path}: no field was written; refusing to create an empty plate")
        wells = sorted(self._fields, key=well_sort_key)
        rows = sorted({parse_well(w)[0] for w in wells}, key=lambda r: well_sort_key(r + "01"))
        columns = sorted({parse_well(w)[1] for w in wells})
        column_names = [f"{c:02d}" for c in columns]
        if self.layout is not None:
            unknown = sorted(set(self.layout["well"]) - set(wells), key=well_sort_key)
            if unknown:
                raise PlateError(f"{self.path}: layout lists well(s) {unknown} that have no images")
        for well in wells:
            row, column = parse_well(well)
            well_group = self._root[row][f"{column:02d}"]
            images = [{"path": str(f)} for f in sorted(self._fields[well])]
            write_well_metadata(well_group, images, fmt=self.fmt)
        write_plate_metadata(
            self._root,
            rows,
            column_names,
            [f"{parse_well(w)[0]}/{parse_well(w)[1]:02d}" for w in wells],
            fmt=self.fmt,
            field_count=max(len(f) for f in self._fields.values()),
            name=self.name,
        )
        extra: dict = {"plate_name": self.name}
        if self.layout is not None:
            extra["layout"] = layout_to_records(self.layout)
        self._root.attrs[SCREENXAI_ATTRS] = extra
        replace_folder(self._tmp, self.path)


def write_plate(
    path: str | Path,
    fields: Iterable[FieldImage],
    name: str,
    channel_names: Sequence[str],
    layout: pd.DataFrame | None = None,
    **options,
) -> Path:
    """Write all ``fields`` as one plate at ``path`` (see ``PlateWriter`` for options)."""
    with PlateWriter(path, name=name, channel_names=channel_names, **options) as writer:
        for item in fields:
            writer.add_field(item)
        if layout is not None:
            writer.set_layout(layout)
    return Path(path)
