"""Global AttFind: rank directions by how much they move the classifier toward a target class.

Every cell of the sample is inverted once (its ``z_sem`` and ``x_T`` are
cached) and every (cell, direction, sign) is decoded once, with ``x_T``
fixed, and scored by the classifier; the greedy selection then runs on these
memoised scores only. Round r keeps the (direction, sign), among directions
not yet kept, with the largest mean gain of the target-class probability over
the cells still unexplained, and drops the cells it flips to the target
class. When every cell is explained, later rounds rank on all cells again.

The UNet evaluations this takes are counted on the autoencoder's own counter:
``N * T_inv + N * 2K * T_dec``. The reference procedure re-inverts the
remaining cells in every round and decodes ``2(K - r)`` edits of each; its
count for the same selection is reported beside ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from screenxai.explain.directions import Directions, direction_agreement
from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.classifier import predict_proba

MAX_ALPHA = 3.0  # edits stay within 3 SD of the cells' projection on the direction
SIGNS = (1, -1)
FIRST_GAIN_SHARE = 0.5  # a first direction takes rank 1 with at least this share of the best candidate's gain


@dataclass
class RankingCache:
    """What the ranking computed once per cell: latents, codes and memoised classifier probabilities.

    ``edited_proba[i, k, s]`` holds the class probabilities of cell i decoded
    with direction k at sign ``SIGNS[s]`` (N, K, 2, n_classes).
    """

    z_sem: torch.Tensor
    x_t: torch.Tensor
    proba: np.ndarray
    edited_proba: np.ndarray


@dataclass
class Ranking:
    """The kept attributes (one row each, best first), the cache and the UNet-evaluation accounting."""

    attributes: pd.DataFrame
    cache: RankingCache
    target_class: int
    alpha: float
    steps_inv: int
    steps_dec: int
    unet_evaluations: int
    reference_unet_evaluations: int

    @property
    def evaluation_ratio(self) -> float:
        """Our UNet evaluations over the reference procedure's for the same selection."""
        return self.unet_evaluations / self.reference_unet_evaluations


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_inputs(autoencoder: DiffusionAutoencoder, directions: Directions, crops: np.ndarray,
                  target_class: int, n_attributes: int, alpha: float) -> None:
    config = autoencoder.config
    expected = (config.in_channels, config.image_size, config.image_size)
    if crops.ndim != 4 or tuple(crops.shape[1:]) != expected or len(crops) == 0:
        raise ValueError(f"expected crops of shape (N >= 1, {', '.join(map(str, expected))}), got {crops.shape}")
    if not 0 <= target_class < config.n_classes:
        raise ValueError(f"target class {target_class} does not exist; the classifier has {config.n_classes} classes")
    if directions.z_dim != config.z_dim:
        raise ValueError(f"directions are for z_dim {directions.z_dim}, the autoencoder has {config.z_dim}")
    if not 1 <= n_attributes <= directions.n_directions:
        raise ValueError(f"cannot keep {n_attributes} attributes from {directions.n_directions} directions")
    if not 0 < alpha <= MAX_ALPHA:
        raise ValueError(f"alpha must lie in (0, {MAX_ALPHA}] SD, got {alpha}")


def build_cache(autoencoder: DiffusionAutoencoder, directions: Directions, crops: np.ndarray, alpha: float,
                steps_inv: int, steps_dec: int, batch_size: int = 256,
                on_direction: Callable[[int, int], None] | None = None) -> RankingCache:
    """Invert each cell once, then decode and score every (cell, direction, sign) once.

    ``on_direction(done, total)`` is called after each direction's decodes.
    """
    device = model_device(autoencoder)
    x = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(device)
    batches = range(0, len(x), batch_size)
    directions = directions.to(device)
    with torch.no_grad():
        z = torch.cat([autoencoder.encode(x[i:i + batch_size]) for i in batches])
        x_t = torch.cat([autoencoder.invert(x[i:i + batch_size], z[i:i + batch_size], steps_inv) for i in batches])
        edited = np.empty((len(x), directions.n_directions, len(SIGNS), autoencoder.config.n_classes), np.float32)
        for k in range(directions.n_directions):
            for s, sign in enumerate(SIGNS):
                z_edit = directions.edit(z, k, sign * alpha)
                images = torch.cat([autoencoder.decode(x_t[i:i + batch_size], z_edit[i:i + batch_size], steps_dec)
                                    for i in batches])
                edited[:, k, s] = predict_proba(autoencoder.classifier, images, batch_size)
            if on_direction is not None:
                on_direction(k + 1, directions.n_directions)
    return RankingCache(z.cpu(), x_t.cpu(), predict_proba(autoencoder.classifier, x, batch_size), edited)


def attribute_id(direction: int, sign: int) -> str:
    """The id of the attribute that edits along ``direction`` with ``sign``: ``d3p`` (plus) or ``d3n`` (minus)."""
    return f"d{int(direction)}{'p' if sign > 0 else 'n'}"


def axis_cosines(directions: Directions) -> np.ndarray:
    """|cosine| between the mean axes of every pair of directions (K, K): 1 means the same axis, either sign."""
    axes = torch.nn.functional.normalize(directions.axes.detach().cpu().float(), dim=1)
    return (axes @ axes.T).abs().numpy()


def select_attributes(cache: RankingCache, target_class: int, n_attributes: int, threshold: float,
                      steps_inv: int, steps_dec: int, cosines: np.ndarray | None = None,
                      max_cosine: float = 1.0, exclude: frozenset[int] = frozenset(),
                      eligible: np.ndarray | None = None, first: int | None = None) -> pd.DataFrame:
    """Greedy selection on memoised scores; one row per kept attribute with the reference's cost of its round.

    A direction whose axis has |cosine| of at least ``max_cosine`` with a kept
    one's (``cosines``, from ``axis_cosines``) is the same change and is not
    a candidate; neither are the directions in ``exclude``, nor the
    (direction, sign) pairs that ``eligible`` (K, 2), when given, marks False.
    ``first``: a direction whose plus sign takes rank 1 when it is a
    candidate above ``threshold`` whose gain is at least ``FIRST_GAIN_SHARE``
    of the best candidate's (a treatment's own contrast direction, preferred
    among edits that move the classifier comparably); the greedy choice by
    mean gain goes on after it.
    """
    n_cells, n_directions = cache.edited_proba.shape[:2]
    gain = cache.edited_proba[..., target_class] - cache.proba[:, None, None, target_class]
    flips = cache.edited_proba.argmax(-1) == target_class
    remaining = np.ones(n_cells, bool)
    rows: list[dict] = []
    for r in range(n_attributes):
        pool = remaining if remaining.any() else np.ones(n_cells, bool)
        candidates = np.full((n_directions, len(SIGNS)), -np.inf)
        free = _free_directions(n_directions, [row["direction"] for row in rows], cosines, max_cosine, exclude)
        if not free:
            break
        candidates[free] = gain[pool][:, free].mean(0)
        if eligible is not None:
            candidates[~eligible] = -np.inf
        k, s = np.unravel_index(np.argmax(candidates), candidates.shape)
        if r == 0 and first is not None and candidates[first, 0] >= max(threshold,
                                                                       FIRST_GAIN_SHARE * candidates[k, s]):
            k, s = first, 0
        if candidates[k, s] < threshold:
            break
        explained = remaining & flips[:, k, s]
        rows.append({
            "rank": r + 1, "attribute": attribute_id(k, SIGNS[s]), "direction": int(k), "sign": SIGNS[s],
            "target_class": target_class,
            "n_cells": int(pool.sum()), "mean_delta_p": float(candidates[k, s]),
            "flip_rate": float(flips[pool, k, s].mean()), "mean_delta_p_all": float(gain[:, k, s].mean()),
            "flip_rate_all": float(flips[:, k, s].mean()), "explained": int(explained.sum()),
            "unet_evaluations": n_cells * len(SIGNS) * steps_dec,
            "reference_unet_evaluations": int(pool.sum()) * (steps_inv + len(SIGNS) * (n_directions - r) * steps_dec),
        })
        remaining &= ~explained
    if not rows:
        raise ValueError(f"no direction raises the target-class probability by the threshold {threshold}")
    table = pd.DataFrame(rows)
    table["coverage"] = np.cumsum(table["explained"]) / n_cells
    return table


def _free_directions(n_directions: int, kept: list[int], cosines: np.ndarray | None, max_cosine: float,
                     exclude: frozenset[int]) -> list[int]:
    """Directions still candidates: not kept, not excluded, and (with ``cosines``) off every kept axis."""
    free = [k for k in range(n_directions) if k not in kept and k not in exclude]
    if cosines is None or not kept:
        return free
    return [k for k in free if cosines[k, kept].max() < max_cosine]


def nearest_better_attribute(directions: Directions, table: pd.DataFrame) -> pd.DataFrame:
    """For each kept attribute, the better-ranked one whose signed mean axis is closest, and that cosine.

    The greedy selection keeps distinct directions, not distinct axes: two
    directions can edit along nearly the same axis, and an attribute with a
    cosine near 1 to a better one is the same change again. The first
    attribute has none: ``nearest_rank`` 0 and ``nearest_cosine`` 0.
    """
    kept = list(table.itertuples())
    nearest_rank, nearest_cosine = [0], [0.0]
    for i, row in enumerate(kept[1:], start=1):
        cosines = [direction_agreement(directions, directions, row.direction, better.direction, row.sign, better.sign)
                   for better in kept[:i]]
        best = int(np.argmax(cosines))
        nearest_rank.append(int(kept[best].rank))
        nearest_cosine.append(cosines[best])
    return pd.DataFrame({"nearest_rank": nearest_rank, "nearest_cosine": nearest_cosine}, index=table.index)


def rank_attributes(autoencoder: DiffusionAutoencoder, directions: Directions, crops: np.ndarray,
                    target_class: int, n_attributes: int = 3, steps_inv: int = 10, steps_dec: int = 10,
                    alpha: float = 2.0, threshold: float = 0.0, batch_size: int = 256,
                    max_cosine: float = 1.0) -> Ranking:
    """Rank ``directions`` by their effect on the classifier's ``target_class`` probability.

    ``crops`` (N, C, H, W) in [-1, 1] are cells of the other class(es).
    ``alpha`` is the edit size in SD units (at most ``MAX_ALPHA``). Rounds
    stop at ``n_attributes`` or when the best mean gain falls below
    ``threshold``. With ``max_cosine`` below 1, a direction along a kept
    one's axis (|cosine| >= ``max_cosine``) is no candidate. Columns of
    ``attributes``: ``rank``, ``attribute`` (``attribute_id``), ``direction``,
    ``sign``, ``target_class``, ``n_cells`` (cells ranked on in the round),
    ``mean_delta_p`` and ``flip_rate`` over those cells, ``mean_delta_p_all``
    and ``flip_rate_all`` over all sampled cells, ``explained`` (cells the
    attribute newly flips), ``coverage`` (cumulative fraction explained),
    ``unet_evaluations`` (decodes of this direction, both signs),
    ``reference_unet_evaluations`` (what the reference spends in the round),
    and ``nearest_rank`` / ``nearest_cosine`` (``nearest_better_attribute``).
    """
    _check_inputs(autoencoder, directions, crops, target_class, n_attributes, alpha)
    if steps_inv < 1 or steps_dec < 1:
        raise ValueError(f"steps_inv and steps_dec must be at least 1, got {steps_inv} and {steps_dec}")
    was_training = autoencoder.training
    autoencoder.eval()
    before = autoencoder.unet_evaluations
    cache = build_cache(autoencoder, directions, crops, alpha, steps_inv, steps_dec, batch_size)
    spent = autoencoder.unet_evaluations - before
    autoencoder.train(was_training)
    table = select_attributes(cache, target_class, n_attributes, threshold, steps_inv, steps_dec,
                              axis_cosines(directions), max_cosine)
    table["alpha"] = alpha
    table[["nearest_rank", "nearest_cosine"]] = nearest_better_attribute(directions, table)
    return Ranking(table, cache, target_class, alpha, steps_inv, steps_dec, spent,
                   int(table["reference_unet_evaluations"].sum()))
