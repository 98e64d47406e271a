"""The interpretable model's parts on small synthetic inputs: TC-VAE loss, MIG, sparse net, formula, PGD."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sympy
import torch

from screenxai.errors import ScreenxaiError
from screenxai.interpret import (
    Formula,
    FormulaError,
    InterpretConfig,
    InterpretError,
    disentanglement_score,
    fit_interpretable,
    node_count,
    pgd_attack,
)
from screenxai.interpret.formula import FormulaConfig, evaluate_torch, fit_formula
from screenxai.interpret.sparse import SparseConfig, sparse_logit, train_sparse
from scipy.stats import spearmanr

from screenxai.interpret.tcvae import (BetaTCVAE, TCVAEConfig, encode_means, reconstruction_mse, tcvae_loss,
                                       texture_maps, train_tcvae)
from screenxai.models.device import generator

torch.set_num_threads(1)


def test_tcvae_loss_weights_only_the_total_correlation_by_beta():
    torch.manual_seed(0)
    model = BetaTCVAE(TCVAEConfig(in_channels=2, image_size=32, latent_dim=4, width=8))
    x = torch.rand(16, 2, 32, 32) * 2 - 1
    plain = tcvae_loss(model, x, dataset_size=100, beta=1.0, gen=generator(3))
    tc_weighted = tcvae_loss(model, x, dataset_size=100, beta=5.0, gen=generator(3))
    assert all(torch.isfinite(v) for v in plain.values())
    assert torch.allclose(plain["loss"], plain["recon"] + plain["mi"] + plain["tc"] + plain["dim_kl"])
    assert torch.allclose(tc_weighted["loss"] - plain["loss"], 4.0 * plain["tc"], rtol=1e-4, atol=1e-3)


def test_tcvae_refuses_crops_not_divisible_by_eight():
    with pytest.raises(ValueError, match="divisible by 8"):
        BetaTCVAE(TCVAEConfig(in_channels=1, image_size=30))


def spotty_disks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-channel 32 px crops of a disk whose brightness and spottiness vary independently; and the spottiness.

    Spottiness is the SD of pixel noise inside the disk (0 to 0.4), drawn
    afresh per crop, so its spots sit at random places.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 10**2).astype(np.float32)
    brightness, spottiness = rng.uniform(0.2, 0.8, n), rng.uniform(0.0, 0.4, n)
    noise = rng.normal(size=(n, 32, 32)) * spottiness[:, None, None]
    crops = (-1 + disk * (brightness[:, None, None] + noise)).clip(-1, 1).astype(np.float32)
    return crops[:, None], spottiness


def test_texture_maps_are_high_on_spots_and_lowest_where_the_crop_is_flat():
    crops, spottiness = spotty_disks(16)
    x = torch.from_numpy(crops[np.argsort(spottiness)[[0, -1]]])  # the smoothest and the spottiest
    x[0] = 0.3  # flat: no fine detail anywhere
    maps = texture_maps(x)
    assert maps.shape == x.shape and maps.min() >= -1 and maps.max() <= 1
    assert torch.allclose(maps[0], torch.full_like(maps[0], -1.0), atol=1e-5)
    assert maps[1][:, 12:20, 12:20].mean() > maps[0].mean() + 0.5


def test_texture_maps_pass_finite_gradients_even_through_flat_crops():
    """Attacks on the interpretable model differentiate through the maps; a flat crop has no detail at all."""
    x = torch.zeros(1, 2, 32, 32, requires_grad=True)
    texture_maps(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_a_texture_map_vae_encodes_and_draws_the_maps_after_the_channels():
    torch.manual_seed(0)
    config = TCVAEConfig(in_channels=2, image_size=32, latent_dim=4, width=8, texture_maps=True)
    model = BetaTCVAE(config).eval()
    x = torch.rand(8, 2, 32, 32) * 2 - 1
    assert torch.equal(model.target(x), torch.cat([x, texture_maps(x)], dim=1))
    assert model.decode(model(x)).shape == (8, 4, 32, 32)
    assert np.isfinite(reconstruction_mse(model, x.numpy()))
    assert TCVAEConfig(**config.to_dict()) == config
    old = {k: v for k, v in config.to_dict().items() if k != "texture_maps"}
    assert TCVAEConfig(**old).texture_maps is False  # bundles saved before the option load as they were trained


def test_only_a_vae_with_texture_maps_encodes_how_spotty_a_cell_is():
    """Spots at random places cannot be drawn back from a few latents, so a pixel loss alone drops them."""
    crops, spottiness = spotty_disks(256)
    tracking = {}
    for maps in (False, True):
        config = TCVAEConfig(in_channels=1, image_size=32, latent_dim=4, width=8, texture_maps=maps)
        model, _ = train_tcvae(crops, config, beta=4.0, steps=150, seed=0, recon_weight=30.0)
        z = encode_means(model, crops)
        tracking[maps] = max(abs(spearmanr(z[:, j], spottiness).statistic) for j in range(z.shape[1]))
    assert tracking[True] >= 0.5 and tracking[True] > tracking[False] + 0.2, tracking


def test_disentanglement_rewards_one_dimension_per_factor():
    rng = np.random.default_rng(0)
    factors = pd.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000)})
    aligned = np.column_stack([factors["a"], factors["b"], rng.normal(size=2000)])
    mixed = np.column_stack([factors["a"] + factors["b"], factors["a"] - factors["b"], rng.normal(size=2000)])
    good, bad = disentanglement_score(aligned, factors), disentanglement_score(mixed, factors)
    assert good["a"] > 0.5 and good["b"] > 0.5
    assert bad["mean"] < 0.1 < good["mean"]
    assert good["mean"] == pytest.approx((good["a"] + good["b"]) / 2)


def test_disentanglement_rejects_bad_shapes():
    factors = pd.DataFrame({"a": np.arange(50.0)})
    with pytest.raises(ValueError, match="D >= 2"):
        disentanglement_score(np.zeros((50, 1)), factors)
    with pytest.raises(ValueError, match="factor rows"):
        disentanglement_score(np.zeros((40, 3)), factors)


def test_sparse_classifier_keeps_the_informative_inputs():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1500, 8)).astype(np.float32)
    target = (1 / (1 + np.exp(-(3 * z[:, 2] - 2 * z[:, 5])))).astype(np.float32)
    model = train_sparse(z, target, SparseConfig(max_active=3, steps=200, prune_steps=60))
    assert {2, 5} <= set(model.selected) and len(model.selected) <= 3
    agreement = ((sparse_logit(model, z) > 0) == (target > 0.5)).mean()
    assert agreement > 0.9
    assert model.n_nonzero() < sum(p.numel() for p in model.parameters())


def test_formula_text_node_count_and_evaluation_agree():
    formula = Formula.parse("1.5*z3 - 0.25*z1*z3 + 0.5")
    assert formula.variables == ["z1", "z3"]
    assert formula.complexity == node_count(sympy.sympify(formula.text))
    z1, z3 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 0.5])
    np.testing.assert_allclose(formula.evaluate({"z1": z1, "z3": z3}), 1.5 * z3 - 0.25 * z1 * z3 + 0.5)
    inputs = {"z1": torch.tensor(z1, requires_grad=True), "z3": torch.tensor(z3, requires_grad=True)}
    evaluate_torch(formula.expression, inputs, 3).sum().backward()
    np.testing.assert_allclose(inputs["z3"].grad.numpy(), 1.5 - 0.25 * z1)


def test_formula_parse_errors_are_clear():
    with pytest.raises(FormulaError, match="cannot read formula"):
        Formula.parse("z1 +* 2")
    with pytest.raises(FormulaError, match="needs input z9"):
        Formula.parse("z9 + 1").evaluate({"z1": np.zeros(2)})


def test_symbolic_regression_finds_a_short_formula_over_the_right_inputs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 3))
    target = 2 * x[:, 0] - 1.5 * x[:, 0] * x[:, 2] + 0.3
    formula = fit_formula(x, target, ["z0", "z4", "z7"], FormulaConfig(generations=20, population_size=200))
    assert formula.complexity <= 15
    assert "z0" in formula.variables
    values = formula.evaluate({"z0": x[:, 0], "z4": x[:, 1], "z7": x[:, 2]})
    assert ((values > 0) == (target > 0)).mean() > 0.95


def test_pgd_flips_a_linear_model_only_with_enough_budget():
    weights = torch.linspace(-1, 1, 2 * 8 * 8).reshape(2, 8, 8)

    def margin(x: torch.Tensor) -> torch.Tensor:
        return (x * weights).flatten(1).sum(1) - 1.0

    crops = torch.zeros(4, 2, 8, 8)
    direction = torch.ones(4)
    small, flipped_small = pgd_attack(margin, crops, direction, budget=0.001)
    large, flipped_large = pgd_attack(margin, crops, direction, budget=0.2)
    assert not flipped_small.any() and flipped_large.all()
    assert (large - crops).abs().max() <= 0.2 + 1e-6 and (small - crops).abs().max() <= 0.001 + 1e-6
    assert large.min() >= -1 and large.max() <= 1


def test_config_round_trip_and_validation():
    config = InterpretConfig(latent_dim=6, beta=4.0, max_active=3)
    assert InterpretConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        InterpretConfig.from_dict({**config.to_dict(), "epochs": 3})
    with pytest.raises(ValueError, match="target"):
        InterpretConfig(target="cells")
    with pytest.raises(ValueError, match="max_active"):
        InterpretConfig(latent_dim=4, max_active=5)


def test_fit_refuses_bad_input():
    crops = np.zeros((4, 2, 32, 32), np.float32)
    table = pd.DataFrame({"plate": "p", "well": ["A01", "A02", "B01", "B02"],
                          "control": ["negative", "negative", "positive", "positive"]})
    classifier = torch.nn.Linear(1, 2)
    with pytest.raises(InterpretError, match="2 classes"):
        fit_interpretable(crops, table, classifier, class_names=("negative", "positive", "dose"))
    with pytest.raises(InterpretError, match=r"\(N, C, S, S\)"):
        fit_interpretable(crops[:, 0], table, classifier)
    with pytest.raises(InterpretError, match="rows in the cell table"):
        fit_interpretable(crops[:3], table, classifier)
    with pytest.raises(InterpretError, match="2 classes"):
        fit_interpretable(crops, table, classifier, class_names=("negative", "negative"))
    with pytest.raises(InterpretError, match="trained on classes"):
        fit_interpretable(crops, table, SimpleNamespace(model=classifier, class_names=("dmso", "drug")))
    with pytest.raises(ScreenxaiError, match="no cell of class"):
        fit_interpretable(crops, table.assign(control="negative"), classifier)
