"""One formula per treatment against the negative control, on a small synthetic three-class screen.

Each cell is a blob in two channels whose brightness is a planted factor:
``DNA`` brightness is raised by treatment ``bright_dna``, ``reporter``
brightness by ``bright_reporter`` (wells of a fourth compound, raising both,
are unlabelled cells the VAE also learns from). The black box is a fixed
softmax reader that scores each treatment by its own channel, so every
treatment's formula has a known feature to find.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from screenxai.interpret import (InterpretConfig, InterpretError, InterpretStoreError, TreatmentModels,
                                 adversarial_check, fit_interpretable, fit_treatments, flip_budgets,
                                 load_interpretable, save_interpretable)
from screenxai.interpret.treatments import name_latents, view_of
from screenxai.models.classifier import predict_proba
from screenxai.pipeline.train_job import StepReporter, interpretable_table
from conftest import documented_columns

torch.set_num_threads(1)

CLASSES = ("DMSO", "bright_dna", "bright_reporter")
CHANNELS = ("DNA", "reporter")
FEATURES = ["DNA_nucleus_mean", "reporter_nucleus_mean"]
OWN_FEATURE = {"bright_dna": "DNA_nucleus_mean", "bright_reporter": "reporter_nucleus_mean"}
CONFIG = InterpretConfig(latent_dim=3, vae_width=16, vae_steps=800, hidden=8, max_active=1, sparse_steps=150,
                         prune_steps=40, operon_population=100, operon_generations=10, seed=0)
TWO_CLASS_COLUMNS = ["formula", "complexity", "positive_class", "inputs", "latent_features", "accuracy_blackbox",
                     "accuracy_sparse", "accuracy_formula", "fidelity", "agreement", "n_heldout_cells",
                     "n_heldout_wells", "parameters_blackbox", "parameters_sparse", "flip_budget_blackbox",
                     "flip_budget_formula"]


def synthetic_screen(seed: int, wells: int = 16, cells: int = 60) -> tuple[np.ndarray, pd.DataFrame]:
    """16 px two-channel crops of a bright blob and their table; the blob's brightness per channel is the feature."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    blob = np.exp(-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / 18.0)
    crops, tables = [], []
    for w in range(wells):
        compound = (*CLASSES, "both")[w % 4]
        dna = rng.normal(0, 0.15, cells) + (0.6 if compound in ("bright_dna", "both") else 0)
        reporter = rng.normal(0, 0.15, cells) + (0.6 if compound in ("bright_reporter", "both") else 0)
        image = np.stack([dna[:, None, None] * blob, reporter[:, None, None] * blob], 1)
        crops.append((image + rng.normal(0, 0.05, image.shape)).clip(-1, 1).astype(np.float32))
        tables.append(pd.DataFrame({"plate": "p", "well": f"W{w:02d}", "compound": compound,
                                    FEATURES[0]: dna, FEATURES[1]: reporter}))
    return np.concatenate(crops), pd.concat(tables, ignore_index=True)


class ChannelReader(torch.nn.Module):
    """Softmax over the screen's classes: each treatment's logit reads its own channel's central brightness.

    With ``n_classes=2`` it is the two-class reader of ``DMSO`` against ``bright_dna``.
    """

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(8.0))
        self.config = type("Config", (), {"n_classes": n_classes})()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        centre = crops[:, :, 6:10, 6:10].mean((2, 3))
        logits = torch.stack([torch.zeros(len(crops)), self.gain * (centre[:, 0] - 0.3),
                              self.gain * (centre[:, 1] - 0.3)], 1)
        return logits[:, :self.config.n_classes]


@pytest.fixture(scope="module")
def screen():
    return synthetic_screen(0), synthetic_screen(1)


@pytest.fixture(scope="module")
def fitted(screen):
    (crops, table), heldout = screen
    calls = []
    models = fit_treatments(crops, table, ChannelReader(), CONFIG, "compound", CLASSES, heldout=heldout,
                            on_step=lambda *args: calls.append(args))
    name_latents(models, crops, table, FEATURES, CHANNELS)
    return models, calls


def pair_cells(data: tuple[np.ndarray, pd.DataFrame], treatment: str) -> tuple[np.ndarray, pd.DataFrame]:
    crops, table = data
    rows = table["compound"].isin((CLASSES[0], treatment)).to_numpy()
    return crops[rows], table[rows].reset_index(drop=True)


def test_the_view_is_the_black_box_odds_of_the_treatment_against_the_control():
    crops = synthetic_screen(2, wells=4, cells=10)[0]
    full = predict_proba(ChannelReader(), crops)
    for k, treatment in enumerate(CLASSES[1:], start=1):
        pair = predict_proba(view_of(ChannelReader(), CLASSES, treatment), crops)
        np.testing.assert_allclose(pair[:, 1], full[:, k] / (full[:, k] + full[:, 0]), rtol=1e-5)


def test_each_treatment_gets_its_own_formula_in_class_order(fitted):
    models, calls = fitted
    assert models.treatments == list(CLASSES[1:])
    assert calls == [*(("VAE", k * 80, 800) for k in range(1, 11)),
                     ("formula (bright_dna)", 1, 2), ("formula (bright_reporter)", 2, 2)]
    for treatment, model in models.models.items():
        assert model.class_names == (CLASSES[0], treatment) and model.report["positive_class"] == treatment
        assert model.vae is models.vae  # one VAE, shared
        assert model.distilled.variables


def test_each_formula_reads_its_own_treatments_feature_on_held_out_cells(fitted, screen):
    """On the held-out cells of the control and t, t's formula follows t's channel, far more than the other one."""
    models, _ = fitted
    for treatment, model in models.models.items():
        crops, table = pair_cells(screen[1], treatment)
        value = model.logit(crops)
        own = spearmanr(value, table[OWN_FEATURE[treatment]]).statistic
        other = spearmanr(value, table[next(f for f in FEATURES if f != OWN_FEATURE[treatment])]).statistic
        assert own > 0.7 and own - abs(other) > 0.3, (treatment, model.formula, own, other)
        assert model.report["heldout"]["agreement"] > 0.8, model.report["heldout"]


def test_every_latent_a_formula_uses_is_named_by_its_treatments_feature(fitted):
    models, _ = fitted
    for treatment, model in models.models.items():
        named = pd.DataFrame(model.report["latent_features"])
        assert list(named["latent"]) == model.distilled.variables
        assert set(named["feature"]) == {OWN_FEATURE[treatment]}, (treatment, named)
        assert (named["spearman"].abs() > 0.6).all()
        assert set(named["label"]) == {f"{OWN_FEATURE[treatment].split('_')[0]} in the nucleus"}


def test_held_out_figures_are_on_the_two_classes_only(fitted, screen):
    models, _ = fitted
    heldout_table = screen[1][1]
    for treatment, model in models.models.items():
        n_pair = int(heldout_table["compound"].isin((CLASSES[0], treatment)).sum())
        assert model.report["cells"]["heldout"] == n_pair
        assert model.report["wells"]["heldout"] == 8
    assert models.report["cells"]["vae_train"] == len(screen[0][1])  # every training crop, "both" wells included


def test_round_trip_of_the_treatment_models(fitted, screen, tmp_path):
    models, _ = fitted
    folder = save_interpretable(models, tmp_path / "interpretable")
    assert sorted(p.name for p in folder.iterdir()) == ["interpretable.json", "sparse-1.safetensors",
                                                        "sparse-2.safetensors", "vae.safetensors"]
    loaded = load_interpretable(folder)
    assert isinstance(loaded, TreatmentModels) and loaded.class_names == CLASSES
    crops = screen[1][0][:200]
    pd.testing.assert_frame_equal(loaded.logits(crops), models.logits(crops))
    for treatment, model in models.models.items():
        again = loaded.models[treatment]
        assert again.formula == model.formula and again.class_names == model.class_names
        np.testing.assert_array_equal(again.sparse_logit(crops), model.sparse_logit(crops))
        assert again.report["heldout"] == model.report["heldout"]


def test_damaged_or_unknown_treatment_folders_are_refused(fitted, tmp_path):
    models, _ = fitted
    folder = save_interpretable(models, tmp_path / "interpretable")
    with (folder / "sparse-2.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InterpretStoreError, match="sparse-2.safetensors is corrupt"):
        load_interpretable(folder)
    document = json.loads((folder / "interpretable.json").read_text())
    (folder / "interpretable.json").write_text(json.dumps({**document, "format_version": 3}))
    with pytest.raises(InterpretStoreError, match="format version 3; this screenxai reads 1 to 2"):
        load_interpretable(folder)
    (folder / "interpretable.json").write_text(json.dumps({**document, "layout": "pairs"}))
    with pytest.raises(InterpretStoreError, match="no layout 'pairs'"):
        load_interpretable(folder)


def test_a_two_class_model_keeps_layout_one(screen, tmp_path):
    (crops, table), heldout = screen
    quick = replace(CONFIG, vae_steps=30, max_active=1)
    model = fit_interpretable(crops, table, ChannelReader(2), quick, "compound", CLASSES[:2], heldout=heldout)
    folder = save_interpretable(model, tmp_path / "interpretable")
    assert json.loads((folder / "interpretable.json").read_text())["format_version"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["interpretable.json", "sparse.safetensors",
                                                        "vae.safetensors"]
    assert load_interpretable(folder).formula == model.formula


def test_a_two_class_fit_reports_its_vae_sparse_and_formula_steps(screen):
    (crops, table), heldout = screen
    steps = []
    fit_interpretable(crops, table, ChannelReader(2), replace(CONFIG, vae_steps=30), "compound", CLASSES[:2],
                      heldout=heldout, on_step=lambda *args: steps.append(args))
    assert steps == [*(("VAE", k * 3, 30) for k in range(1, 11)), ("sparse network", 1, 1), ("formula", 1, 1)]


def _attacked_report(models: TreatmentModels, heldout: tuple[np.ndarray, pd.DataFrame]) -> dict:
    """The report ``train`` builds: every treatment's report with its adversarial sweep's flip budgets."""
    crops, table = heldout
    for treatment, model in models.models.items():
        rows = np.flatnonzero(table["compound"].isin(model.class_names).to_numpy())[::40]
        labels = (table["compound"].to_numpy()[rows] == treatment).astype(np.int64)
        sweep = adversarial_check(model, view_of(ChannelReader(), CLASSES, treatment), crops[rows], labels,
                                  budgets=(0.1, 0.4), steps=3)
        model.report["adversarial"] = {"cells": len(rows), "half_flip_budget": flip_budgets(sweep)}
    return {**models.report, "treatments": [{"treatment": t, **m.report} for t, m in models.models.items()]}


def test_the_interpretable_table_has_one_row_per_treatment_and_survives_parquet(fitted, screen, tmp_path):
    models, _ = fitted
    table = interpretable_table(_attacked_report(models, screen[1]))
    assert list(table["treatment"]) == list(CLASSES[1:]) and list(table["positive_class"]) == list(CLASSES[1:])
    assert list(table["formula"]) == [m.formula for m in models.models.values()]
    assert all(OWN_FEATURE[t].split("_")[0] in text for t, text in zip(table["treatment"], table["latent_features"]))
    documented = documented_columns("bundle.md", "interpretable.parquet")
    assert list(table.columns) == list(documented)
    table.to_parquet(tmp_path / "interpretable.parquet")
    back = pd.read_parquet(tmp_path / "interpretable.parquet")
    pd.testing.assert_frame_equal(back, table)
    for column, dtype in documented.items():
        kind = "string" if pd.api.types.is_string_dtype(back[column].dtype) else str(back[column].dtype)
        assert kind == dtype, column


def test_the_two_class_table_only_gains_the_treatment_column(fitted, screen):
    models, _ = fitted
    report = _attacked_report(models, screen[1])["treatments"][0]
    table = interpretable_table(report)
    assert len(table) == 1 and list(table.columns) == ["treatment", *TWO_CLASS_COLUMNS]
    assert table["treatment"].iloc[0] == table["positive_class"].iloc[0] == "bright_dna"


def test_bad_inputs_are_refused(screen):
    (crops, table), _ = screen
    with pytest.raises(InterpretError, match="at least 2 distinct treatments"):
        fit_treatments(crops, table, ChannelReader(), CONFIG, "compound", CLASSES[:2])
    with pytest.raises(InterpretError, match="tells 2 classes apart, not the 3"):
        view_of(ChannelReader(2), CLASSES, "bright_dna")
    with pytest.raises(InterpretError, match="rows in the cell table"):
        fit_treatments(crops[:5], table, ChannelReader(), CONFIG, "compound", CLASSES)


def test_a_trained_treatment_screen_has_a_formula_per_treatment_in_bundle_run_and_report(treatment_screen, tmp_path):
    """``train`` on the simulated treatments design fits every treatment's formula; ``run`` and the report show them."""
    from html import escape

    from screenxai.models.bundle import load_bundle
    from screenxai.report.builder import build_report

    treatments = list(load_bundle(treatment_screen.bundle).class_names[1:])
    models = load_interpretable(treatment_screen.bundle / "interpretable")
    assert isinstance(models, TreatmentModels) and models.treatments == treatments
    table = pd.read_parquet(treatment_screen.out / "interpretable.parquet")
    assert list(table["treatment"]) == treatments
    assert list(table["formula"]) == [models.models[t].formula for t in treatments]
    assert list(table.columns) == list(documented_columns("bundle.md", "interpretable.parquet"))
    assert table["latent_features"].str.contains("Spearman").all()
    assert ((table["fidelity"] > 0) & (table["agreement"] > 0)).all()
    sweep = pd.read_parquet(treatment_screen.bundle / "interpretable" / "adversarial.parquet")
    assert sweep.groupby("treatment")["target"].apply(set).to_dict() == {t: {"blackbox", "formula"}
                                                                        for t in treatments}
    cells = pd.read_parquet(next((treatment_screen.out / "cells").rglob("*.parquet")))
    assert "formula_value" not in cells  # one formula per treatment: no single per-cell value
    html = build_report(treatment_screen.out, tmp_path / "report.html").read_text()
    for row in table.itertuples():
        assert f"<h4>{escape(row.treatment)}</h4>" in html and escape(row.formula) in html
        assert f"{row.fidelity:.3f}" in html


def _report_two_treatments() -> None:
    reporter = StepReporter("interpretable")
    reporter("formula (bright_dna)", 1, 2)
    reporter("formula (bright_reporter)", 2, 2)


def test_the_stage_reports_each_treatments_formula_to_the_client():
    """Run on a real worker, the stage's reporter sends one progress event per formula, printed with its treatment."""
    from io import StringIO

    from rich.console import Console

    from conftest import in_process_cluster
    from screenxai.cli import StagePlace, _epoch_printer
    from screenxai.pipeline.train_job import TRAIN_TOPIC, _as_progress

    with in_process_cluster() as client:
        client.submit(_report_two_treatments, pure=False).result()
        deadline = time.monotonic() + 10
        while len(client.get_events(TRAIN_TOPIC)) < 2 and time.monotonic() < deadline:  # events travel batched
            time.sleep(0.05)
        events = [_as_progress(message) for _, message in client.get_events(TRAIN_TOPIC)]
    assert [(p.stage, p.epoch, p.epochs) for p in events] == [
        ("interpretable: formula (bright_dna)", 0, 2),
        ("interpretable: formula (bright_reporter)", 1, 2)]
    assert np.isnan(events[0].eta_s) and events[1].eta_s >= 0
    printed = StringIO()
    printer = _epoch_printer(Console(file=printed, width=200).print, StagePlace(["classifier", "interpretable"]))
    for progress in events:
        printer(progress)
    lines = printed.getvalue().splitlines()
    assert lines[0] == "stage 2/2, interpretable: formula 1/2 (bright_dna)"
    assert re.fullmatch(r"stage 2/2, interpretable: formula 2/2 \(bright_reporter\), \d+ s left in this step", lines[1])
