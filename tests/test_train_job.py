"""``screenxai train``: crop cache filled by Dask tasks, training as a worker task, resume, stages, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from distributed import Client, LocalCluster

from screenxai.cli import main
from screenxai.models.bundle import load_bundle
from screenxai.models.classifier import predict_proba
from screenxai.models.presets import registered_preset
from screenxai.pipeline.crop_cache import CropCacheError, read_crop_cache
from screenxai.pipeline.cluster import gpu_resources
from screenxai.pipeline.train_job import TrainJobError, TrainSettings, train, work_folder
from screenxai.plate.reader import open_plate
from screenxai.plate.simulate import simulate_screen
from conftest import documented_columns
from test_models_training import MINI

SETTINGS = TrainSettings(preset="mini", stages=("classifier", "autoencoder"), seed=3, max_cells_per_well=40,
                         check_cells=16, check_steps=2)


@pytest.fixture(scope="module", autouse=True)
def mini_preset():
    """The 16 px test preset, known to in-process workers for this module."""
    with registered_preset(MINI):
        yield


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("train-job") / "plate.zarr"
    simulate_screen(path, rows=2, columns=4, fields=2, size=192, seed=5)
    return open_plate(path)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def first_run(plate, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "models"
    reports, fields = [], []
    result = train([plate], out, client, SETTINGS, on_field=fields.append, on_progress=reports.append,
                   keep_work=True)
    return result, reports, fields


def test_train_writes_a_bundle_with_both_models_and_a_summary(first_run, plate):
    result, _, fields = first_run
    bundle = load_bundle(result.bundle)
    assert set(bundle.models) == {"classifier", "autoencoder"}
    assert bundle.channel_names == tuple(plate.channel_names)
    provenance = bundle.config["provenance"]
    controls = plate.layout.loc[plate.layout["control"].isin(["negative", "positive"]), "well"]
    assert sorted(w.split("/")[1] for w in provenance["wells"]) == sorted(controls)
    summary = provenance["training_summary"]
    assert summary == result.summary
    assert 0 <= summary["classifier"]["accuracy"] <= 1
    assert summary["autoencoder"]["n_check_cells"] == 16
    assert np.isfinite(summary["autoencoder"]["final_val_loss"])
    assert set(summary["autoencoder"]["latent_use"]) >= {"own_error", "wrong_error", "improvement"}
    assert bundle.normalisation["plates"][plate.name]["channel_names"] == list(plate.channel_names)
    assert {f["status"] for f in fields} == {"cut"} and len(fields) == 2 * len(controls)


def test_cells_are_sampled_per_well_from_interior_cells_into_the_cache(first_run):
    result, _, _ = first_run
    crops, table, description = read_crop_cache(work_folder(result.bundle) / "cache")
    assert crops.shape[1:] == (2, 16, 16) and crops.dtype == np.float32 and len(crops) == len(table)
    assert crops.min() >= -1 and crops.max() <= 1
    assert not table["border"].any()
    assert table.groupby("well").size().max() <= 40
    assert {"control", "dose"} <= set(table.columns)  # the layout is joined to the cells
    assert description["max_cells_per_well"] == 40


def test_progress_of_the_worker_task_reaches_the_client(first_run):
    _, reports, _ = first_run
    assert [(r.stage, r.epoch) for r in reports] == [("classifier", 0), ("classifier", 1), ("semantic", 0),
                                                     ("autoencoder", 0), ("autoencoder", 1)]


def test_running_the_same_job_again_resumes_from_its_cache_and_checkpoints(first_run, plate, client):
    result, _, _ = first_run
    before = load_bundle(result.bundle)
    reports, fields = [], []
    again = train([plate], result.bundle, client, SETTINGS, on_field=fields.append, on_progress=reports.append)
    assert {f["status"] for f in fields} == {"cached"}
    assert reports == []  # every epoch was already checkpointed
    assert not work_folder(again.bundle).exists()
    after = load_bundle(again.bundle)
    for role in ("classifier", "autoencoder"):
        for name, value in before[role].state_dict().items():
            assert torch.equal(value, after[role].state_dict()[name]), (role, name)


def test_a_work_folder_of_other_cells_is_refused(plate, client, tmp_path):
    out = tmp_path / "models"
    work_folder(out).mkdir()
    (work_folder(out) / "settings.json").write_text(json.dumps({"cells": {"preset": "other"}}))
    with pytest.raises(TrainJobError, match="on other cells"):
        train([plate], out, client, SETTINGS)


def test_a_cache_of_other_settings_is_refused(first_run, plate, client):
    from screenxai.pipeline.crop_cache import build_crop_cache

    result, _, _ = first_run
    cache = work_folder(result.bundle).with_name("other.work") / "cache"
    build_crop_cache([plate], cache, client, {plate.name: ["A01", "A04"]}, 16, max_cells_per_well=5)
    with pytest.raises(CropCacheError, match="other settings"):
        build_crop_cache([plate], cache, client, {plate.name: ["A01", "A04"]}, 16, max_cells_per_well=6)


def test_the_autoencoder_stage_alone_reuses_the_bundled_classifier(plate, client, tmp_path):
    out = tmp_path / "models"
    with pytest.raises(TrainJobError, match="need the classifier of an existing bundle"):
        train([plate], out, client, TrainSettings(preset="mini", stages=("autoencoder",)))
    train([plate], out, client, TrainSettings(preset="mini", stages=("classifier",), seed=3,
                                              max_cells_per_well=40))
    classifier_only = load_bundle(out)
    assert set(classifier_only.models) == {"classifier"}
    train([plate], out, client, TrainSettings(preset="mini", stages=("autoencoder",), seed=3, max_cells_per_well=40,
                                              check_cells=8, check_steps=2))
    both = load_bundle(out)
    assert set(both.models) == {"classifier", "autoencoder"}
    crops, _ = np.zeros((4, 2, 16, 16), np.float32), None
    np.testing.assert_array_equal(predict_proba(both["classifier"], crops),
                                  predict_proba(classifier_only["classifier"], crops))


def test_unknown_wells_and_missing_classes_are_named(plate, client, tmp_path):
    with pytest.raises(TrainJobError, match=r"has no well\(s\) \['H12'\]"):
        train([plate], tmp_path / "a", client, TrainSettings(preset="mini", wells={plate.name: ["A01", "H12"]}))
    with pytest.raises(TrainJobError, match=r"no well has control = \[.drug., .mock.\]"):
        train([plate], tmp_path / "b", client, TrainSettings(preset="mini", class_names=("mock", "drug")))


def test_gpu_resources_are_found_only_on_a_cluster_whose_workers_declare_a_gpu(client):
    assert gpu_resources(client) is None
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      resources={"GPU": 1}) as cluster, Client(cluster) as gpu_client:
        assert gpu_resources(gpu_client) == {"GPU": 1}


def test_train_command_trains_on_a_scheduler_and_prints_the_summary(plate, client, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["train", plate.url, "-o", str(out), "--preset", "mini",
                                       "--scheduler", client.scheduler.address, "--max-cells-per-well", "30"])
    assert result.exit_code == 0, result.output
    assert "classifier, validation wells" in result.output and "accuracy" in result.output
    assert "held-out cells, own z_sem decodes" in result.output
    assert re.search(r"^stage 3/5, autoencoder epoch 2/2: loss [\d.]+, validation [\d.]+, \d+ s left in this stage$",
                     result.output, re.MULTILINE), result.output  # whole lines: a log is not wrapped at 80 columns
    assert "stage 2/5, semantic epoch 1/1" in result.output
    assert set(load_bundle(out).models) == {"classifier", "autoencoder"}
    explain = json.loads((out / "explain" / "directions.json").read_text())["config"]
    formula = json.loads((out / "interpretable" / "interpretable.json").read_text())["config"]
    assert {k: explain[k] for k in MINI.directions} == MINI.directions  # the preset's schedules, not the defaults
    assert {k: formula[k] for k in MINI.interpretable} == MINI.interpretable


def test_train_command_reports_bad_input_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "missing.zarr" in result.output
    result = CliRunner().invoke(main, ["train", str(tmp_path / "missing.zarr"), "-o", "b", "--preset", "huge"])
    assert result.exit_code == 2 and "known presets" in result.output


def test_interpret_command_fits_a_formula_into_the_bundle(plate, client, tmp_path):
    import pandas as pd

    from screenxai.interpret import load_interpretable
    from screenxai.pipeline.crop_cache import read_crop_cache

    out = tmp_path / "bundle"
    train([plate], out, client, TrainSettings(preset="mini", stages=("classifier",), seed=3, max_cells_per_well=40),
          keep_work=True)
    crops, _, _ = read_crop_cache(work_folder(out) / "cache")
    result = CliRunner().invoke(main, ["interpret", str(out), plate.url, "--scheduler", client.scheduler.address,
                                       "--max-cells-per-well", "40", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "formula (" in result.output and "fidelity" in result.output
    vae_steps = MINI.interpretable["vae_steps"]  # the preset's schedule, not InterpretConfig's default
    for step in (rf"VAE {vae_steps}/{vae_steps}, \d+ s left in this step", r"sparse network 1/1", r"formula 1/1",
                 r"adversarial sweep 1/1 \(positive\)"):
        assert re.search(rf"^interpretable: {step}$", result.output, re.MULTILINE), result.output
    model = load_interpretable(out / "interpretable")
    table = pd.read_parquet(out / "interpretable" / "interpretable.parquet")
    assert table["formula"].iloc[0] == model.formula and table["complexity"].iloc[0] <= 15
    assert 0 <= table["agreement"].iloc[0] <= 1
    assert model.predict(crops[:8]).shape == (8,)
    sweep = pd.read_parquet(out / "interpretable" / "adversarial.parquet")
    assert set(sweep["target"]) == {"blackbox", "formula"}
    for _, rows in sweep.groupby("target"):
        assert rows["flip_rate"].is_monotonic_increasing
    assert set(load_bundle(out).models) == {"classifier"}  # the bundle's own models are untouched
    documented = documented_columns("bundle.md", "interpretable.parquet")
    assert list(table.columns) == list(documented)
    for column, dtype in documented.items():
        kind = "string" if pd.api.types.is_string_dtype(table[column].dtype) else str(table[column].dtype)
        assert kind == dtype, column



def test_interpret_command_refuses_plates_the_bundle_was_not_trained_on(first_run, tmp_path):
    other = tmp_path / "other.zarr"
    simulate_screen(other, rows=2, columns=4, fields=1, size=128, seed=9)
    result, _, _ = first_run
    outcome = CliRunner().invoke(main, ["interpret", str(result.bundle), str(other)])
    assert outcome.exit_code == 2 and "were not used to train" in outcome.output
