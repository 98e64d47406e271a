"""Damaged chunks of a plate's images and labels: a lost chunk flags its field and well; a corrupt one is named."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from zarr.storage import LocalStore, LoggingStore

from screenxai.cells import CellConfig, fit_normalisation, process_field
from screenxai.cli import EXIT_FAILED_FIELDS, main
from screenxai.errors import PlateError
from screenxai.pipeline.run import open_plates, run_cells
from screenxai.plate.reader import missing_chunks, open_plate, undecodable_chunk
from screenxai.plate.simulate import simulate_screen
from screenxai.report.builder import build_report

LOST = ("A02", 1)  # the field whose reporter chunk is deleted
LOST_LABELS = ("B01", 0)  # the field whose nucleus label chunk is deleted
CORRUPT = ("B03", 0)  # the field whose reporter chunk is overwritten with garbage
REPORTER_CHUNK = (1, 0, 0, 0)  # (c, z, y, x) chunk coordinates: the whole reporter plane of a 128-pixel field
LABEL_CHUNK = (0, 0, 0)  # (z, y, x): the whole nucleus label plane of a 128-pixel field


@pytest.fixture(scope="module")
def plate_path(tmp_path_factory) -> Path:
    """A 2x3-well simulated plate of two 128-pixel fields per well, one chunk per channel."""
    path = tmp_path_factory.mktemp("chunks") / "plate.zarr"
    simulate_screen(path, rows=2, columns=3, fields=2, size=128, seed=0)
    return path


def chunk_file(plate: Path, well: str, field: int, coords: tuple[int, ...] = REPORTER_CHUNK,
               labels: bool = False) -> tuple[Path, str, str]:
    """The file of one chunk of a field's image (or nucleus labels), the array's path in the plate and the key."""
    opened = open_plate(plate)
    if labels:
        path = opened.labels(well, field).attrs["array"]
        array = opened.root[path]
    else:
        array, path = opened.image_array(well, field)
    key = array.metadata.encode_chunk_key(coords)
    return plate / path / key, path, key


def damaged_copy(plate: Path, folder: Path, lost: tuple[str, int] | None = LOST,
                 corrupt: tuple[str, int] | None = None, lost_labels: tuple[str, int] | None = None) -> Path:
    """A copy of ``plate`` with the reporter chunk of ``lost`` deleted and that of ``corrupt`` made garbage,
    and the nucleus label chunk of ``lost_labels`` deleted."""
    copy = folder / "plate.zarr"
    shutil.copytree(plate, copy)
    if lost is not None:
        chunk_file(copy, *lost)[0].unlink()
    if lost_labels is not None:
        chunk_file(copy, *lost_labels, LABEL_CHUNK, labels=True)[0].unlink()
    if corrupt is not None:
        chunk_file(copy, *corrupt)[0].write_bytes(b"\x00garbage, not zstd")
    return copy


@pytest.fixture(scope="module")
def damaged_run(plate_path, client, tmp_path_factory):
    """``screenxai run --cells-only`` of a copy with a lost image chunk, a lost label chunk and a corrupt image chunk.

    Returns (the copy, out, CLI result).
    """
    root = tmp_path_factory.mktemp("damaged")
    copy = damaged_copy(plate_path, root, lost=LOST, corrupt=CORRUPT, lost_labels=LOST_LABELS)
    out = root / "out"
    result = CliRunner().invoke(main, ["run", str(copy), "-o", str(out), "--cells-only",
                                       "--scheduler", client.scheduler.address])
    return copy, out, result


def test_the_fields_that_lost_an_image_or_label_chunk_and_only_they_are_flagged_and_done(damaged_run):
    _, out, result = damaged_run
    assert result.exit_code == EXIT_FAILED_FIELDS, result.output  # the corrupt field failed
    fields = pd.read_parquet(out / "fields.parquet").set_index(["well", "field"])
    assert fields["missing_chunks"].dtype == "int64" and fields["qc_missing_chunks"].dtype == bool
    assert fields.loc[LOST, "status"] == "done" and fields.loc[LOST, "n_cells"] > 0
    assert fields.loc[LOST_LABELS, "status"] == "done" and fields.loc[LOST_LABELS, "label_source"] == "plate"
    assert fields.loc[LOST_LABELS, "n_cells"] == 0  # the whole label plane read as background
    assert fields.index[fields["missing_chunks"] > 0].tolist() == sorted([LOST, LOST_LABELS])
    assert fields.loc[LOST, "missing_chunks"] == 1 and fields.loc[LOST_LABELS, "missing_chunks"] == 1
    assert fields.index[fields["qc_missing_chunks"]].tolist() == sorted([LOST, LOST_LABELS])
    assert fields.loc[CORRUPT, "status"] == "failed" and fields.loc[CORRUPT, "missing_chunks"] == 0


def test_the_wells_of_the_lost_chunks_are_flagged_in_the_well_table_profiles_and_cli_summary(damaged_run):
    _, out, result = damaged_run
    flagged = sorted([LOST[0], LOST_LABELS[0]])
    wells = pd.read_parquet(out / "wells.parquet").set_index("well")
    assert wells.index[wells["qc_missing_chunks"]].tolist() == flagged
    profiles = pd.read_parquet(out / "profiles.parquet").set_index("Metadata_Well")
    assert profiles.index[profiles["Metadata_qc_missing_chunks"]].tolist() == flagged
    line = next(line for line in result.output.splitlines() if line.startswith("QC flags on"))
    assert set(flagged) <= set(line.split(": ", 1)[1].split(", "))


def test_a_corrupt_chunk_fails_its_field_with_an_error_naming_the_array_and_the_chunk(damaged_run):
    copy, out, _ = damaged_run
    _, path, key = chunk_file(copy, *CORRUPT)
    fields = pd.read_parquet(out / "fields.parquet").set_index(["well", "field"])
    assert fields.index[fields["status"] == "failed"].tolist() == [CORRUPT]
    error = fields.loc[CORRUPT, "error"]
    assert error.startswith(f"PlateError: plate plate well {CORRUPT[0]} field {CORRUPT[1]}: chunk {key} of array "
                            f"{path} cannot be read or decoded (")
    assert path == f"B/03/{CORRUPT[1]}/s0" and key == "c/1/0/0/0"


@pytest.mark.parametrize("labels", [False, True], ids=["image", "labels"])
def test_strict_stops_at_the_field_that_lost_a_chunk_naming_its_array(plate_path, client, tmp_path, labels):
    lost = LOST_LABELS if labels else LOST
    copy = damaged_copy(plate_path, tmp_path, lost=None if labels else LOST,
                        lost_labels=LOST_LABELS if labels else None)
    _, path, _ = chunk_file(plate_path, *lost, LABEL_CHUNK if labels else REPORTER_CHUNK, labels=labels)
    with pytest.raises(PlateError) as raised:
        run_cells(open_plates([copy]), tmp_path / "out", client, CellConfig(), strict=True)
    message = str(raised.value)
    assert message.startswith(f"field plate/{lost[0]}/{lost[1]}: 1 chunk(s) of array {path} are missing from {copy} ")
    assert "--strict stops here" in message and "qc_missing_chunks" in message
    assert ("/labels/nuclei/" in path) == labels
    assert not (tmp_path / "out" / "wells.parquet").exists()


def test_a_lost_label_chunk_counts_only_when_the_plate_labels_are_used(plate_path, tmp_path):
    copy = damaged_copy(plate_path, tmp_path, lost=None, lost_labels=LOST_LABELS)
    used = process_field(open_plate(copy), *LOST_LABELS, CellConfig(crop_size=16)).qc
    segmented = process_field(open_plate(copy), *LOST_LABELS, CellConfig(crop_size=16, use_plate_labels=False)).qc
    assert (used["label_source"], used["missing_chunks"]) == ("plate", 1)
    assert (segmented["label_source"], segmented["missing_chunks"]) == ("segmented", 0)
    assert segmented["n_cells"] > 0


def metadata_reads(records: list[logging.LogRecord]) -> Counter[str]:
    """How often each metadata file (Zarr v3 ``zarr.json``, v2 ``.z*``) was read, from a ``LoggingStore``'s log."""
    found = (re.search(r"Calling \w+\.get\((.*(?:zarr\.json|\.zarray|\.zgroup|\.zattrs))\)", r.getMessage())
             for r in records)
    return Counter(match.group(1) for match in found if match)


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
def test_process_field_reads_each_metadata_file_of_its_field_once(tmp_path, caplog, ngff_version):
    plate_path = tmp_path / "plate.zarr"
    simulate_screen(plate_path, rows=1, columns=3, fields=2, size=128, seed=0, ngff_version=ngff_version)
    plate = open_plate(plate_path)
    plate.root = zarr.open_group(LoggingStore(LocalStore(plate_path, read_only=True), log_level="INFO"), mode="r")
    with caplog.at_level(logging.INFO):
        qc = process_field(plate, "A02", 1, CellConfig(crop_size=16)).qc
    assert qc["label_source"] == "plate" and qc["missing_chunks"] == 0
    field_reads = {key: n for key, n in metadata_reads(caplog.records).items() if key.startswith("A/02/1/")}
    metadata = "zarr.json" if ngff_version == "0.5" else ".zattrs"
    assert {f"A/02/1/{metadata}", f"A/02/1/s0/{metadata}", f"A/02/1/labels/nuclei/s0/{metadata}"} <= set(field_reads)
    assert set(field_reads.values()) == {1}, field_reads


def test_an_untouched_plate_has_no_missing_chunks_anywhere(plate_path, client, tmp_path):
    result = run_cells(open_plates([plate_path]), tmp_path / "out", client, CellConfig(), strict=True)
    assert (result.fields["status"] == "done").all() and len(result.fields) == 12
    assert (result.fields["missing_chunks"] == 0).all() and not result.fields["qc_missing_chunks"].any()
    assert not result.wells["qc_missing_chunks"].any()


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
@pytest.mark.parametrize("labels", [False, True], ids=["image", "labels"])
def test_process_field_names_the_chunk_it_cannot_decode(tmp_path, ngff_version, labels):
    plate = tmp_path / "plate.zarr"
    simulate_screen(plate, rows=1, columns=3, fields=1, size=128, seed=0, ngff_version=ngff_version)
    coords = (0, 0, 0) if labels else REPORTER_CHUNK
    file, path, key = chunk_file(plate, "A01", 0, coords, labels=labels)
    assert file.is_file()  # the key names a stored chunk, in the plate's Zarr version's layout
    file.write_bytes(b"\x00garbage")
    with pytest.raises(PlateError, match="^plate plate well A01 field 0: chunk ") as raised:
        process_field(open_plate(plate), "A01", 0, CellConfig(crop_size=16))
    assert f"chunk {key} of array {path} cannot be read or decoded" in str(raised.value)
    assert ("/labels/nuclei/" in path) == labels


def test_process_field_counts_a_lost_chunk_of_a_zarr_v2_plate(tmp_path):
    plate = tmp_path / "plate.zarr"
    simulate_screen(plate, rows=1, columns=3, fields=1, size=128, seed=0, ngff_version="0.4")
    assert process_field(open_plate(plate), "A01", 0, CellConfig(crop_size=16)).qc["missing_chunks"] == 0
    chunk_file(plate, "A01", 0)[0].unlink()
    qc = process_field(open_plate(plate), "A01", 0, CellConfig(crop_size=16)).qc
    assert qc["missing_chunks"] == 1 and qc["n_cells"] > 0


def test_the_normalisation_fit_names_a_chunk_it_cannot_decode(tmp_path):
    plate = tmp_path / "plate.zarr"
    simulate_screen(plate, rows=1, columns=3, fields=1, size=128, seed=0)
    file, path, key = chunk_file(plate, "A01", 0)
    assert file.is_file()
    file.write_bytes(b"\x00garbage")
    with pytest.raises(PlateError, match=f"chunk {key} of array {path} cannot be read or decoded"):
        fit_normalisation(open_plate(plate), wells=["A01"])


def test_a_sharded_array_counts_a_lost_shard_and_names_a_corrupt_one(tmp_path):
    array = zarr.create_array(str(tmp_path / "sharded.zarr"), shape=(10, 10), chunks=(2, 2), shards=(4, 4),
                              dtype="uint16")
    array[:] = np.arange(100, dtype="uint16").reshape(10, 10) + 1
    assert missing_chunks(array) == 0 and undecodable_chunk(array) is None
    (tmp_path / "sharded.zarr" / array.metadata.encode_chunk_key((2, 1))).unlink()  # an edge shard
    assert array.nchunks_initialized == 32  # zarr counts the 4 chunk slots of each of the 8 stored shards
    assert missing_chunks(array) == 1
    (tmp_path / "sharded.zarr" / array.metadata.encode_chunk_key((0, 1))).write_bytes(b"garbage")
    key, _ = undecodable_chunk(array)
    assert key == "c/0/1"


def test_the_reports_cell_count_map_crosses_the_well_that_lost_a_chunk(damaged_run):
    _, out, _ = damaged_run
    page = build_report(out).read_text()
    figure = re.search(r'<figure id="qc-plate-n_cells">.*?<figcaption>(.*?)</figcaption>.*?'
                       r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)
    assert "qc_missing_chunks" in figure.group(1)
    assert LOST[0] in json.loads(figure.group(2))["flagged"]


def test_a_strict_resume_stops_at_a_finished_field_that_lost_a_chunk(damaged_run, client, tmp_path):
    copy, out, _ = damaged_run
    shutil.copytree(out, tmp_path / "out")
    result = CliRunner().invoke(main, ["run", str(copy), "-o", str(tmp_path / "out"), "--cells-only", "--resume",
                                       "--strict", "--scheduler", client.scheduler.address])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: field plate/{LOST[0]}/{LOST[1]}: 1 chunk(s) of array ")
    assert "--strict stops here" in errors[0]
