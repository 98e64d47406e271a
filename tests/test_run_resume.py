"""``screenxai run --resume`` with a model bundle, the run record it checks, and per-well exemplars.

An interrupted run with a bundle, resumed, must compute only the fields left
and end with the tables of an uninterrupted run; an output written with
another bundle is refused; the manifest's ``config_hash`` is the hash of the
record ``--resume`` checks; ``exemplars_per_well`` renders each well's
typical cells into ``counterfactuals.zarr``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from distributed import Client, LocalCluster, get_task_stream

from screenxai.errors import ScreenxaiError
from screenxai.models.bundle import seal_bundle
from screenxai.models.presets import registered_preset
from screenxai.pipeline.run import RUN_RECORD, RunResult, record_hash, run_cells
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.reader import Plate, open_plate
from screenxai.plate.simulate import simulate_screen
from test_models_training import MINI

FIELDS_PER_BATCH = 2
PER_WELL = 2


@pytest.fixture(scope="module")
def client():
    """One single-threaded in-process worker: it sees the ``mini`` preset, and torch keeps to one thread."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Plate:
    path = tmp_path_factory.mktemp("resume-plate") / "plate.zarr"
    simulate_screen(path, rows=2, columns=4, fields=2, size=128, seed=3)
    return open_plate(path)


@pytest.fixture(scope="module")
def bundle(plate, client, tmp_path_factory) -> Path:
    """A mini-preset bundle with attributes (classifier, autoencoder, explain).

    The training job gives torch every core of the machine by default; on a
    shared 2-core test machine its threads then wait on each other and the
    explain stage runs about 30 times slower, so it trains on one thread here.
    """
    with registered_preset(MINI):
        out = tmp_path_factory.mktemp("resume-bundle") / "bundle"
        settings = TrainSettings(preset="mini", seed=1, max_cells_per_well=30, check_cells=8, check_steps=2,
                                 stages=("classifier", "autoencoder", "explain"), explain_cells=12, torch_threads=1)
        train([plate], out, client, settings)
        assert torch.get_num_threads() == 1  # the in-process worker trained on the threads asked for
        return out


@pytest.fixture(scope="module")
def uninterrupted(plate, bundle, client, tmp_path_factory) -> RunResult:
    """The reference run, rendering the typical cells of every well (and none per condition)."""
    return run_cells([plate], tmp_path_factory.mktemp("uninterrupted"), client, bundle=bundle,
                     fields_per_batch=FIELDS_PER_BATCH, exemplars_per_condition=0, exemplars_per_well=PER_WELL)


def _table(out: Path, name: str) -> pd.DataFrame:
    """A cell-keyed table in a canonical order, with the hive partition columns as plain strings."""
    table = pd.read_parquet(out / name)
    return table.astype({"plate": str, "well": str}).sort_values("cell_id").reset_index(drop=True)


def _done_fields(out: Path) -> set[tuple[str, int]]:
    """(well, field) of every field whose cell file is marked done."""
    return {(p.parent.name.removeprefix("well="), int(p.name.removeprefix(".field-").removesuffix(".parquet.done")))
            for p in (out / "cells").glob("plate=*/well=*/.field-*.parquet.done")}


def _wait_until_idle(client: Client) -> None:
    """Until no task is queued or still executing (a cancelled task keeps running to its end)."""
    while any(client.processing().values()) or any(client.run(lambda dask_worker: dask_worker.state.executing_count)
                                                   .values()):
        time.sleep(0.05)


def test_an_interrupted_run_with_a_bundle_resumes_only_unfinished_fields_and_ends_as_an_uninterrupted_one(
        plate, bundle, client, uninterrupted, tmp_path):
    def interrupt(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cells([plate], tmp_path, client, bundle=bundle, fields_per_batch=FIELDS_PER_BATCH, on_field=interrupt)
    _wait_until_idle(client)
    finished = _done_fields(tmp_path)
    every_field = {(k.well, k.field) for k in plate.field_keys()}
    assert FIELDS_PER_BATCH <= len(finished) < len(every_field) - FIELDS_PER_BATCH, finished

    with get_task_stream(client) as stream:
        resumed = run_cells([plate], tmp_path, client, bundle=bundle, fields_per_batch=FIELDS_PER_BATCH,
                            resume=True, exemplars_per_condition=0)
    keys = [str(t["key"]).split("-") for t in stream.data]
    cut = [(k[-3], int(k[-2])) for k in keys if k[0] == "cut"]
    assert sorted(cut) == sorted(every_field - finished)  # each unfinished field once, no finished one
    assert sum(k[0] == "score" for k in keys) == -(-len(cut) // FIELDS_PER_BATCH)
    for name in ("cells", "embeddings"):
        pd.testing.assert_frame_equal(_table(tmp_path, name), _table(uninterrupted.out, name))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "wells.parquet"),
                                  pd.read_parquet(uninterrupted.out / "wells.parquet"))
    pd.testing.assert_frame_equal(resumed.fields.drop(columns="seconds"),
                                  uninterrupted.fields.drop(columns="seconds"))


def _copy_bundle(bundle: Path, target: Path, change: str) -> Path:
    """A copy of ``bundle`` with its ``config.json`` or its attribute directions changed, sealed again: another
    bundle."""
    shutil.copytree(bundle, target)
    if change == "config":
        config = json.loads((target / "config.json").read_text())
        config["provenance"]["note"] = "retrained"
        (target / "config.json").write_text(json.dumps(config))
    else:
        (target / "explain" / "directions.json").write_text((bundle / "explain" / "directions.json").read_text() + "\n")
    seal_bundle(target)
    return target


@pytest.mark.parametrize("change", ["config", "explain"])
def test_resume_refuses_an_output_written_with_another_bundle(plate, bundle, client, uninterrupted, tmp_path,
                                                              change):
    other = _copy_bundle(bundle, tmp_path / "other", change)
    manifest = (uninterrupted.out / "manifest.json").stat().st_mtime_ns
    with pytest.raises(ScreenxaiError, match=r"cannot resume the run in .*: its bundle differ"):
        run_cells([plate], uninterrupted.out, client, bundle=other, resume=True)
    assert (uninterrupted.out / "manifest.json").stat().st_mtime_ns == manifest


def _config_hash(out: Path) -> str:
    """The manifest's ``config_hash``, checked to be the hash of the run record that ``--resume`` compares."""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == record_hash(json.loads((out / RUN_RECORD).read_text()))
    return manifest["config_hash"]


def test_the_manifest_config_hash_is_the_run_records_and_changes_with_the_wells(plate, client, uninterrupted,
                                                                               tmp_path):
    one = run_cells([plate], tmp_path / "one", client, wells=["A01", "B04"])
    other = run_cells([plate], tmp_path / "other", client, wells=["A01", "A04"])
    assert len({_config_hash(one.out), _config_hash(other.out), _config_hash(uninterrupted.out)}) == 3


def test_counterfactuals_render_the_typical_cells_of_every_well_when_asked(plate, uninterrupted):
    import xarray as xr

    dataset = xr.open_zarr(uninterrupted.out / "counterfactuals.zarr")
    wells = pd.Series(dataset["well"].values).value_counts().to_dict()
    assert wells == {well: PER_WELL for well in plate.layout["well"]}
    conditions = dict(zip(dataset["well"].values, dataset["condition"].values, strict=True))
    assert conditions == dict(zip(plate.layout["well"], plate.layout["control"], strict=True))
    # the cluster's reduction picks the cells pandas picks: nearest the well's mean probabilities, unseen ones first
    cells = _table(uninterrupted.out, "cells")
    means = uninterrupted.wells.set_index("well").loc[cells["well"], ["mean_p_negative", "mean_p_positive"]]
    offsets = cells[["p_negative", "p_positive"]].to_numpy() - means.to_numpy()
    nearest = cells.assign(distance=np.sqrt((offsets ** 2).sum(axis=1))) \
        .sort_values(["in_training", "distance", "cell_id"]).groupby("well").head(PER_WELL)
    assert sorted(dataset["cell"].values) == sorted(nearest["cell_id"])


def _drop_missing_chunk_counts(out: Path) -> None:
    """Make ``out`` look written before ``missing_chunks`` existed: no count or flag in its status rows and tables."""
    old = ("missing_chunks", "qc_missing_chunks")
    for marker in (out / "cells").glob("plate=*/well=*/.field-*.parquet.done"):
        row = json.loads(marker.read_text())
        marker.write_text(json.dumps({k: v for k, v in row.items() if k not in old}))
    for name in ("fields.parquet", "wells.parquet"):
        table = pd.read_parquet(out / name)
        table.drop(columns=[c for c in old if c in table]).to_parquet(out / name)


def test_a_resume_of_a_run_written_before_missing_chunks_counts_them_again(plate, client, tmp_path):
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate.url, copy)
    lost = ("A02", 1)
    array, path = open_plate(copy).image_array(*lost)
    (copy / path / array.metadata.encode_chunk_key((1, 0, 0, 0))).unlink()  # the field's reporter plane
    first = run_cells([open_plate(copy)], tmp_path / "out", client)
    _drop_missing_chunk_counts(tmp_path / "out")
    assert "missing_chunks" not in pd.read_parquet(tmp_path / "out" / "fields.parquet")

    resumed = run_cells([open_plate(copy)], tmp_path / "out", client, resume=True)
    markers = list((tmp_path / "out" / "cells").glob("plate=*/well=*/.field-*.parquet.done"))
    assert len(markers) == len(plate.field_keys())
    assert not any("missing_chunks" in json.loads(m.read_text()) for m in markers)  # counted, not recomputed
    fields = pd.read_parquet(tmp_path / "out" / "fields.parquet").set_index(["well", "field"])
    assert fields["missing_chunks"].dtype == "int64" and fields["qc_missing_chunks"].dtype == bool
    assert fields.index[fields["missing_chunks"] > 0].tolist() == [lost] and fields.loc[lost, "missing_chunks"] == 1
    assert fields.index[fields["qc_missing_chunks"]].tolist() == [lost]
    assert resumed.wells.set_index("well")["qc_missing_chunks"].to_dict() == \
        first.wells.set_index("well")["qc_missing_chunks"].to_dict()
    assert resumed.wells["qc_missing_chunks"].sum() == 1
