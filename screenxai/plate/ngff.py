"""NGFF metadata of a Zarr group, validated by the ome-zarr-models pydantic models.

A group's attributes hold NGFF 0.4 metadata at the top level (Zarr v2) or
NGFF 0.5 metadata nested under ``ome`` with a ``version`` (Zarr v3); the
0.4 or 0.5 models validate them accordingly. Metadata that does not validate
becomes one ``PlateError`` naming the group and the field at fault.

The reader is more tolerant than the models in a few narrow ways, each
normalised before validation so that the models still check the rest:

* axes given as plain names (the NGFF 0.3 layout) become axis objects, and
  an axis without a type gets the type its name implies (t: time,
  c: channel, x/y/z: space);
* a top-level multiscale or well stating a version older than 0.4 (0.1 to
  0.3), which the 0.4 models refuse, has that version set aside;
* a dataset without ``coordinateTransformations`` gets a scale of 1.0 on
  every axis;
* a 0.5 group under ``ome`` without a ``version`` (ome-zarr-py 0.18 writes
  ``labels`` groups so) is read as 0.5;
* a 0.5 plate without its own ``version`` takes the group's.

The models leave a well's ``rowIndex`` and ``columnIndex`` unchecked;
``read_plate`` checks that they name one of the plate's rows and columns.

``omero`` is transitional metadata the reader takes only channel labels
from: it is validated as the models' omero block with each channel's colour
and window (rendering settings) optional, so a channel may carry a label only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from ome_zarr_models.common.omero import Channel, Omero, Window
from ome_zarr_models.common.plate import PlateBase
from ome_zarr_models.common.validation import RGBHexConstraint
from ome_zarr_models.common.well_types import WellMeta
from ome_zarr_models.v04.hcs import HCSAttrs as HCSAttrsV04
from ome_zarr_models.v04.image import ImageAttrs as ImageAttrsV04
from ome_zarr_models.v04.labels import LabelsAttrs as LabelsAttrsV04
from ome_zarr_models.v04.multiscales import Multiscale as MultiscaleV04
from ome_zarr_models.v04.well import WellAttrs as WellAttrsV04
from ome_zarr_models.v05.hcs import HCSAttrs as HCSAttrsV05
from ome_zarr_models.v05.image import ImageAttrs as ImageAttrsV05
from ome_zarr_models.v05.labels import LabelsAttrs as LabelsAttrsV05
from ome_zarr_models.v05.multiscales import Multiscale as MultiscaleV05
from ome_zarr_models.v05.well import WellAttrs as WellAttrsV05
from pydantic import BaseModel, ValidationError

from screenxai.errors import PlateError

AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
OLDER_VERSIONS = {"0.1", "0.2", "0.3"}  # layouts the 0.4 models read once normalised

Multiscale = MultiscaleV04 | MultiscaleV05


class LabelledChannel(Channel):
    """An omero channel as the reader uses it: a label, with colour and window optional."""

    color: Annotated[str, RGBHexConstraint] | None = None
    window: Window | None = None
    label: str | None = None


class ChannelLabels(Omero):
    """The omero block with ``LabelledChannel`` channels (none listed is as good as no omero)."""

    channels: list[LabelledChannel] = []


def _ngff_attributes(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...], str | None]:
    """A group's NGFF attributes, their place (``("ome",)`` when nested, 0.5) and the version they state.

    Nested attributes without a version are given 0.5 to validate.
    """
    if "ome" not in attrs:
        return dict(attrs), (), None
    ome = dict(attrs["ome"])
    stated = ome.get("version")
    return {**ome, "version": stated or "0.5"}, ("ome",), stated


def _validate(model: type[BaseModel], attrs: dict[str, Any], place: tuple[str, ...], where: str) -> Any:
    """``attrs`` validated by ``model``; a validation error becomes a ``PlateError`` naming the first bad field."""
    try:
        return model.model_validate(attrs)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in place + first["loc"])
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        message = " ".join(first["msg"].split())
        raise PlateError(f"{where}: invalid NGFF metadata at {field}: {message}{more}") from None


def read_plate(attrs: Mapping[str, Any], where: str) -> tuple[PlateBase, str] | None:
    """The validated plate metadata of a group and its NGFF version; None when the group has none.

    The version is the group's, else the plate's own, else 0.4. Every
    well's row and column index must name one of the plate's rows and
    columns, which the models leave unchecked.
    """
    ome, place, stated = _ngff_attributes(attrs)
    if not ome.get("plate"):
        return None
    meta = ome["plate"]
    own = meta.get("version") if isinstance(meta, dict) else None
    if place and isinstance(meta, dict):
        ome["plate"] = {"version": ome["version"], **meta}
    plate = _validate(HCSAttrsV05 if place else HCSAttrsV04, ome, place, where).plate
    for i, well in enumerate(plate.wells):
        for index, names, kind in ((well.rowIndex, plate.rows, "row"), (well.columnIndex, plate.columns, "column")):
            if not 0 <= index < len(names):
                field = ".".join((*place, "plate", "wells", str(i), f"{kind}Index"))
                raise PlateError(f"{where}: invalid NGFF metadata at {field}: {index} is not the index of one of "
                                 f"the plate's {len(names)} {kind}s")
    return plate, stated or own or "0.4"


def read_well(attrs: Mapping[str, Any], where: str) -> WellMeta | None:
    """The validated well metadata of a group (its images' paths, in order); None when the group has none."""
    ome, place, _ = _ngff_attributes(attrs)
    if not ome.get("well"):
        return None
    if not place:
        ome["well"] = _without_older_version(ome["well"])
    return _validate(WellAttrsV05 if place else WellAttrsV04, ome, place, where).well


def read_multiscale(attrs: Mapping[str, Any], where: str) -> tuple[Multiscale, list[str | None] | None]:
    """The validated first multiscale of an image group and its omero channel labels (None without omero)."""
    ome, place, _ = _ngff_attributes(attrs)
    if not ome.get("multiscales"):
        raise PlateError(f"{where}: no 'multiscales' metadata; not an NGFF image")
    omero = ome.pop("omero", None)
    if isinstance(ome["multiscales"], list):
        ome["multiscales"] = [_normalised_multiscale(m, ngff04=not place) for m in ome["multiscales"]]
    multiscale = _validate(ImageAttrsV05 if place else ImageAttrsV04, ome, place, where).multiscales[0]
    if omero is None:
        return multiscale, None
    channels = _validate(ChannelLabels, omero, (*place, "omero"), where).channels
    return multiscale, [channel.label for channel in channels] or None


def read_label_names(attrs: Mapping[str, Any], where: str) -> list[str]:
    """The label images a ``labels`` group lists (empty when it lists none)."""
    ome, place, _ = _ngff_attributes(attrs)
    if "labels" not in ome:
        return []
    return list(_validate(LabelsAttrsV05 if place else LabelsAttrsV04, ome, place, where).labels)


def _without_older_version(meta: Any) -> Any:
    """``meta`` without a ``version`` older than 0.4, which the 0.4 models refuse."""
    if not isinstance(meta, dict) or meta.get("version") not in OLDER_VERSIONS:
        return meta
    return {k: v for k, v in meta.items() if k != "version"}


def _typed_axis(axis: Any) -> Any:
    """An axis object for ``axis``: a plain name becomes one, and a missing type is the one its name implies."""
    axis = {"name": axis} if isinstance(axis, str) else axis
    if isinstance(axis, dict) and axis.get("type") is None and axis.get("name") in AXIS_TYPES:
        return {**axis, "type": AXIS_TYPES[axis["name"]]}
    return axis


def _normalised_multiscale(meta: Any, ngff04: bool) -> Any:
    """A multiscale with typed axis objects and a scale on every dataset; as 0.4 metadata, without an older version."""
    if ngff04:
        meta = _without_older_version(meta)
    if not isinstance(meta, dict) or not isinstance(meta.get("axes"), list):
        return meta
    meta = {**meta, "axes": [_typed_axis(a) for a in meta["axes"]]}
    if isinstance(meta.get("datasets"), list):
        ones = {"type": "scale", "scale": [1.0] * len(meta["axes"])}
        meta["datasets"] = [{**d, "coordinateTransformations": [ones]}
                            if isinstance(d, dict) and "coordinateTransformations" not in d else d
                            for d in meta["datasets"]]
    return meta
