"""`screenxai run` on a real local Dask cluster: tables, failures recorded, clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from distributed import get_task_stream

from conftest import documented_columns
from screenxai.cells import CellConfig
from screenxai.cli import main
from screenxai.errors import ScreenxaiError
from screenxai.pipeline.cluster import connect
from screenxai.pipeline.run import open_plates, run_cells
from screenxai.pipeline.summary import SATURATION_LIMIT, aggregate_wells

WELLS = ["A01", "B02", "A12", "B12"]


@pytest.fixture(scope="module")
def client():
    with connect(n_workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def bbbc013_run(bbbc013_plate, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_cells(open_plates([bbbc013_plate]), out, client, CellConfig(), wells=WELLS)


def test_run_writes_cell_and_well_tables(bbbc013_run):
    out = bbbc013_run.out
    cells = pd.read_parquet(out / "cells")
    assert sorted(cells["well"].astype(str).unique()) == sorted(WELLS)
    assert cells["cell_id"].is_unique
    b02 = pd.read_parquet(out / "cells", filters=[("well", "==", "B02")])
    assert len(b02) == int(bbbc013_run.wells.set_index("well").loc["B02", "n_cells"]) > 100
    wells = pd.read_parquet(out / "wells.parquet")
    assert list(wells["well"]) == ["A01", "A12", "B02", "B12"]
    assert {"control", "dose_index", "n_cells", "median_GFP_ratio", "qc_low_count"} <= set(wells.columns)
    by_control = wells.groupby("control")["median_GFP_ratio"].mean()
    assert by_control["positive"] > 2 * by_control["negative"]


def test_well_aggregates_computed_on_the_cluster_one_task_per_well_equal_pandas_on_all_cells(bbbc013_run, client):
    cells = pd.read_parquet(bbbc013_run.out / "cells").astype({"plate": str, "well": str})
    with get_task_stream(client) as stream:
        aggregates = aggregate_wells(bbbc013_run.out / "cells", client)
    assert sorted(str(t["key"]).split("-")[0] for t in stream.data) == ["_well_row"] * len(WELLS)  # no shuffle
    expected = cells.groupby(["plate", "well"]).agg(n_cells=("cell_id", "size"), median_area=("area", "median"),
                                                    median_GFP_ratio=("GFP_ratio", "median"),
                                                    mean_GFP_ratio=("GFP_ratio", "mean"),
                                                    sd_GFP_ratio=("GFP_ratio", "std")).reset_index()
    pd.testing.assert_frame_equal(aggregates[expected.columns], expected, check_dtype=False, rtol=1e-9)
    assert aggregates["n_cells"].dtype == "int64" and aggregates["median_area"].dtype == "float64"
    wells = pd.read_parquet(bbbc013_run.out / "wells.parquet")
    assert wells["median_area"].tolist() == expected["median_area"].tolist()


def test_manifest_records_versions_plates_and_every_field(bbbc013_run):
    manifest = json.loads((bbbc013_run.out / "manifest.json").read_text())
    assert manifest["plates"][0]["name"] == "bbbc013"
    assert {"zarr", "dask", "torch"} <= set(manifest["dependencies"])
    assert [(f["well"], f["status"]) for f in manifest["fields"]] == [(w, "done") for w in sorted(WELLS)]
    assert manifest["bundle"] is None  # documented: null without a bundle


@pytest.fixture(scope="module")
def corrupt_run(bbbc013_plate, client, tmp_path_factory):
    """A run of WELLS on a copy of the plate whose A12 field has a garbage chunk: (the copy, the run)."""
    import shutil

    root = tmp_path_factory.mktemp("corrupt")
    plate_copy = root / "plate.zarr"
    shutil.copytree(bbbc013_plate, plate_copy)
    chunk = next(p for p in (plate_copy / "A" / "12" / "0" / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage")
    return plate_copy, run_cells(open_plates([plate_copy]), root / "out", client, CellConfig(), wells=WELLS)


def test_unreadable_field_is_recorded_and_the_rest_completes(corrupt_run, client, tmp_path):
    plate_copy, result = corrupt_run
    failed = result.failures
    assert list(failed["well"]) == ["A12"] and failed["error"].iloc[0]
    assert (result.fields.set_index("well").loc[["A01", "B02", "B12"], "status"] == "done").all()
    assert pd.read_parquet(result.out / "failures.parquet")["well"].tolist() == ["A12"]
    assert bool(result.wells.set_index("well").loc["A12", "qc_failed_fields"])
    with pytest.raises(ScreenxaiError, match=r"field bbbc013/A12/0 failed \(--strict\): "):
        run_cells(open_plates([plate_copy]), tmp_path / "strict", client, CellConfig(), wells=WELLS, strict=True)
    assert not (tmp_path / "strict" / "wells.parquet").exists()


def test_cli_run_reports_bad_plate_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'missing.zarr'}: no such file or folder"


def test_run_refuses_plates_with_the_same_name(bbbc013_plate, client, tmp_path):
    plates = open_plates([bbbc013_plate, bbbc013_plate])
    with pytest.raises(Exception, match=r"share the name\(s\) \['bbbc013'\]"):
        run_cells(plates, tmp_path, client)


def _documented_columns(table: str) -> dict[str, str]:
    """Columns and dtypes of one table in docs/outputs.md (``## table`` section)."""
    return documented_columns("outputs.md", table)


def _dtype_matches(series: pd.Series, documented: str) -> bool:
    if documented == "category":
        return isinstance(series.dtype, pd.CategoricalDtype)
    if documented == "string":
        return pd.api.types.is_string_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype)
    return str(series.dtype) == documented


SHAPE_FEATURES = ("area", "perimeter", "eccentricity", "solidity", "major_axis_length", "minor_axis_length",
                  "form_factor")
CHANNELS = ("GFP", "DNA")


def _expand(name: str) -> list[str]:
    """Concrete column names of a documented, possibly templated, column."""
    if name == "median_{feature}":
        channel_features = [c for c in _documented_columns("cells/") if c.startswith("{channel}")]
        return [f"median_{f}" for f in SHAPE_FEATURES] + [f"median_{c}" for f in channel_features for c in _expand(f)]
    if "{channel}" in name:
        return [name.replace("{channel}", channel) for channel in CHANNELS]
    return [name]


@pytest.mark.parametrize("table, path", [("cells/", "cells"), ("fields.parquet", "fields.parquet"),
                                         ("wells.parquet", "wells.parquet")])
def test_every_documented_column_reads_back_with_its_dtype(bbbc013_run, table, path):
    data = pd.read_parquet(bbbc013_run.out / path)
    for name, dtype in _documented_columns(table).items():
        for column in _expand(name):
            assert column in data, f"{table}: documented column {column} missing"
            assert _dtype_matches(data[column], dtype), f"{table}: {column} is {data[column].dtype}, docs say {dtype}"


@pytest.mark.parametrize("table", ["failures.parquet", "fields.parquet"])
def test_tables_of_a_run_with_a_failed_field_read_back_with_their_documented_dtypes(corrupt_run, table):
    _, result = corrupt_run
    data = pd.read_parquet(result.out / table)
    documented = _documented_columns(table)
    if table == "failures.parquet":
        assert list(data.columns) == list(documented)
    for column, dtype in documented.items():
        assert column in data, f"{table}: documented column {column} missing"
        assert _dtype_matches(data[column], dtype), f"{table}: {column} is {data[column].dtype}, docs say {dtype}"


def test_fields_are_flagged_per_field_and_the_failed_one_is_kept_unflagged(corrupt_run):
    _, result = corrupt_run
    fields = pd.read_parquet(result.out / "fields.parquet").set_index("well")
    flags = [c for c in _documented_columns("fields.parquet") if c.startswith("qc_")]
    assert len(fields) == len(WELLS) and fields.loc["A12", "status"] == "failed"
    assert not fields.loc["A12", flags].any() and fields.loc["A12", "n_cells"] == 0
    done = fields.drop(index="A12")
    assert list(done["qc_saturated"]) == list(done["saturated_fraction"] > SATURATION_LIMIT)
    assert list(done["qc_no_cells"]) == list(done["n_cells"] == 0)


def _cells_without_timings(out: Path) -> pd.DataFrame:
    cells = pd.read_parquet(out / "cells")
    return cells.assign(plate=cells["plate"].astype(str), well=cells["well"].astype(str)) \
        .sort_values("cell_id").reset_index(drop=True)


def test_an_interrupted_run_resumes_only_unfinished_fields_and_ends_as_an_uninterrupted_one(
        bbbc013_plate, bbbc013_run, client, tmp_path):
    from distributed import get_task_stream

    plates = open_plates([bbbc013_plate])
    seen = []

    def interrupt(row):
        seen.append(row)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cells(plates, tmp_path, client, CellConfig(), wells=WELLS, on_field=interrupt)
    with pytest.raises(ScreenxaiError, match="already holds a run; pass --resume"):
        run_cells(plates, tmp_path, client, CellConfig(), wells=WELLS)
    with pytest.raises(ScreenxaiError, match="its cells differ"):
        run_cells(plates, tmp_path, client, CellConfig(crop_size=48), wells=WELLS, resume=True)
    while any(client.processing().values()):  # tasks still running from the interrupted run finish first
        time.sleep(0.05)
    with get_task_stream(client) as stream:
        resumed = run_cells(plates, tmp_path, client, CellConfig(), wells=WELLS, resume=True)
    computed = [t for t in stream.data if str(t["key"]).startswith("cells-")]
    assert len(computed) <= len(WELLS) - 2
    pd.testing.assert_frame_equal(_cells_without_timings(tmp_path), _cells_without_timings(bbbc013_run.out))
    assert list(resumed.wells["n_cells"]) == list(bbbc013_run.wells["n_cells"])
    assert (resumed.fields["status"] == "done").all() and len(resumed.fields) == len(WELLS)
