"""NGFF metadata read through the ome-zarr-models models: the spec's examples, the tolerated deviations, the errors.

Each case writes the metadata as attributes of a real Zarr group on disk
(Zarr v2 for NGFF 0.4, v3 for 0.5) and reads it back through
``screenxai.plate.ngff`` or ``open_plate``. The examples are the NGFF
specification's own (tests/data/ngff/README.md names their sources).
"""

from __future__ import annotations

import json
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytest
import zarr

from screenxai.errors import PlateError
from screenxai.plate import open_plate
from screenxai.plate.ngff import read_label_names, read_multiscale, read_plate, read_well

DATA = Path(__file__).parent / "data" / "ngff"
VERSIONS = ["0.4", "0.5"]


def _example(version: str, name: str) -> dict[str, Any]:
    """The group attributes of a spec example (a 0.5 example is a whole ``zarr.json``)."""
    document = json.loads((DATA / version / f"{name}.json").read_text())
    return document.get("attributes", document)


def _as_version(version: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """Top-level 0.4 attributes as ``version`` lays them out (0.5 nests them under ``ome``)."""
    return attrs if version == "0.4" else {"ome": {"version": "0.5", **attrs}}


def _group(path: Path, version: str, attrs: dict[str, Any]) -> zarr.Group:
    """A Zarr group on disk holding ``attrs``, reopened read-only."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    group.attrs.update(attrs)
    return zarr.open_group(str(path), mode="r")


def _plate_of_one_field(path: Path, version: str, image_attrs: dict[str, Any], plate: dict[str, Any] | None = None,
                        shape: tuple[int, ...] = (2, 1, 4, 4)) -> Path:
    """A plate with well A/1 holding field 0 whose image has ``image_attrs`` and an array per dataset."""
    plate = plate or {"rows": [{"name": "A"}], "columns": [{"name": "1"}],
                      "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}]}
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    root.attrs.update(_as_version(version, {"plate": plate}))
    root.create_group("A/1").attrs.update(_as_version(version, {"well": {"images": [{"path": "0"}]}}))
    image = root.create_group("A/1/0")
    image.attrs.update(image_attrs)
    ome = image_attrs.get("ome", image_attrs)
    for dataset in ome["multiscales"][0]["datasets"]:
        image.create_array(dataset["path"], shape=shape, dtype="uint8", fill_value=0)[...] = 1
    return path


@pytest.mark.parametrize("version", VERSIONS)
def test_spec_plate_example_reads_as_written(tmp_path, version):
    group = _group(tmp_path / "plate.zarr", version, _example(version, "plate_6wells"))
    plate, ngff_version = read_plate(group.attrs, str(tmp_path / "plate.zarr"))
    assert ngff_version == version
    assert plate.name == "test" and plate.field_count == 4
    assert [r.name for r in plate.rows] == ["A", "B"]
    assert [c.name for c in plate.columns] == ["1", "2", "3"]
    assert [(w.path, w.rowIndex, w.columnIndex) for w in plate.wells] == [
        ("A/1", 0, 0), ("A/2", 0, 1), ("A/3", 0, 2), ("B/1", 1, 0), ("B/2", 1, 1), ("B/3", 1, 2)]
    assert [(a.id, a.maximumfieldcount, a.name, a.starttime) for a in plate.acquisitions] == [
        (1, 2, "Meas_01(2012-07-31_10-41-12)", 1343731272000), (2, 2, "Meas_02(201207-31_11-56-41)", 1343735801000)]


@pytest.mark.parametrize("version", VERSIONS)
def test_spec_well_example_reads_as_written(tmp_path, version):
    group = _group(tmp_path / "well.zarr", version, _example(version, "well_4fields"))
    well = read_well(group.attrs, str(tmp_path / "well.zarr"))
    assert [(image.path, image.acquisition) for image in well.images] == [("0", 1), ("1", 1), ("2", 2), ("3", 2)]


@pytest.mark.parametrize("version", VERSIONS)
def test_spec_multiscales_example_reads_as_written(tmp_path, version):
    group = _group(tmp_path / "image.zarr", version, _example(version, "multiscales_example"))
    multiscale, labels = read_multiscale(group.attrs, str(tmp_path / "image.zarr"))
    assert [(a.name, a.type, a.unit) for a in multiscale.axes] == [
        ("t", "time", "millisecond"), ("c", "channel", None), ("z", "space", "micrometer"),
        ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    paths = ["0", "1", "2"] if version == "0.4" else ["s0", "s1", "s2"]
    assert [d.path for d in multiscale.datasets] == paths
    assert [d.coordinateTransformations[0].scale for d in multiscale.datasets] == [
        [1.0, 1.0, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0, 2.0]]
    assert multiscale.coordinateTransformations[0].scale == [0.1, 1.0, 1.0, 1.0, 1.0]
    assert multiscale.name == "example" and multiscale.type == "gaussian"
    assert labels is None


@pytest.mark.parametrize("version", VERSIONS)
def test_spec_image_with_translation_and_omero_reads_as_written(tmp_path, version):
    attrs = _example("0.4", "image_omero")
    group = _group(tmp_path / "image.zarr", version, _as_version(version, attrs))
    multiscale, labels = read_multiscale(group.attrs, str(tmp_path / "image.zarr"))
    assert [a.name for a in multiscale.axes] == ["t", "c", "z", "y", "x"]
    level0, level1 = multiscale.datasets
    assert [t.type for t in level0.coordinateTransformations] == ["scale", "translation"]
    assert level0.coordinateTransformations[0].scale == [1.0, 1.0, 0.5, 0.13, 0.13]
    assert level0.coordinateTransformations[1].translation == [0.0, 9.0, 0.5, 25.74, 21.58]
    assert level1.coordinateTransformations[0].scale == [1.0, 1.0, 1.0, 0.26, 0.26]
    assert labels == ["FITC", "RD-TR-PE"]


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_of_spec_examples_opens_with_their_wells_fields_and_channels(tmp_path, version):
    path = tmp_path / "plate.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    root.attrs.update(_example(version, "plate_6wells"))
    for well in ("A/1", "A/2", "A/3", "B/1", "B/2", "B/3"):
        root.create_group(well).attrs.update(_example(version, "well_4fields"))
    image = root.create_group("A/1/0")
    image.attrs.update(_as_version(version, _example("0.4", "image_omero")))
    image.create_array("0", shape=(1, 2, 1, 8, 8), dtype="uint16", fill_value=0)[...] = 7
    image.create_array("1", shape=(1, 2, 1, 4, 4), dtype="uint16", fill_value=0)

    plate = open_plate(path)
    assert plate.name == "test" and plate.ngff_version == version
    assert plate.rows == ["A", "B"] and plate.columns == ["1", "2", "3"]
    assert list(plate.wells) == ["A01", "A02", "A03", "B01", "B02", "B03"]
    assert [plate.wells[w].path for w in plate.wells] == ["A/1", "A/2", "A/3", "B/1", "B/2", "B/3"]
    assert all(plate.wells[w].field_paths == ["0", "1", "2", "3"] for w in plate.wells)
    assert plate.channel_names == ["FITC", "RD-TR-PE"] and plate.n_levels == 2
    assert plate.pixel_size == {"z": 0.5, "y": 0.13, "x": 0.13}
    assert plate.open_field("A01", 0).multiscale().scales[1] == {"t": 1.0, "c": 1.0, "z": 1.0, "y": 0.26, "x": 0.26}
    assert plate.image("A01", 0).shape == (2, 1, 8, 8) and int(plate.image("A01", 0).values.max()) == 7


AXES = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
DATASETS = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]}]


def _field_multiscale(tmp_path: Path, version: str, multiscale: dict[str, Any], **image: Any):
    """The reader's ``Multiscale`` of a one-field plate whose image has ``multiscale`` (and ``image``'s keys)."""
    attrs = _as_version(version, {"multiscales": [multiscale], **image})
    plate = open_plate(_plate_of_one_field(tmp_path / "plate.zarr", version, attrs, shape=(2, 4, 4)))
    return plate, plate.open_field("A01", 0).multiscale()


@pytest.mark.parametrize("version", VERSIONS)
def test_axes_given_as_plain_names_are_read(tmp_path, version):
    _, ms = _field_multiscale(tmp_path, version, {"axes": ["c", "y", "x"], "datasets": DATASETS})
    assert ms.axes == ["c", "y", "x"] and ms.scales == [{"c": 1.0, "y": 0.5, "x": 0.25}]


@pytest.mark.parametrize("version", VERSIONS)
def test_axes_without_a_type_are_read(tmp_path, version):
    _, ms = _field_multiscale(tmp_path, version, {"axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                                                  "datasets": DATASETS})
    assert ms.axes == ["c", "y", "x"] and ms.scales == [{"c": 1.0, "y": 0.5, "x": 0.25}]


@pytest.mark.parametrize("version", VERSIONS)
def test_datasets_without_transformations_have_scale_one(tmp_path, version):
    _, ms = _field_multiscale(tmp_path, version, {"axes": AXES, "datasets": [{"path": "0"}, {"path": "1"}]})
    assert ms.paths == ["0", "1"] and ms.scales == [{"c": 1.0, "y": 1.0, "x": 1.0}] * 2


def test_ngff_03_multiscale_with_plain_axes_and_no_transformations_is_read(tmp_path):
    _, ms = _field_multiscale(tmp_path, "0.4", {"version": "0.3", "axes": ["c", "y", "x"], "datasets": [{"path": "0"}]})
    assert ms.axes == ["c", "y", "x"] and ms.scales == [{"c": 1.0, "y": 1.0, "x": 1.0}]


@pytest.mark.parametrize("version", VERSIONS)
def test_omero_channels_without_labels_are_named_by_index(tmp_path, version):
    window = {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}
    omero = {"channels": [{"color": "FF0000", "window": window}, {"label": "DNA"}]}
    plate, ms = _field_multiscale(tmp_path, version, {"axes": AXES, "datasets": DATASETS}, omero=omero)
    assert ms.channel_names == ["c0", "DNA"] and plate.channel_names == ["c0", "DNA"]


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_omero_names_channels_by_index(tmp_path, version):
    plate, ms = _field_multiscale(tmp_path, version, {"axes": AXES, "datasets": DATASETS})
    assert ms.channel_names is None and plate.channel_names == ["c0", "c1"]


def test_plate_without_version_or_name_is_04_named_by_its_folder(tmp_path):
    plate_meta = {"rows": [{"name": "A"}], "columns": [{"name": "1"}],
                  "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}]}
    attrs = {"multiscales": [{"axes": AXES, "datasets": DATASETS}]}
    plate = open_plate(_plate_of_one_field(tmp_path / "screen7.zarr", "0.4", attrs, plate_meta, shape=(2, 4, 4)))
    assert plate.ngff_version == "0.4" and plate.name == "screen7" and list(plate.wells) == ["A01"]


def test_05_plate_without_its_own_version_takes_the_groups_without_warning(tmp_path):
    plate_meta = {"rows": [{"name": "A"}], "columns": [{"name": "1"}],
                  "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}]}
    group = _group(tmp_path / "plate.zarr", "0.5", {"ome": {"version": "0.5", "plate": plate_meta}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plate, version = read_plate(group.attrs, "plate.zarr")
    assert version == "0.5" and plate.version == "0.5" and plate.name is None


def test_05_labels_group_without_version_lists_its_labels(tmp_path):
    group = _group(tmp_path / "labels", "0.5", {"ome": {"labels": ["nuclei", "cells"]}})
    assert read_label_names(group.attrs, "labels") == ["nuclei", "cells"]


def test_03_well_version_is_set_aside(tmp_path):
    group = _group(tmp_path / "well", "0.4", {"well": {"version": "0.3", "images": [{"path": "0"}, {"path": "1"}]}})
    assert [image.path for image in read_well(group.attrs, "well").images] == ["0", "1"]


def _raised(call, *args) -> PlateError:
    """The ``PlateError`` ``call(*args)`` raises, checked to carry no pydantic traceback."""
    with pytest.raises(PlateError) as raised:
        call(*args)
    assert "ValidationError" not in "".join(traceback.format_exception(raised.value))
    return raised.value


@pytest.mark.parametrize("version", VERSIONS)
def test_well_row_index_past_the_rows_names_the_plate_and_field(tmp_path, version):
    attrs = _example(version, "plate_6wells")
    ome = attrs.get("ome", attrs)
    ome["plate"]["wells"][4]["rowIndex"] = 2
    path = tmp_path / "plate.zarr"
    group = _group(path, version, attrs)
    field = "plate.wells.4.rowIndex" if version == "0.4" else "ome.plate.wells.4.rowIndex"
    assert str(_raised(read_plate, group.attrs, str(path))) == (
        f"{path}: invalid NGFF metadata at {field}: 2 is not the index of one of the plate's 2 rows")
    assert str(_raised(open_plate, path)).startswith(f"{path}: invalid NGFF metadata at {field}: ")


@pytest.mark.parametrize("version", VERSIONS)
def test_multiscale_without_datasets_names_the_image_and_field(tmp_path, version):
    good = _as_version(version, {"multiscales": [{"axes": AXES, "datasets": DATASETS}]})
    plate = open_plate(_plate_of_one_field(tmp_path / "plate.zarr", version, good, shape=(2, 4, 4)))
    bad = _as_version(version, {"multiscales": [{"axes": AXES, "datasets": []}]})
    zarr.open_group(str(tmp_path / "plate.zarr" / "A" / "1" / "0"), mode="r+").attrs.update(bad)
    field = "multiscales.0.datasets" if version == "0.4" else "ome.multiscales.0.datasets"
    message = str(_raised(plate.image, "A01", 0))
    assert message.startswith(f"{tmp_path / 'plate.zarr'}/A/1/0: invalid NGFF metadata at {field}: ")
    assert "at least 1 item" in message


def test_field_path_that_is_not_alphanumeric_names_the_well_and_field(tmp_path):
    group = _group(tmp_path / "well", "0.4", {"well": {"images": [{"path": "0"}, {"path": "1/x"}]}})
    assert str(_raised(read_well, group.attrs, "plate.zarr/A/1")).startswith(
        "plate.zarr/A/1: invalid NGFF metadata at well.images.1.path: ")


def test_ngff_version_the_models_do_not_know_is_named(tmp_path):
    group = _group(tmp_path / "plate.zarr", "0.5", {"ome": {"version": "0.6", "plate": {
        "rows": [{"name": "A"}], "columns": [{"name": "1"}], "wells": []}}})
    assert str(_raised(read_plate, group.attrs, "plate.zarr")).startswith(
        "plate.zarr: invalid NGFF metadata at ome.version: ")


def test_scale_stored_at_a_path_is_refused_by_name(tmp_path):
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "path": "scale.bin"}]}]
    attrs = {"multiscales": [{"axes": AXES, "datasets": datasets}]}
    plate = open_plate(_plate_of_one_field(tmp_path / "plate.zarr", "0.4", attrs, shape=(2, 4, 4)))
    assert str(_raised(plate.image, "A01", 0)) == (
        f"{tmp_path / 'plate.zarr'}/A/1/0: the scale of multiscales.0.datasets.0 is stored at scale.bin, "
        "which is not read; give it in the metadata")


def test_omero_channel_label_of_the_wrong_type_names_the_field(tmp_path):
    attrs = {"multiscales": [{"axes": AXES, "datasets": DATASETS}], "omero": {"channels": [{"label": 3}]}}
    group = _group(tmp_path / "image", "0.4", attrs)
    assert str(_raised(read_multiscale, group.attrs, "img")).startswith(
        "img: invalid NGFF metadata at omero.channels.0.label: ")

