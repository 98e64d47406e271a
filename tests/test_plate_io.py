"""Plate writing and reading: NGFF 0.4 and 0.5, validation, laziness, layouts."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image, write_labels
from ome_zarr_models import open_ome_zarr

from screenxai.errors import LayoutError, PlateError
from screenxai.plate import FieldImage, open_plate, write_plate

CHANNELS = ["DNA", "reporter"]


def _fields(n_fields: int = 2, size: int = 48, seed: int = 0) -> list[FieldImage]:
    rng = np.random.default_rng(seed)
    out = []
    for well in ("A01", "A02", "B03"):
        for field in range(n_fields):
            labels = np.zeros((size, size), np.int32)
            labels[5:15, 5:15] = 1
            labels[20:30, 22:34] = 2
            image = rng.integers(0, 4000, (2, size, size), dtype=np.uint16)
            out.append(FieldImage(well, field, image, {"nuclei": labels}))
    return out


LAYOUT = pd.DataFrame({"well": ["A01", "A02", "B03"], "control": ["negative", "dose", "positive"],
                       "dose": [0.0, 1.5, 3.0]})


@pytest.fixture(params=["0.5", "0.4"], scope="module")
def written(request, tmp_path_factory) -> tuple[Path, list[FieldImage], str]:
    fields = _fields()
    path = tmp_path_factory.mktemp(f"ngff{request.param}") / "plate.zarr"
    write_plate(path, fields, name="P7", channel_names=CHANNELS, layout=LAYOUT,
                ngff_version=request.param, pixel_size_um=0.65)
    return path, fields, request.param


def test_written_plate_validates_with_ome_zarr_models(written):
    path, _, version = written
    model = open_ome_zarr(zarr.open_group(str(path), mode="r"))
    assert type(model).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
    assert type(model).__name__ == "HCS"


def test_written_plate_opens_in_ome_zarr_reader(written):
    path, _, _ = written
    nodes = list(Reader(parse_url(str(path)))())
    specs = {type(s).__name__ for n in nodes for s in n.specs}
    assert "Plate" in specs
    assert nodes[0].metadata["channel_names"] == CHANNELS


def test_open_plate_reads_every_field_lazily_and_exactly(written):
    path, fields, version = written
    plate = open_plate(path)
    assert plate.name == "P7" and plate.ngff_version == version
    assert list(plate.wells) == ["A01", "A02", "B03"]
    assert plate.rows == ["A", "B"] and plate.channel_names == CHANNELS
    assert plate.pixel_size["x"] == pytest.approx(0.65) and plate.n_levels == 2
    assert len(plate.field_keys()) == 6
    for item in fields:
        image = plate.image(item.well, item.field)
        assert image.dims == ("c", "z", "y", "x")
        assert isinstance(image.data, da.Array)
        assert list(image.coords["c"].values) == CHANNELS
        np.testing.assert_array_equal(image.values[:, 0], item.image)
        np.testing.assert_array_equal(plate.labels(item.well, item.field).values[0], item.labels["nuclei"])
    assert plate.image("A01", 0, level=1).shape == (2, 1, 24, 24)


def test_layout_round_trips_through_plate_attributes(written):
    plate = open_plate(written[0])
    pd.testing.assert_frame_equal(plate.layout, LAYOUT)


def test_open_plate_uses_a_given_layout_over_the_stored_one(written, tmp_path):
    csv = tmp_path / "layout.csv"
    pd.DataFrame({"well": ["b3"], "compound": ["x"]}).to_csv(csv, index=False)
    plate = open_plate(written[0], layout=csv)
    assert plate.layout.to_dict("list") == {"well": ["B03"], "compound": ["x"]}


def test_nothing_is_read_before_compute(written, monkeypatch):
    path, _, _ = written
    plate = open_plate(path)
    reads = []
    original = zarr.Array.__getitem__

    def counting_getitem(self, key):
        if all(not isinstance(k, slice) or k.start != k.stop for k in key):  # dask probes dtype with empty slices
            reads.append(key)
        return original(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", counting_getitem)
    image = plate.image("A02", 1)
    assert reads == []
    image.values
    assert reads


def test_upstream_still_omits_version_on_ngff05_labels_groups(tmp_path):
    """The writer patches this one attribute; when this test fails, upstream fixed it: drop the patch."""
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=3)
    write_image(np.zeros((1, 16, 16), np.uint8), group, axes="cyx", fmt=FormatV05(), scale_factors=[])
    write_labels(np.zeros((16, 16), np.int32), group, name="nuclei", axes="yx", fmt=FormatV05(),
                 scaler=None, scale_factors=[])
    assert "version" not in group["labels"].attrs["ome"]


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(PlateError, match="no such file"):
        open_plate(tmp_path / "nothere.zarr")


def test_folder_that_is_not_zarr_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PlateError, match="not a Zarr group"):
        open_plate(tmp_path)


def test_zarr_image_that_is_not_a_plate_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=3)
    write_image(np.zeros((1, 16, 16), np.uint8), group, axes="cyx", fmt=FormatV05(), scale_factors=[])
    with pytest.raises(PlateError, match="without HCS 'plate' metadata"):
        open_plate(tmp_path / "img.zarr")


def test_missing_well_group_is_named(tmp_path):
    path = write_plate(tmp_path / "p.zarr", _fields(1), name="P", channel_names=CHANNELS)
    import shutil

    shutil.rmtree(path / "B" / "03")
    with pytest.raises(PlateError, match="well B03 is listed in the plate but group B/03 is missing"):
        open_plate(path)


def test_missing_field_and_well_are_named(written):
    plate = open_plate(written[0])
    with pytest.raises(PlateError, match="well A01: no field 5"):
        plate.image("A01", 5)
    with pytest.raises(PlateError, match="no well H12"):
        plate.image("H12")
    with pytest.raises(PlateError, match="no label image 'cells'"):
        plate.labels("A01", 0, name="cells")


def test_missing_field_group_is_named(tmp_path):
    path = write_plate(tmp_path / "p.zarr", _fields(2), name="P", channel_names=CHANNELS)
    import shutil

    shutil.rmtree(path / "A" / "02" / "1")
    plate = open_plate(path)
    with pytest.raises(PlateError, match="well A02 field 1: group A/02/1 is missing"):
        plate.image("A02", 1)


def test_layout_with_unknown_wells_is_refused(written):
    layout = pd.DataFrame({"well": ["A01", "H07", "G02"], "control": ["negative"] * 3})
    with pytest.raises(LayoutError, match=r"\['G02', 'H07'\] are not on the plate"):
        open_plate(written[0], layout=layout)


def test_writer_refuses_inconsistent_fields_and_leaves_nothing(tmp_path):
    fields = _fields(1)
    fields[1] = FieldImage("A02", 0, np.zeros((2, 40, 40), np.uint16))
    with pytest.raises(PlateError, match="well A02 field 0: image shape"):
        write_plate(tmp_path / "p.zarr", fields, name="P", channel_names=CHANNELS)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_existing_plate(tmp_path):
    path = write_plate(tmp_path / "p.zarr", _fields(1), name="P", channel_names=CHANNELS)
    bad = _fields(1) + [FieldImage("C01", 0, np.zeros((3, 48, 48), np.uint16))]
    with pytest.raises(PlateError, match="well C01 field 0: image has 3 channels"):
        write_plate(path, bad, name="P", channel_names=CHANNELS, overwrite=True)
    assert open_plate(path).name == "P" and sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


def test_writer_refuses_to_overwrite_by_default(tmp_path):
    path = write_plate(tmp_path / "p.zarr", _fields(1), name="P", channel_names=CHANNELS)
    with pytest.raises(PlateError, match="already exists"):
        write_plate(path, _fields(1), name="P", channel_names=CHANNELS)


def test_open_plate_reads_over_http(written):
    """A plate served over HTTP (here on loopback) opens by URL like a local one."""
    import functools
    import http.server
    import threading

    path, fields, _ = written
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        plate = open_plate(f"http://127.0.0.1:{server.server_port}/{path.name}")
        assert plate.name == "P7" and len(plate.field_keys()) == 6
        np.testing.assert_array_equal(plate.image("B03", 1).values[:, 0], fields[-1].image)
    finally:
        server.shutdown()
