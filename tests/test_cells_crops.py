"""Fixed-size crops around nuclei: centring, border padding and flags, table columns."""

from __future__ import annotations

import numpy as np
import pytest

from screenxai.cells import crop_cells
from screenxai.cells.crops import CROP_COLUMNS


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, np.ndarray]:
    """A 2-channel 40x50 field (pixel value = 1 + its flat index) with three square nuclei."""
    image = np.arange(1, 2 * 40 * 50 + 1, dtype=np.float32).reshape(2, 40, 50)
    labels = np.zeros((40, 50), np.int32)
    labels[19:22, 24:27] = 3        # centre (20, 25), far from edges
    labels[0:7, 10:13] = 7          # centre (3, 11): touches the top edge, a 4 px window fits
    labels[4:7, 44:47] = 9          # centre (5, 45): inside, but its 16 px window leaves the field
    return image, labels


def test_crops_are_centred_on_the_nucleus(field):
    image, labels = field
    crops, table = crop_cells(image, labels, crop_size=16)
    assert crops.shape == (3, 2, 16, 16) and crops.dtype == np.float32
    assert list(table.columns) == CROP_COLUMNS
    assert table["label"].tolist() == [3, 7, 9]
    centre = crops[table["label"].tolist().index(3)]
    np.testing.assert_array_equal(centre, image[:, 12:28, 17:33])
    np.testing.assert_array_equal(centre[:, 8, 8], image[:, 20, 25])


def test_table_describes_each_nucleus(field):
    _, labels = field
    _, table = crop_cells(np.zeros((1, 40, 50)), labels, crop_size=8)
    row = table.set_index("label").loc[3]
    assert (row.centroid_y, row.centroid_x, row.area) == (20, 25, 9)
    assert (row.bbox_min_y, row.bbox_min_x, row.bbox_max_y, row.bbox_max_x) == (19, 24, 22, 27)


def test_border_flags_windows_leaving_the_field_and_nuclei_touching_the_edge(field):
    image, labels = field
    _, small = crop_cells(image, labels, crop_size=4)
    _, large = crop_cells(image, labels, crop_size=16)
    assert small.set_index("label")["border"].to_dict() == {3: False, 7: True, 9: False}
    assert large.set_index("label")["border"].to_dict() == {3: False, 7: True, 9: True}


def test_windows_leaving_the_field_are_zero_padded(field):
    image, labels = field
    crops, table = crop_cells(image, labels, crop_size=16)
    crop = crops[table["label"].tolist().index(9)]       # window rows -3..12, columns 37..52
    assert np.all(crop[:, :3, :] == 0) and np.all(crop[:, :, 13:] == 0)
    np.testing.assert_array_equal(crop[:, 3:, :13], image[:, 0:13, 37:50])


def test_reflect_padding_mirrors_the_field(field):
    image, labels = field
    crops, table = crop_cells(image, labels, crop_size=16, pad_mode="reflect")
    crop = crops[table["label"].tolist().index(9)]
    np.testing.assert_array_equal(crop[:, 2, 3:13], image[:, 1, 40:50])  # row -1 mirrors row 1
    assert np.all(crop > 0)


def test_a_field_without_nuclei_gives_no_crops():
    crops, table = crop_cells(np.ones((3, 20, 20)), np.zeros((20, 20), np.int32), crop_size=8)
    assert crops.shape == (0, 3, 8, 8)
    assert list(table.columns) == CROP_COLUMNS and len(table) == 0


def test_mismatched_shapes_are_rejected(field):
    image, labels = field
    with pytest.raises(ValueError, match="labels shape"):
        crop_cells(image, labels[:-1], crop_size=8)
    with pytest.raises(ValueError, match=r"\(c, y, x\)"):
        crop_cells(image[0], labels, crop_size=8)
