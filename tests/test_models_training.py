"""Presets and the two-stage training: progress reports, checkpoints, exact resume, bundling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from screenxai.models.bundle import load_bundle
from screenxai.models.classifier import predict_proba
from screenxai.models.presets import PRESETS, get_preset
from screenxai.models.train_autoencoder import AutoencoderTraining
from screenxai.models.train_classifier import ClassifierTraining
from screenxai.models.progress import TrainingDiverged
from screenxai.models.training import save_trained, train_models, validation_rows
from toy_cells import toy_cells

torch.set_num_threads(1)
# The tiny preset's recipe, shrunk to 16 px and a handful of steps (direction learning and the
# interpretable model too) so that a test trains in seconds.
MINI = replace(
    get_preset("tiny"), name="mini", crop_size=16,
    classifier=dict(width=8, stages=2),
    classifier_training=ClassifierTraining(epochs=2, batch_size=16, steps_per_epoch=3, patience=5),
    autoencoder={**get_preset("tiny").autoencoder, "latent_dim": 8, "z_dim": 8, "encoder_width": 8,
                 "encoder_stages": 2, "unet_channels": (16, 16)},
    autoencoder_training=AutoencoderTraining(pretrain_epochs=1, epochs=2, batch_size=8, steps_per_epoch=2),
    directions=dict(epochs=2, steps_per_epoch=10),
    interpretable=dict(vae_steps=40, sparse_steps=40, prune_steps=20, operon_generations=10))


@pytest.fixture(scope="module")
def cells():
    return toy_cells(wells_per_class=2, cells_per_well=20, size=16, doses=1, seed=0)


@pytest.fixture(scope="module")
def uninterrupted(cells):
    crops, table = cells
    reports = []
    return train_models(crops, table, MINI, seed=11, progress=reports.append), reports


def test_presets_exist_and_grow():
    assert set(PRESETS) == {"tiny", "small", "base"}
    assert get_preset("base").crop_size >= 64
    with pytest.raises(ValueError, match="known presets"):
        get_preset("huge")


def test_progress_reports_every_epoch_of_every_stage(uninterrupted):
    _, reports = uninterrupted
    assert [(r.stage, r.epoch, r.epochs) for r in reports] == [
        ("classifier", 0, 2), ("classifier", 1, 2), ("semantic", 0, 1), ("autoencoder", 0, 2), ("autoencoder", 1, 2)]
    assert all(r.eta_s >= 0 and np.isfinite(r.loss) for r in reports)
    assert reports[-1].eta_s == 0


def test_the_classifier_sees_the_control_classes_and_the_autoencoder_never_its_validation_wells(uninterrupted,
                                                                                                 cells):
    trained, _ = uninterrupted
    _, table = cells
    used = len(trained.classifier.split.train_index) + len(trained.classifier.split.val_index)
    assert used == (table["control"] != "dose").sum()
    assert trained.autoencoder.model.classifier is trained.classifier.model
    held_out = validation_rows(table, trained.classifier.split)
    assert 0 < held_out.sum() < len(table)
    assert set(zip(table["plate"][held_out], table["well"][held_out])) == set(trained.classifier.split.val_wells)
    assert all(np.isfinite(h["val_loss"]) for h in trained.autoencoder.history)


def test_stages_run_alone_and_the_autoencoder_stage_reuses_a_trained_classifier(cells, uninterrupted):
    crops, table = cells
    reference, _ = uninterrupted
    only_classifier = train_models(crops, table, MINI, seed=11, stages=["classifier"])
    assert only_classifier.autoencoder is None
    with pytest.raises(ValueError, match="needs a trained classifier"):
        train_models(crops, table, MINI, seed=11, stages=["autoencoder"])
    with pytest.raises(ValueError, match="unknown or no training stages"):
        train_models(crops, table, MINI, stages=["classifier", "explain"])
    later = train_models(crops, table, MINI, seed=11, stages=["autoencoder"], classifier=only_classifier.classifier)
    assert later.autoencoder.model.classifier is only_classifier.classifier.model
    for name, value in reference.autoencoder.model.state_dict().items():
        assert torch.equal(value, later.autoencoder.model.state_dict()[name]), name


def test_a_diverging_loss_stops_training_with_a_clear_error(cells):
    crops, table = cells
    poisoned = crops.copy()
    poisoned[table["control"].to_numpy() == "negative"] = np.nan
    with pytest.raises(TrainingDiverged, match="classifier training diverged in epoch 0"):
        train_models(poisoned, table, MINI, seed=11)


def test_wrong_crop_size_is_refused(cells):
    crops, table = cells
    with pytest.raises(ValueError, match="crop size 32"):
        train_models(crops, table, "tiny")


@pytest.mark.parametrize("stop_at", [("classifier", 0), ("autoencoder", 0)])
def test_interrupted_training_resumes_to_the_same_weights(cells, uninterrupted, tmp_path, stop_at):
    crops, table = cells
    reference, _ = uninterrupted

    def interrupt(progress):
        if (progress.stage, progress.epoch) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_models(crops, table, MINI, seed=11, progress=interrupt, checkpoint_dir=tmp_path)
    resumed_reports = []
    resumed = train_models(crops, table, MINI, seed=11, checkpoint_dir=tmp_path, progress=resumed_reports.append)
    assert (resumed_reports[0].stage, resumed_reports[0].epoch) == (stop_at[0], stop_at[1] + 1)
    for got, want in ((resumed.classifier.model, reference.classifier.model),
                      (resumed.autoencoder.model, reference.autoencoder.model)):
        for name, value in want.state_dict().items():
            assert torch.equal(value, got.state_dict()[name]), name


def test_trained_models_bundle_round_trip(cells, uninterrupted, tmp_path):
    crops, table = cells
    trained, _ = uninterrupted
    path = save_trained(tmp_path / "bundle", trained, table, ["DNA", "reporter"],
                        {"channel_names": ["DNA", "reporter"], "low": [0, 0], "high": [1, 1]})
    bundle = load_bundle(path)
    provenance = bundle.config["provenance"]
    assert provenance["preset"] == "mini" and provenance["seed"] == 11 and provenance["plates"] == ["toy"]
    assert len(provenance["wells"]) == 5
    np.testing.assert_array_equal(predict_proba(bundle["classifier"], crops[:8]),
                                  predict_proba(trained.classifier.model, crops[:8]))
    x = torch.from_numpy(crops[:4])
    assert torch.equal(bundle["autoencoder"].encode(x), trained.autoencoder.model.encode(x))
