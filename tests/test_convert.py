"""TIFF folders to OME-Zarr plates: the real BBBC013 half-plate, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from ome_zarr_models import open_ome_zarr

from screenxai.errors import ConversionError, LayoutError
from screenxai.plate import open_plate
from screenxai.plate.convert import convert_tiffs, pattern_regex

PATTERN = "Channel{channel}-{index}-{row}-{column}.tif"


@pytest.mark.acceptance
def test_bbbc013_converts_to_a_valid_48_well_plate_with_named_channels(bbbc013_plate, bbbc013_dir):
    model = open_ome_zarr(zarr.open_group(str(bbbc013_plate), mode="r"))
    assert type(model).__name__ == "HCS"
    plate = open_plate(bbbc013_plate)
    assert len(plate.wells) == 48 and plate.rows == ["A", "B", "C", "D"]
    assert plate.channel_names == ["GFP", "DNA"]
    assert plate.layout.shape[0] == 48
    assert set(plate.layout["control"]) == {"negative", "positive", "dose"}
    original = tifffile.imread(bbbc013_dir / "Channel2-27-C-03.tif")
    np.testing.assert_array_equal(plate.image("C03").sel(c="DNA").values[0], original)


def _tiffs(folder: Path, wells=("A01", "A02"), fields=(1,), channels=("1", "2"), shape=(32, 32),
           dtype=np.uint8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, well in enumerate(wells):
        for field in fields:
            for channel in channels:
                name = f"w{well[0]}-{well[1:]}_s{field}_ch{channel}_{i:03d}.tif"
                tifffile.imwrite(folder / name, np.full(shape, i + 1, dtype=dtype))
    return folder


FIELD_PATTERN = "w{row}-{column}_s{field}_ch{channel}_{index}.tif"


def test_fields_and_channel_names_from_the_pattern(tmp_path):
    folder = _tiffs(tmp_path / "tif", fields=(1, 2), channels=("DAPI", "GFP"))
    plate = open_plate(convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN, ngff_version="0.4"))
    assert plate.channel_names == ["DAPI", "GFP"] and plate.ngff_version == "0.4"
    assert [(k.well, k.field) for k in plate.field_keys()] == [("A01", 0), ("A01", 1), ("A02", 0), ("A02", 1)]
    assert plate.layout is None


def test_pattern_without_required_placeholders_is_refused():
    with pytest.raises(ConversionError, match=r"lacks placeholder\(s\) \['\{channel\}'\]"):
        pattern_regex("{row}{column}.tif")


def test_tiffs_that_miss_the_pattern_are_named(tmp_path):
    folder = _tiffs(tmp_path / "tif")
    tifffile.imwrite(folder / "stray_image.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(ConversionError, match="do not match pattern .*stray_image.tif"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN)
    assert not (tmp_path / "out.zarr").exists()


def test_shape_disagreement_names_the_file_and_leaves_no_plate(tmp_path):
    folder = _tiffs(tmp_path / "tif", wells=("A01",))
    tifffile.imwrite(folder / "wA-02_s1_ch1_009.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(folder / "wA-02_s1_ch2_009.tif", np.zeros((40, 32), np.uint8))
    with pytest.raises(ConversionError, match=r"wA-02_s1_ch2_009.tif: shape \(1, 40, 32\)"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN)
    assert list(tmp_path.iterdir()) == [folder]


def test_dtype_disagreement_names_the_file(tmp_path):
    folder = _tiffs(tmp_path / "tif", wells=("A01",))
    for channel in ("1", "2"):
        tifffile.imwrite(folder / f"wA-02_s1_ch{channel}_009.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(ConversionError, match="wA-02_s1_ch1_009.tif: .*dtype uint16 disagrees"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN)


def test_missing_channel_names_the_well_and_field(tmp_path):
    folder = _tiffs(tmp_path / "tif")
    (folder / "wA-02_s1_ch2_001.tif").unlink()
    with pytest.raises(ConversionError, match=r"well A02 field 1: no file for channel\(s\) \['2'\]"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN)


def test_unreadable_tiff_is_named(tmp_path):
    folder = _tiffs(tmp_path / "tif")
    (folder / "wA-02_s1_ch2_001.tif").write_bytes(b"not a tiff")
    with pytest.raises(ConversionError, match="wA-02_s1_ch2_001.tif: not a readable TIFF"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN)


def test_layout_with_unknown_wells_or_missing_columns_is_refused(tmp_path):
    folder = _tiffs(tmp_path / "tif")
    layout = pd.DataFrame({"well": ["A01", "A02", "C07"], "control": ["negative", "positive", "dose"]})
    with pytest.raises(LayoutError, match=r"\['C07'\] are not on the plate"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN, layout=layout)
    csv = tmp_path / "layout.csv"
    pd.DataFrame({"position": ["A01"], "control": ["negative"]}).to_csv(csv, index=False)
    with pytest.raises(LayoutError, match=f"{csv}: no 'well' column"):
        convert_tiffs(folder, tmp_path / "out.zarr", FIELD_PATTERN, layout=csv)
    assert not (tmp_path / "out.zarr").exists()


def test_layout_with_bad_or_duplicate_wells_is_refused(tmp_path):
    folder = _tiffs(tmp_path / "tif")
    with pytest.raises(LayoutError, match=r"unreadable well name\(s\) \['Z-9'\]"):
        convert_tiffs(folder, tmp_path / "o.zarr", FIELD_PATTERN, layout=pd.DataFrame({"well": ["A01", "Z-9"]}))
    with pytest.raises(LayoutError, match=r"listed more than once: \['A01'\]"):
        convert_tiffs(folder, tmp_path / "o.zarr", FIELD_PATTERN, layout=pd.DataFrame({"well": ["A01", "a1"]}))


def test_bad_channel_names_are_refused(tmp_path):
    folder = _tiffs(tmp_path / "tif")
    with pytest.raises(ConversionError, match=r"channel\(s\) \['3'\] not found"):
        convert_tiffs(folder, tmp_path / "o.zarr", FIELD_PATTERN, channel_names="1=DNA,3=GFP")
    with pytest.raises(ConversionError, match="not of the form TOKEN=NAME"):
        convert_tiffs(folder, tmp_path / "o.zarr", FIELD_PATTERN, channel_names="DNA")


def test_empty_or_missing_folder_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="not a folder"):
        convert_tiffs(tmp_path / "nope", tmp_path / "o.zarr", FIELD_PATTERN)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no TIFF files"):
        convert_tiffs(tmp_path / "empty", tmp_path / "o.zarr", FIELD_PATTERN)
