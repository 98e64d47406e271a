"""One formula per treatment against the negative control, over the latents of one shared beta-TCVAE.

A screen of many treatments has one softmax classifier over all its
classes. Its odds of treatment ``t`` against the negative control,
``p_t / (p_t + p_0)``, are the softmax of just those two logits
(``TreatmentView``), a two-class black box of its own; the treatment's
formula distils it on the cells of the two classes (``fit_interpretable``
with the shared VAE), so every formula reads in the same latents.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from screenxai.interpret.fit import InterpretableModel, InterpretConfig, InterpretError, as_crops, fit_interpretable
from screenxai.interpret.latent_names import latent_features
from screenxai.interpret.tcvae import BetaTCVAE, TCVAEConfig, encode_means, reconstruction_mse, train_tcvae
from screenxai.models.progress import StepCallback
from screenxai.models.splits import split_by_well


@dataclass(frozen=True)
class _TwoClasses:
    n_classes: int = 2


class TreatmentView(nn.Module):
    """The black box seen as a two-class classifier: its logits of the negative control and of one treatment.

    The softmax of the two logits is ``p_t / (p_t + p_0)`` of the full
    softmax, so the view's probabilities are the black box's odds of the
    treatment against the control, and gradients flow through it for attacks.
    """

    config = _TwoClasses()

    def __init__(self, black_box: nn.Module, negative: int, treatment: int, class_names: tuple[str, str]) -> None:
        super().__init__()
        self.black_box = black_box
        self.columns = [negative, treatment]
        self.class_names = class_names

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.black_box(crops)[:, self.columns]


@dataclass
class TreatmentModels:
    """One shared beta-TCVAE and, per treatment, the two-class model of the treatment against the control.

    ``class_names`` are the screen's classes, negative control first;
    ``models`` maps each treatment to its ``InterpretableModel`` (class names
    ``(negative, treatment)``, the shared ``vae``).
    """

    vae: BetaTCVAE
    models: dict[str, InterpretableModel]
    config: InterpretConfig
    class_names: tuple[str, ...]
    class_column: str = "compound"
    report: dict = field(default_factory=dict)

    @property
    def treatments(self) -> list[str]:
        """The treatments, in class order."""
        return list(self.models)

    def logits(self, crops: np.ndarray) -> pd.DataFrame:
        """Each treatment's formula value per cell (> 0: more like the treatment than the control)."""
        crops = as_crops(crops, self.vae.config.in_channels, self.vae.config.image_size)
        z = next(iter(self.models.values())).latents(crops) if self.models else np.zeros((len(crops), 0))
        return pd.DataFrame({t: m.distilled.evaluate(m.formula_inputs(z)) if len(z) else np.zeros(0)
                             for t, m in self.models.items()})


def view_of(classifier: Any, class_names: Sequence[str], treatment: str) -> TreatmentView:
    """The two-class view of ``classifier`` (module or ``TrainedClassifier`` over ``class_names``) for ``treatment``."""
    names = tuple(getattr(classifier, "class_names", None) or class_names)
    if names != tuple(class_names):
        raise InterpretError(f"the classifier was trained on classes {list(names)}, not {list(class_names)}")
    module = getattr(classifier, "model", classifier)
    if not isinstance(module, nn.Module):
        raise InterpretError(f"classifier must be a torch module or a TrainedClassifier, got {type(classifier)}")
    n_classes = getattr(getattr(module, "config", None), "n_classes", len(class_names))
    if n_classes != len(class_names):
        raise InterpretError(f"the classifier tells {n_classes} classes apart, not the {len(class_names)} "
                             f"classes {list(class_names)}")
    return TreatmentView(module, 0, list(class_names).index(treatment), (class_names[0], treatment))


def _heldout_split(crops: np.ndarray, table: pd.DataFrame, class_column: str, class_names: tuple[str, ...],
                   config: InterpretConfig) -> tuple[np.ndarray, pd.DataFrame, tuple[np.ndarray, pd.DataFrame]]:
    """Training crops and table, and the held-out wells' (``split_by_well`` over all classes at once)."""
    split = split_by_well(table, class_column, config.val_fraction, config.seed, class_names)
    val = set(split.val_wells)
    held = np.array([(str(p), str(w)) in val for p, w in zip(table["plate"], table["well"], strict=True)])
    return crops[~held], table[~held].reset_index(drop=True), (crops[held], table[held].reset_index(drop=True))


def fit_treatments(
    crops: np.ndarray,
    table: pd.DataFrame,
    classifier: Any,
    config: InterpretConfig = InterpretConfig(),
    class_column: str = "compound",
    class_names: Sequence[str] = (),
    heldout: tuple[np.ndarray, pd.DataFrame] | None = None,
    on_step: StepCallback | None = None,
) -> TreatmentModels:
    """Train one beta-TCVAE on every training crop, then fit each treatment's formula against the control.

    ``class_names`` (negative control first) are the classifier's classes.
    The VAE sees all of ``crops`` (or, without ``heldout``, the training
    wells of a split by well); treatment ``t``'s sparse network and formula
    are fitted on the cells of the control and ``t`` and scored on the
    held-out cells of the two. ``on_step(step, done, total)`` reports the
    ``VAE`` steps and, as each treatment's formula is fitted, ``formula (<treatment>)``.
    """
    step = on_step or (lambda *_: None)
    class_names = tuple(class_names)
    if len(class_names) < 3 or len(set(class_names)) != len(class_names):
        raise InterpretError(f"one formula per treatment needs a negative control and at least 2 distinct "
                             f"treatments; got {list(class_names)}")
    crops = as_crops(crops)
    if len(crops) != len(table):
        raise InterpretError(f"{len(crops)} crops but {len(table)} rows in the cell table")
    views = {t: view_of(classifier, class_names, t) for t in class_names[1:]}
    source = "given" if heldout is not None else "split_by_well"
    if heldout is None:
        crops, table, heldout = _heldout_split(crops, table, class_column, class_names, config)
    start = time.perf_counter()
    vae, log = train_tcvae(crops, TCVAEConfig(crops.shape[1], crops.shape[2], config.latent_dim, config.vae_width,
                                                 config.texture_maps),
                           config.beta, config.vae_steps, config.batch_size, config.lr, config.seed,
                           config.recon_weight, on_step=lambda done, total: step("VAE", done, total))
    timings = {"vae_s": time.perf_counter() - start}
    models = {}
    for k, (treatment, view) in enumerate(views.items(), start=1):
        start = time.perf_counter()
        models[treatment] = fit_interpretable(crops, table, view, config, class_column, view.class_names,
                                              heldout=heldout, vae=vae)
        models[treatment].report["heldout_source"] = source
        timings[f"{treatment}_s"] = time.perf_counter() - start
        step(f"formula ({treatment})", k, len(views))
    report = {"vae": {"final_loss": log[-1], "heldout_reconstruction_mse": reconstruction_mse(vae, heldout[0][:512])},
              "cells": {"vae_train": len(crops), "heldout": len(heldout[1])}, "heldout_source": source,
              "timings": timings}
    return TreatmentModels(vae, models, config, class_names, class_column, report)


def name_latents(models: TreatmentModels, crops: np.ndarray, table: pd.DataFrame, features: Sequence[str],
                 channel_names: Sequence[str]) -> None:
    """Name each treatment's formula latents by the feature they track best; into its report's ``latent_features``.

    The names are measured on the cells of ``crops``/``table`` (the training
    cells) of the negative control and that treatment: the only cells the
    formula tells apart, where a latent may track another feature than it
    does across the whole screen.
    """
    z = encode_means(models.vae, as_crops(crops, models.vae.config.in_channels, models.vae.config.image_size))
    for treatment, model in models.models.items():
        rows = table[models.class_column].isin(model.class_names).to_numpy()
        named = latent_features(z[rows], table.loc[rows, list(features)], model.report["formula_variables"],
                                channel_names)
        model.report["latent_features"] = named.to_dict(orient="records")
