"""Adversarial check: how much pixel change flips the black box, and the VAE -> formula model.

Projected gradient descent (PGD) with an L-infinity budget pushes each
correctly classified cell towards the other class, for every budget of a
sweep. A cell's flip budget is the smallest budget of the sweep at which
the attack succeeds (a larger budget allows any smaller perturbation), so
flip rates never fall as the budget grows. For every attacked image the
table also records how far the VAE latents moved (which features an attack
on the formula has to change, and which ones the black box's attack
changes) and how the cell's measured morphology moved, compared with the
direction the formula assigns to each feature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from screenxai.cells.central import measure_cell_factors
from screenxai.interpret.fit import InterpretableModel, as_crops, black_box_module, latent_name

DEFAULT_BUDGETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
MORPHOLOGY = ("translocation", "nuclear_area", "texture")
Margin = Callable[[torch.Tensor], torch.Tensor]


def pgd_attack(margin: Margin, crops: torch.Tensor, direction: torch.Tensor, budget: float,
               steps: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Attacked crops and whether each flipped, pushing ``direction * margin`` above 0 within ``budget``.

    ``margin`` is the positive-class logit margin of a batch; ``direction``
    is +1 for cells pushed towards the positive class, -1 towards the
    negative. A cell keeps the first image that flipped it.
    """
    step = 2.5 * budget / steps
    delta = torch.zeros_like(crops)
    best = crops.clone()
    flipped = torch.zeros(len(crops), dtype=torch.bool)
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        adversarial = (crops + delta).clamp(-1, 1)
        objective = margin(adversarial) * direction
        new = (objective.detach() > 0) & ~flipped
        best[new] = adversarial.detach()[new]
        flipped |= new
        if flipped.all():
            break
        (grad,) = torch.autograd.grad(objective.sum(), delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-budget, budget)
    best[~flipped] = (crops + delta.detach()).clamp(-1, 1)[~flipped]
    return best, flipped


def _blackbox_margin(classifier: nn.Module) -> Margin:
    def margin(x: torch.Tensor) -> torch.Tensor:
        logits = classifier(x)
        return logits[:, 1] - logits[:, 0]
    return margin


def formula_directions(model: InterpretableModel, crops: np.ndarray, morphology: pd.DataFrame) -> dict[str, float]:
    """Sign (+1/-1, 0 if unrelated) of the Spearman correlation of the formula's value with each feature.

    The direction the formula says a feature moves as a cell becomes more
    like the positive class.
    """
    logit = model.logit(crops)
    out = {}
    for name in morphology.columns:
        rho = spearmanr(logit, morphology[name].to_numpy()).statistic
        out[name] = float(np.sign(rho)) if np.isfinite(rho) else 0.0
    return out


def adversarial_check(model: InterpretableModel, classifier, crops: np.ndarray, labels: np.ndarray,
                      budgets: Sequence[float] = DEFAULT_BUDGETS, steps: int = 10, nuclear_channel: int = 0,
                      reporter_channel: int = 1) -> pd.DataFrame:
    """PGD budget sweep against the black box (``target="blackbox"``) and VAE -> formula (``"formula"``).

    ``labels`` (N,) are class indices in the model's ``class_names`` order;
    each target attacks the cells it classifies correctly, towards the other
    class. One row per target and budget: ``n_cells`` attacked,
    ``flip_rate`` (share of them whose flip budget is at most ``budget``),
    ``shift_z<d>`` (mean latent change towards the positive class, in SDs of
    that latent over the cells), ``delta_<feature>`` (mean change of the
    measured morphology towards the positive class, in SDs),
    ``formula_direction_<feature>`` and ``agrees_<feature>`` (whether the
    change has the sign the formula gives the feature). Channels name the
    crops' nuclear and reporter channels for ``measure_cell_factors``.
    """
    budgets = [float(b) for b in budgets]
    if not budgets or any(b <= 0 for b in budgets) or budgets != sorted(budgets):
        raise ValueError(f"budgets must be positive and increasing, got {budgets}")
    crops = as_crops(crops, model.vae.config.in_channels, model.vae.config.image_size)
    labels = np.asarray(labels, np.int64)
    if labels.shape != (len(crops),) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be {len(crops)} class indices 0 or 1, got shape {labels.shape}")
    black_box = black_box_module(classifier, model.class_names)
    was_training = black_box.training
    black_box.eval()
    try:
        return _sweep(model, black_box, crops, labels, budgets, steps, nuclear_channel, reporter_channel)
    finally:
        black_box.train(was_training)


def _sweep(model: InterpretableModel, black_box: nn.Module, crops: np.ndarray, labels: np.ndarray,
           budgets: list[float], steps: int, nuclear_channel: int, reporter_channel: int) -> pd.DataFrame:
    z = model.latents(crops)
    z_scale = z.std(0) + 1e-8
    morphology = measure_cell_factors(crops, nuclear_channel, reporter_channel)[list(MORPHOLOGY)]
    m_scale = morphology.std().to_numpy() + 1e-8
    expected = formula_directions(model, crops, morphology)
    margins: dict[str, Margin] = {"blackbox": _blackbox_margin(black_box), "formula": model.torch_logit}
    rows = []
    for target, margin in margins.items():
        with torch.no_grad():
            correct = (margin(torch.from_numpy(crops)) > 0).numpy().astype(np.int64) == labels
        x = torch.from_numpy(crops[correct])
        sign = np.where(labels[correct] == 1, -1.0, 1.0)
        ever = np.zeros(len(x), bool)
        for budget in budgets:
            adversarial, flipped = pgd_attack(margin, x, torch.from_numpy(sign).float(), budget, steps)
            ever |= flipped.numpy()
            adv = adversarial.detach().numpy()
            row = {"target": target, "budget": budget, "n_cells": len(x),
                   "flip_rate": float(ever.mean()) if len(x) else float("nan")}
            if len(x):
                shift = (model.latents(adv) - z[correct]) * sign[:, None] / z_scale
                moved = (measure_cell_factors(adv, nuclear_channel, reporter_channel)[list(MORPHOLOGY)].to_numpy()
                         - morphology.to_numpy()[correct]) * sign[:, None] / m_scale
            else:
                shift = np.full((1, z.shape[1]), np.nan)
                moved = np.full((1, len(MORPHOLOGY)), np.nan)
            row.update({f"shift_{latent_name(d)}": float(shift[:, d].mean()) for d in range(z.shape[1])})
            for i, name in enumerate(MORPHOLOGY):
                delta = float(moved[:, i].mean())
                row[f"delta_{name}"] = delta
                row[f"formula_direction_{name}"] = expected[name]
                row[f"agrees_{name}"] = bool(np.sign(delta) == expected[name] and expected[name] != 0)
            rows.append(row)
    return pd.DataFrame(rows)


def flip_budgets(table: pd.DataFrame, fraction: float = 0.5) -> dict[str, float]:
    """Per target, the smallest budget of the sweep that flips at least ``fraction`` of its cells (NaN: none)."""
    out = {}
    for target, rows in table.groupby("target", sort=False):
        enough = rows.loc[rows["flip_rate"] >= fraction, "budget"]
        out[str(target)] = float(enough.min()) if len(enough) else float("nan")
    return out
