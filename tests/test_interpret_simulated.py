"""Issue 6 on the simulated screen: disentanglement, fidelity, a non-trivial short formula, round trip, attacks.

The interpretable model is fitted once on the training plate (seed 0) and
scored on the held-out plate (seed 1), whose wells no model has seen.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import sympy
import torch

from screenxai.interpret import (
    InterpretConfig,
    adversarial_check,
    disentanglement_score,
    fit_interpretable,
    flip_budgets,
    load_interpretable,
    node_count,
    save_interpretable,
    train_tcvae,
)
from screenxai.interpret.tcvae import TCVAEConfig, encode_means

CLASSES = ("negative", "positive")
FACTORS = ["translocation", "nuclear_area", "texture"]
CONFIG = InterpretConfig(seed=0)


def control_cells(cells: tuple[np.ndarray, pd.DataFrame]) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Crops, table and class index of the negative and positive control cells."""
    crops, table = cells
    keep = table["control"].isin(CLASSES).to_numpy()
    labels = (table.loc[keep, "control"] == "positive").to_numpy().astype(np.int64)
    return crops[keep], table[keep].reset_index(drop=True), labels


@pytest.fixture(scope="module")
def fitted(simulated_train_cells, simulated_test_cells, tiny_models):
    torch.set_num_threads(1)
    crops, table = simulated_train_cells
    return fit_interpretable(crops, table, tiny_models.classifier, CONFIG, heldout=simulated_test_cells)


@pytest.mark.acceptance
def test_fidelity_and_agreement_on_held_out_plate(fitted):
    heldout = fitted.report["heldout"]
    assert heldout["fidelity"] >= 0.95, fitted.report
    assert heldout["agreement"] >= 0.9, fitted.report
    assert fitted.report["cells"]["heldout"] > 500 and fitted.report["wells"]["heldout"] == 8


@pytest.mark.acceptance
def test_formula_is_short_and_over_few_latents(fitted):
    assert fitted.complexity == node_count(sympy.sympify(fitted.formula)) <= 15
    assert len(fitted.selected) <= 5
    used = {int(name[1:]) for name in fitted.distilled.variables}
    assert used and used <= set(fitted.selected)


@pytest.mark.acceptance
def test_formula_is_not_trivial(fitted, simulated_test_cells):
    """A constant formula, or one ignoring its inputs, predicts one class and is blind to shuffled latents."""
    crops, _, labels = control_cells(simulated_test_cells)
    predicted = fitted.predict(crops)
    assert 0.2 < predicted.mean() < 0.8
    z = fitted.latents(crops)
    shuffled = z[np.random.default_rng(0).permutation(len(z))]
    inputs, shuffled_inputs = fitted.formula_inputs(z), fitted.formula_inputs(shuffled)
    own = (fitted.distilled.evaluate(inputs) > 0) == labels
    other = (fitted.distilled.evaluate(shuffled_inputs) > 0) == labels
    assert own.mean() - other.mean() > 0.3


def test_scores_are_probabilities_that_match_predictions(fitted, simulated_test_cells):
    crops = simulated_test_cells[0][:200]
    proba = fitted.predict_proba(crops)
    assert proba.shape == (200, 2) and np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(fitted.predict(crops), (fitted.score(crops) > 0.5).astype(int))


def test_save_load_round_trip_keeps_outputs(fitted, simulated_test_cells, tmp_path):
    crops = simulated_test_cells[0][:300]
    loaded = load_interpretable(save_interpretable(fitted, tmp_path / "interpretable"))
    assert loaded.formula == fitted.formula and loaded.selected == fitted.selected
    np.testing.assert_array_equal(loaded.latents(crops), fitted.latents(crops))
    np.testing.assert_array_equal(loaded.logit(crops), fitted.logit(crops))
    np.testing.assert_array_equal(loaded.sparse_logit(crops), fitted.sparse_logit(crops))
    assert loaded.report["heldout"] == fitted.report["heldout"]


@pytest.mark.acceptance
def test_tcvae_disentangles_better_than_a_plain_vae(fitted, simulated_train_cells, simulated_test_cells):
    """MIG over the planted factors on the held-out plate: beta-TCVAE above a beta=1 VAE trained the same way."""
    crops, table = simulated_train_cells
    config = TCVAEConfig(crops.shape[1], crops.shape[2], CONFIG.latent_dim, CONFIG.vae_width, CONFIG.texture_maps)
    plain, _ = train_tcvae(crops, config, 1.0, CONFIG.vae_steps, CONFIG.batch_size, CONFIG.lr, CONFIG.seed,
                           CONFIG.recon_weight)
    test_crops, test_table = simulated_test_cells
    factors = test_table[FACTORS]
    tc = disentanglement_score(fitted.latents(test_crops), factors)
    vae = disentanglement_score(encode_means(plain, test_crops), factors)
    assert tc["mean"] > vae["mean"], (tc, vae)


@pytest.mark.acceptance
def test_adversarial_check_table(fitted, tiny_models, simulated_test_cells):
    crops, _, labels = control_cells(simulated_test_cells)
    pick = np.random.default_rng(0).choice(len(crops), 40, replace=False)
    budgets = (0.01, 0.05, 0.2, 0.5)
    table = adversarial_check(fitted, tiny_models.classifier, crops[pick], labels[pick], budgets)
    expected = {"target", "budget", "n_cells", "flip_rate"} | {f"shift_z{d}" for d in range(CONFIG.latent_dim)} | {
        f"{kind}_{name}" for kind in ("delta", "formula_direction", "agrees") for name in FACTORS}
    assert expected <= set(table.columns)
    assert set(table["target"]) == {"blackbox", "formula"} and len(table) == 2 * len(budgets)
    for _, rows in table.groupby("target"):
        assert list(rows["budget"]) == list(budgets)
        assert np.all(np.diff(rows["flip_rate"].to_numpy()) >= 0)
    assert table.loc[table["target"] == "blackbox", "flip_rate"].max() > 0.5
    assert np.isfinite(flip_budgets(table)["blackbox"])


def test_attack_on_formula_moves_its_own_latents_most(fitted, simulated_test_cells, tiny_models):
    crops, _, labels = control_cells(simulated_test_cells)
    pick = np.random.default_rng(1).choice(len(crops), 24, replace=False)
    table = adversarial_check(fitted, tiny_models.classifier, crops[pick], labels[pick], (0.2,))
    shifts = table.loc[table["target"] == "formula", [f"shift_z{d}" for d in range(CONFIG.latent_dim)]].iloc[0]
    used = [f"shift_z{name[1:]}" for name in fitted.distilled.variables]
    assert shifts[used].abs().max() == shifts.abs().max()


def test_split_by_well_without_held_out_set(simulated_train_cells, tiny_models):
    """Without ``heldout`` the model is scored on wells the split put aside, and the VAE never sees them."""
    crops, table = simulated_train_cells
    quick = replace(CONFIG, vae_steps=20, sparse_steps=30, prune_steps=10, operon_generations=5)
    model = fit_interpretable(crops, table, tiny_models.classifier, quick)
    report = model.report
    assert report["heldout_source"] == "split_by_well"
    assert report["wells"]["heldout"] >= 2
    assert report["cells"]["vae_train"] + report["cells"]["heldout"] <= len(crops)
