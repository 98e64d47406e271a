"""One field in, cells out: label choice, stable ids, features, normalisation and QC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from screenxai.cells import CellConfig, NormalisationStats, nuclear_channel_index, process_field
from screenxai.errors import PlateError
from screenxai.plate import FieldImage, open_plate, write_plate

SIZE = 96
CENTRES = [(20, 20), (20, 70), (70, 45), (90, 90)]      # the last touches the field's corner


def _field(well: str, field: int, with_labels: bool) -> FieldImage:
    """Disk nuclei (DNA 3000) with reporter 4000 inside and 1000 in a surrounding cytoplasm."""
    labels = np.zeros((SIZE, SIZE), np.int32)
    cytoplasm = np.zeros((SIZE, SIZE), bool)
    for i, centre in enumerate(CENTRES, start=1):
        cytoplasm[disk(centre, 16, shape=labels.shape)] = True
        labels[disk(centre, 8, shape=labels.shape)] = 10 * i
    noise = np.random.default_rng(field).normal(0, 20, (2, SIZE, SIZE))
    dna = np.where(labels > 0, 3000, 200)
    reporter = np.where(labels > 0, 4000, np.where(cytoplasm, 1000, 100))
    image = np.clip(np.stack([dna, reporter]) + noise, 0, 65535).astype(np.uint16)
    image[1, 0, 0] = 65535                                 # one saturated pixel
    return FieldImage(well, field, image, {"nuclei": labels} if with_labels else {})


@pytest.fixture(scope="module")
def plates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same two fields of well B03, written with and without nucleus labels."""
    root = tmp_path_factory.mktemp("field")
    layout = pd.DataFrame({"well": ["B03"], "control": ["negative"]})
    return {kind: write_plate(root / f"{kind}.zarr", [_field("B03", f, kind == "labelled") for f in range(2)],
                              name="P1", channel_names=["DNA", "reporter"], layout=layout)
            for kind in ("labelled", "bare")}


def test_plate_labels_are_used_with_stable_ids(plates):
    batch = process_field(open_plate(plates["labelled"]), "b3", 1, CellConfig(crop_size=24))
    table = batch.table
    assert batch.crops.shape == (4, 2, 24, 24) and batch.crops.dtype == np.float32
    assert table["label"].tolist() == [10, 20, 30, 40]
    assert table["cell_id"].tolist() == ["P1/B03/1/10", "P1/B03/1/20", "P1/B03/1/30", "P1/B03/1/40"]
    assert (table["plate"] == "P1").all() and (table["well"] == "B03").all() and (table["field"] == 1).all()
    assert (table["label_source"] == "plate").all()
    assert table["border"].tolist() == [False, False, False, True]
    assert table.columns[:5].tolist() == ["plate", "well", "field", "label", "cell_id"]
    assert {"centroid_y", "bbox_max_x", "area", "form_factor", "reporter_ratio", "DNA_texture"} <= set(table)
    assert table["reporter_ratio"].iloc[:3].to_numpy() == pytest.approx((4000 - 100) / (1000 - 100), rel=0.02)


def test_fields_without_labels_are_segmented(plates):
    batch = process_field(open_plate(plates["bare"]), "B03", 0, CellConfig(crop_size=24))
    assert (batch.table["label_source"] == "segmented").all()
    assert batch.table["label"].tolist() == [1, 2, 3, 4]
    assert batch.table["cell_id"].iloc[0] == "P1/B03/0/1"
    assert batch.table["area"].iloc[:3].to_numpy() == pytest.approx(np.pi * 8**2, rel=0.15)


def test_plate_labels_can_be_ignored(plates):
    config = CellConfig(crop_size=24, use_plate_labels=False)
    batch = process_field(open_plate(plates["labelled"]), "B03", 0, config)
    assert (batch.table["label_source"] == "segmented").all()


def test_crops_are_normalised_with_stats(plates):
    stats = NormalisationStats(("DNA", "reporter"), (200.0, 100.0), (3000.0, 4000.0))
    plate = open_plate(plates["labelled"])
    raw = process_field(plate, "B03", 0, CellConfig(crop_size=16)).crops
    scaled = process_field(plate, "B03", 0, CellConfig(crop_size=16, normalisation=stats)).crops
    assert raw.max() > 1000
    assert scaled.min() >= -1 and scaled.max() <= 1
    assert scaled[0, 1, 8, 8] == pytest.approx(1, abs=0.02)       # nucleus centre, reporter 4000
    wrong = NormalisationStats(("GFP", "DNA"), (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(PlateError, match="normalisation statistics are for"):
        process_field(plate, "B03", 0, CellConfig(normalisation=wrong))


def test_a_field_without_nuclei_gives_an_empty_batch(tmp_path: Path):
    empty = FieldImage("A01", 0, np.full((2, 32, 32), 100, np.uint16), {"nuclei": np.zeros((32, 32), np.int32)})
    path = write_plate(tmp_path / "empty.zarr", [empty], name="E", channel_names=["DNA", "reporter"])
    batch = process_field(open_plate(path), "A01", 0, CellConfig(crop_size=8))
    assert batch.crops.shape == (0, 2, 8, 8)
    assert len(batch.table) == 0 and {"cell_id", "border", "reporter_ratio"} <= set(batch.table)
    assert batch.qc["n_cells"] == 0


def test_qc_row(plates):
    qc = process_field(open_plate(plates["labelled"]), "B03", 0, CellConfig()).qc
    assert qc["plate"] == "P1" and qc["well"] == "B03" and qc["field"] == 0
    assert qc["n_cells"] == 4 and qc["label_source"] == "plate"
    assert qc["saturated_fraction"] == pytest.approx(1 / (2 * SIZE * SIZE))
    assert qc["focus"] > 0


def test_focus_drops_when_blurred():
    from skimage.filters import gaussian

    from screenxai.cells import field_qc

    sharp = _field("A01", 0, False).image
    blurred = (gaussian(sharp.astype(float), sigma=(0, 3, 3), preserve_range=True)).astype(np.uint16)
    assert field_qc(blurred, blurred[0], 4)["focus"] < 0.5 * field_qc(sharp, sharp[0], 4)["focus"]


def test_nuclear_channel_is_guessed_or_named():
    assert nuclear_channel_index(["GFP", "hoechst"], None) == 1
    assert nuclear_channel_index(["c0", "c1"], "c1") == 1
    with pytest.raises(PlateError, match="cannot tell the nuclear channel"):
        nuclear_channel_index(["c0", "c1"], None)
    with pytest.raises(PlateError, match="cannot tell the nuclear channel"):
        nuclear_channel_index(["DAPI", "DNA"], None)
    with pytest.raises(PlateError, match="not among the channels"):
        nuclear_channel_index(["DNA", "GFP"], "dapi")
