"""Open OME-Zarr HCS plates (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) lazily.

``open_plate`` reads only metadata. Each field's image comes back as a
dask-backed ``xarray.DataArray`` with dims (c, z, y, x) and channel names as
the ``c`` coordinate; pixels are read when the caller computes
(``Plate.read_pixels`` names the chunk it cannot decode). ``missing_chunks``
counts the chunks of an array absent from the store, which zarr would read
as its fill value; ``OpenField`` reads a field's image, labels and that
count from one parse of its metadata. NGFF metadata is read through
``screenxai.plate.ngff``, which validates it with the ome-zarr-models models.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from ome_zarr_models.common.coordinate_transformations import VectorScale

from screenxai.errors import PlateError
from screenxai.location import credentials_in_url, url_without_credentials
from screenxai.plate.layout import layout_from_records, read_layout, validate_layout
from screenxai.plate.ngff import read_label_names, read_multiscale, read_plate, read_well
from screenxai.plate.wells import normalise_well, well_id, well_sort_key
from screenxai.plate.writer import SCREENXAI_ATTRS

SPATIAL = ("c", "z", "y", "x")


@dataclass(frozen=True, order=True)
class FieldKey:
    """Identity of one field of view in a screen."""

    plate: str
    well: str
    field: int


@dataclass
class Well:
    """A well's name, its NGFF path and the paths of its fields, in order."""

    id: str
    row: str
    column: str
    path: str
    field_paths: list[str] = field(default_factory=list)


@dataclass
class Multiscale:
    """The multiscale levels of one image: dataset paths, axes and pixel sizes."""

    axes: list[str]
    paths: list[str]
    scales: list[dict[str, float]]
    channel_names: list[str] | None


def _read_multiscale(group: zarr.Group, where: str) -> Multiscale:
    """The first multiscale of an image group, from its metadata as ``ngff.read_multiscale`` validates it."""
    meta, labels = read_multiscale(group.attrs, where)
    axes = [axis.name for axis in meta.axes]
    scales = []
    for i, dataset in enumerate(meta.datasets):
        scale = dataset.coordinateTransformations[0]
        if not isinstance(scale, VectorScale):
            raise PlateError(f"{where}: the scale of multiscales.0.datasets.{i} is stored at {scale.path}, "
                             "which is not read; give it in the metadata")
        scales.append(dict(zip(axes, scale.scale, strict=True)))
    names = [label or f"c{i}" for i, label in enumerate(labels)] if labels else None
    return Multiscale(axes, [dataset.path for dataset in meta.datasets], scales, names)


def _level_array(group: zarr.Group, path: str, ms: Multiscale, level: int, url: str) -> tuple[zarr.Array, str]:
    """The array of one multiscale level of the image group at ``path``, and its path within the plate."""
    if not 0 <= level < len(ms.paths):
        raise PlateError(f"{url}/{path}: no level {level} (the image has {len(ms.paths)} levels)")
    try:
        return group[ms.paths[level]], f"{path}/{ms.paths[level]}"
    except KeyError as err:
        raise PlateError(f"{url}/{path}: array {ms.paths[level]} is missing") from err


def _to_czyx(array: da.Array, axes: list[str], where: str) -> da.Array:
    """Reorder an NGFF array to (c, z, y, x), adding missing c/z axes and taking t=0."""
    unknown = set(axes) - {"t", *SPATIAL}
    if unknown:
        raise PlateError(f"{where}: unsupported axes {sorted(unknown)} (axes are {axes})")
    if "t" in axes:
        array = array[tuple(0 if a == "t" else slice(None) for a in axes)]
        axes = [a for a in axes if a != "t"]
    for name in ("c", "z"):
        if name not in axes:
            array = array[None]
            axes = [name, *axes]
    return da.transpose(array, [axes.index(a) for a in SPATIAL])


class Plate:
    """An opened HCS plate: its wells, fields, channels, levels and layout.

    Construct with ``open_plate``. Nothing but metadata is read until an
    image is computed.
    """

    def __init__(self, url: str, root: zarr.Group, name: str, ngff_version: str, wells: dict[str, Well],
                 rows: list[str], columns: list[str], layout: pd.DataFrame | None) -> None:
        self.url = url
        self.root = root
        self.name = name
        self.ngff_version = ngff_version
        self.wells = wells
        self.rows = rows
        self.columns = columns
        self.layout = layout

    def __repr__(self) -> str:
        return (f"<Plate {self.name!r} NGFF {self.ngff_version}: {len(self.wells)} wells, "
                f"{len(self.field_keys())} fields, channels {self.channel_names}>")

    def well(self, well: str) -> Well:
        """A well by name (any spelling ``normalise_well`` accepts)."""
        try:
            key = normalise_well(well)
        except ValueError as err:
            raise PlateError(f"plate {self.name}: {err}") from err
        if key not in self.wells:
            raise PlateError(f"plate {self.name} ({self.url}): no well {key}")
        return self.wells[key]

    def field_keys(self, wells: list[str] | None = None) -> list[FieldKey]:
        """Every field of every (or of the given) well, in plate order."""
        selected = [self.well(w).id for w in wells] if wells is not None else list(self.wells)
        return [FieldKey(self.name, w, i) for w in selected for i in range(len(self.wells[w].field_paths))]

    def open_field(self, well: str, field: int = 0) -> OpenField:
        """One field's image group, opened (see ``OpenField``)."""
        info = self.well(well)
        if not 0 <= field < len(info.field_paths):
            raise PlateError(f"plate {self.name} well {info.id}: no field {field} "
                             f"(the well has {len(info.field_paths)} fields)")
        path = f"{info.path}/{info.field_paths[field]}"
        try:
            return OpenField(self, info.id, field, self.root[path], path)
        except KeyError as err:
            raise PlateError(f"plate {self.name} well {info.id} field {field}: group {path} is missing "
                             f"from {self.url}") from err
        except json.JSONDecodeError as err:
            raise PlateError(f"plate {self.name} well {info.id} field {field}: "
                             f"{_broken_metadata(self.url, path, err)}") from None

    @cached_property
    def _first_multiscale(self) -> Multiscale:
        first = self.field_keys()[0]
        return self.open_field(first.well, first.field).multiscale()

    @property
    def channel_names(self) -> list[str]:
        """Channel names from the first field's omero metadata (``c0``... when absent)."""
        ms = self._first_multiscale
        if ms.channel_names:
            return ms.channel_names
        first = self.field_keys()[0]
        n = self.image(first.well, first.field).sizes["c"]
        return [f"c{i}" for i in range(n)]

    @property
    def n_levels(self) -> int:
        """Number of multiscale levels of the fields' images."""
        return len(self._first_multiscale.paths)

    @property
    def pixel_size(self) -> dict[str, float]:
        """Physical pixel size (y, x; and z) at full resolution, in the plate's units."""
        scale = self._first_multiscale.scales[0]
        return {a: float(scale[a]) for a in ("z", "y", "x") if a in scale}

    def image_array(self, well: str, field: int = 0, level: int = 0) -> tuple[zarr.Array, str]:
        """The Zarr array of one field's image at ``level`` and its path within the plate."""
        opened = self.open_field(well, field).level(None, level)
        return opened.array, opened.path

    def image(self, well: str, field: int = 0, level: int = 0) -> xr.DataArray:
        """Lazy image of one field, dims (c, z, y, x), channel names on ``c`` (see ``OpenField.image``)."""
        return self.open_field(well, field).image(level)

    def read_pixels(self, data: xr.DataArray) -> np.ndarray:
        """The values of a lazy image or label image of this plate (or of a reduction keeping its attrs).

        Computed in this thread: inside a Dask task the default scheduler would
        send the read back through the cluster. A chunk that cannot be read or
        decoded becomes one ``PlateError`` naming the array and the chunk key,
        which the codec's own error does not.
        """
        try:
            return data.compute(scheduler="synchronous").values
        except Exception as err:
            path = data.attrs.get("array")
            found = undecodable_chunk(self.root[path]) if path else None
            if found is None:
                raise
            key, cause = found
            raise PlateError(f"plate {self.name} well {data.attrs['well']} field {data.attrs['field']}: chunk {key} "
                             f"of array {path} cannot be read or decoded "
                             f"({type(cause).__name__}: {cause})") from err

    def label_names(self, well: str, field: int = 0) -> list[str]:
        """Names of the label images stored with a field (empty when none)."""
        return self.open_field(well, field).label_names

    def labels(self, well: str, field: int = 0, name: str = "nuclei", level: int = 0) -> xr.DataArray:
        """Lazy label image of one field, dims (z, y, x)."""
        return self.open_field(well, field).labels(name, level)


@dataclass(frozen=True)
class LevelArray:
    """One multiscale level of a field's image or label image: its array, path within the plate and metadata."""

    array: zarr.Array
    path: str
    multiscale: Multiscale
    where: str  # the image group's URL, for messages


class OpenField:
    """One field's image group, opened once; its image, label images and their absent chunks are read from it.

    Each group and array of the field is parsed once per ``OpenField``, so a
    caller that reads a field's pixels and then counts the chunks they lack
    reads no metadata twice. Construct with ``Plate.open_field``.
    """

    def __init__(self, plate: Plate, well: str, field: int, group: zarr.Group, path: str) -> None:
        self.plate = plate
        self.well = well
        self.field = field
        self.group = group
        self.path = path
        self._levels: dict[tuple[str | None, int], LevelArray] = {}

    @cached_property
    def _labels_group(self) -> zarr.Group | None:
        """The field's ``labels`` group, or None when it has none."""
        try:
            return self.group["labels"]
        except KeyError:
            return None

    @cached_property
    def label_names(self) -> list[str]:
        """Names of the label images stored with the field (empty when none)."""
        if self._labels_group is None:
            return []
        return read_label_names(self._labels_group.attrs, f"{self.plate.url}/{self.path}/labels")

    def multiscale(self, label: str | None = None) -> Multiscale:
        """The multiscale metadata of the field's image, or of its label image ``label``."""
        group, path = self._image_group(label)
        return _read_multiscale(group, f"{self.plate.url}/{path}")

    def _image_group(self, label: str | None) -> tuple[zarr.Group, str]:
        """The group of the field's image (``label`` None) or of its label image ``label``, and its path."""
        if label is None:
            return self.group, self.path
        if label not in self.label_names:
            raise PlateError(f"{self.plate.url}/{self.path}: no label image {label!r} "
                             f"(has {self.label_names or 'none'})")
        return self._labels_group[label], f"{self.path}/labels/{label}"

    def level(self, label: str | None, level: int = 0) -> LevelArray:
        """One level of the field's image (``label`` None) or of its label image ``label``, opened once."""
        key = (label, level)
        if key not in self._levels:
            group, path = self._image_group(label)
            where = f"{self.plate.url}/{path}"
            ms = _read_multiscale(group, where)
            array, array_path = _level_array(group, path, ms, level, self.plate.url)
            self._levels[key] = LevelArray(array, array_path, ms, where)
        return self._levels[key]

    def image(self, level: int = 0) -> xr.DataArray:
        """Lazy image of the field, dims (c, z, y, x), channel names on ``c``.

        The ``array`` attribute is the image's path within the plate (``Plate.read_pixels`` names it).
        """
        opened = self.level(None, level)
        ms = opened.multiscale
        data = _to_czyx(da.from_zarr(opened.array), ms.axes, opened.where)
        names = ms.channel_names or [f"c{i}" for i in range(data.shape[0])]
        if len(names) != data.shape[0]:
            raise PlateError(f"{opened.where}: {len(names)} channel names for {data.shape[0]} channels")
        return xr.DataArray(
            data,
            dims=SPATIAL,
            coords={"c": names},
            name=f"{self.plate.name}/{self.well}/{self.field}",
            attrs={"plate": self.plate.name, "well": self.well, "field": self.field, "level": level,
                   "array": opened.path,
                   "pixel_size": {a: ms.scales[level].get(a, 1.0) for a in ("z", "y", "x")}},
        )

    def labels(self, name: str = "nuclei", level: int = 0) -> xr.DataArray:
        """Lazy label image ``name`` of the field, dims (z, y, x)."""
        opened = self.level(name, level)
        data = _to_czyx(da.from_zarr(opened.array), opened.multiscale.axes, opened.where)[0]
        return xr.DataArray(data, dims=("z", "y", "x"), name=name,
                            attrs={"plate": self.plate.name, "well": self.well, "field": self.field,
                                   "array": opened.path})

    def arrays(self, labels: Sequence[str] = (), level: int = 0) -> dict[str, zarr.Array]:
        """The field's image array and those of its label images ``labels`` at ``level``, by path within the plate."""
        opened = [self.level(None, level), *(self.level(name, level) for name in labels)]
        return {o.path: o.array for o in opened}

    def missing_chunks(self, labels: Sequence[str] = (), level: int = 0) -> int:
        """How many chunks of the field's image and of its label images ``labels`` are absent from the store.

        See the module function ``missing_chunks``; the label images a
        field's cells were found with count, because an absent label chunk
        reads as background and loses its cells as silently.
        """
        return sum(missing_chunks(array) for array in self.arrays(labels, level).values())


def _stored_grid(array: zarr.Array) -> tuple[tuple[int, ...], int]:
    """The grid of ``array``'s stored objects (shards, else chunks) and the chunks each holds."""
    step = array.shards or array.chunks
    grid = tuple(math.ceil(n / s) for n, s in zip(array.shape, step, strict=True))
    return grid, math.prod(s // c for s, c in zip(step, array.chunks, strict=True))


def missing_chunks(array: zarr.Array) -> int:
    """How many chunks of ``array`` (shards, when sharded) are absent from its store.

    zarr reads an absent chunk as the fill value, so a deleted chunk file
    would otherwise pass as dark pixels. A writer may also leave out a chunk
    equal to the fill value; such an array is counted too, since a camera
    image is never exactly fill-valued over a whole chunk and a lost chunk is
    the likelier cause. The count is zarr's ``nchunks - nchunks_initialized``;
    for a sharded array, whose ``nchunks_initialized`` counts every chunk slot
    of a stored shard, it is the number of shards absent.
    """
    if array.shards is None:
        return array.nchunks - array.nchunks_initialized
    grid, per_shard = _stored_grid(array)
    return math.prod(grid) - array.nchunks_initialized // per_shard


def undecodable_chunk(array: zarr.Array) -> tuple[str, Exception] | None:
    """The key of the first stored chunk (shard, when sharded) of ``array`` that cannot be read, with its error.

    None when every one reads; the caller then keeps its own error.
    """
    step = array.shards or array.chunks
    grid, _ = _stored_grid(array)
    for coords in itertools.product(*map(range, grid)):
        try:
            array[tuple(slice(i * s, (i + 1) * s) for i, s in zip(coords, step, strict=True))]
        except Exception as err:  # whatever the codec or store raises, it is reported with the chunk's key
            return array.metadata.encode_chunk_key(coords), err
    return None


def _open_root(url: str) -> zarr.Group:
    """The plate's root group, read through zarr's stores (fsspec for URLs such as ``s3://``).

    Object-store clients raise many kinds of errors (connection, permission,
    missing bucket); each becomes one ``PlateError`` naming the URL.
    """
    try:
        return zarr.open_group(url, mode="r")
    except json.JSONDecodeError as err:
        raise PlateError(_broken_metadata(url, "", err)) from None
    except (zarr.errors.GroupNotFoundError, FileNotFoundError, ValueError, KeyError) as err:
        raise PlateError(f"{url}: not a Zarr group, so not an OME-Zarr plate ({err})") from err
    except Exception as err:
        if "://" not in url:
            raise
        raise PlateError(f"{url}: the store cannot be read ({type(err).__name__}: {err})") from err


def _broken_metadata(url: str, path: str, err: json.JSONDecodeError) -> str:
    """What is wrong with a group whose metadata is not JSON, naming its file (Zarr v3 ``zarr.json``, v2 ``.z*``)."""
    folder = url.rstrip("/") + (f"/{path.strip('/')}" if path else "")
    names = ["zarr.json"] if "://" in url or (Path(folder) / "zarr.json").exists() else [".zgroup", ".zattrs"]
    return f"{' or '.join(f'{folder}/{n}' for n in names)} is not valid JSON ({err})"


def open_plate(path_or_url: str | Path, layout: pd.DataFrame | str | Path | None = None,
               name: str | None = None) -> Plate:
    """Open an OME-Zarr HCS plate (NGFF 0.4 or 0.5) from a path or URL.

    ``layout`` is a DataFrame or CSV path; when omitted, the layout stored in
    the plate's attributes (by ``screenxai convert``/``simulate``) is used.
    ``name`` overrides the plate name (default: the plate's own name, else
    the folder name).
    """
    url = str(path_or_url)
    if "://" not in url and not Path(url).exists():
        raise PlateError(f"{url}: no such file or folder")
    if credentials_in_url(url):
        raise PlateError(f"{url_without_credentials(url)}: credentials in a plate URL would"
                         " be written to the run's manifest and logs; give them through the environment or a profile")
    root = _open_root(url)
    read = read_plate(root.attrs, url)
    if read is None:
        raise PlateError(f"{url}: a Zarr group without HCS 'plate' metadata; not an OME-Zarr plate")
    plate_meta, version = read
    rows = [r.name for r in plate_meta.rows]
    columns = [c.name for c in plate_meta.columns]
    wells: dict[str, Well] = {}
    for entry in plate_meta.wells:
        row, column = rows[entry.rowIndex], columns[entry.columnIndex]
        key = well_id(row, column)
        try:
            well_group = root[entry.path]
        except KeyError as err:
            raise PlateError(f"{url}: well {key} is listed in the plate but group {entry.path} is missing") from err
        except json.JSONDecodeError as err:
            raise PlateError(f"well {key}: {_broken_metadata(url, entry.path, err)}") from None
        well_meta = read_well(well_group.attrs, f"{url}/{entry.path}")
        if well_meta is None or not well_meta.images:
            raise PlateError(f"{url}: well {key} ({entry.path}) has no 'well' metadata listing its fields")
        wells[key] = Well(key, row, column, entry.path, [image.path for image in well_meta.images])
    wells = dict(sorted(wells.items(), key=lambda kv: well_sort_key(kv[0])))
    extra = dict(root.attrs.get(SCREENXAI_ATTRS, {}))
    plate_name = name or extra.get("plate_name") or plate_meta.name or Path(url.rstrip("/")).stem
    if layout is None and extra.get("layout"):
        table = layout_from_records(extra["layout"], source=f"layout stored in {url}")
    elif isinstance(layout, (str, Path)):
        table = read_layout(layout)
    else:
        table = layout
    if table is not None:
        table = validate_layout(table, source=f"layout for plate {plate_name}", plate_wells=wells)
    return Plate(url, root, plate_name, version, wells, rows, columns, table)
