"""Fitting the interpretable model: beta-TCVAE -> sparse classifier -> formula, and its report.

1. A beta-TCVAE learns features from the crops of the training wells (every
   cell there, whatever its class: the features need not know the classes).
2. A sparse network learns the black box's positive-class probability (or
   the true labels) from the latents of the training wells' class cells,
   keeping at most ``max_active`` latents.
3. Symbolic regression distils the sparse network's logit into a formula
   over those latents; a cell is called positive where the formula is > 0.

Everything is then scored on held-out wells: the wells ``split_by_well``
puts aside, or a separate held-out set (another plate) when one is given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import sympy
import torch
from torch import nn

from screenxai.errors import ScreenxaiError
from screenxai.interpret.formula import Formula, FormulaConfig, evaluate_torch, fit_formula
from screenxai.interpret.sparse import SparseClassifier, SparseConfig, sparse_logit, train_sparse
from screenxai.interpret.tcvae import BetaTCVAE, TCVAEConfig, encode_means, reconstruction_mse, train_tcvae
from screenxai.models.classifier import predict_proba
from screenxai.models.progress import StepCallback
from screenxai.models.splits import class_labels, split_by_well


class InterpretError(ScreenxaiError):
    """The interpretable model cannot be fitted or used on the input given."""


@dataclass(frozen=True)
class InterpretConfig:
    """Settings of all three stages. Training lengths are in optimiser steps, not epochs,
    so that the cost does not grow with the number of cells.

    ``target``: ``"classifier"`` distils the black box's probabilities (the
    interpretable model explains the black box); ``"labels"`` learns the
    true classes.
    """

    latent_dim: int = 12
    beta: float = 10.0
    vae_width: int = 32
    texture_maps: bool = True
    vae_steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    recon_weight: float = 30.0
    target: str = "classifier"
    hidden: int = 16
    max_active: int = 5
    l1: float = 0.02
    sparse_steps: int = 300
    prune_steps: int = 100
    weight_density: float = 0.5
    max_complexity: int = 15
    operon_symbols: str = "add,sub,mul,constant,variable"
    operon_population: int = 300
    operon_generations: int = 40
    operon_max_length: int = 12
    precision: int = 3
    val_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in ("classifier", "labels"):
            raise ValueError(f"target must be 'classifier' or 'labels', got {self.target!r}")
        if not 1 <= self.max_active <= self.latent_dim:
            raise ValueError(f"max_active must lie in 1..latent_dim={self.latent_dim}, got {self.max_active}")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InterpretConfig:
        """The config of ``to_dict()``; unknown keys are an error, missing keys take their defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown interpretable-model settings {unknown}; known are {sorted(known)}")
        return cls(**data)

    def sparse(self) -> SparseConfig:
        """Settings of the sparse classifier."""
        return SparseConfig(hidden=self.hidden, max_active=self.max_active, l1=self.l1, steps=self.sparse_steps,
                            prune_steps=self.prune_steps, weight_density=self.weight_density, seed=self.seed)

    def formula(self) -> FormulaConfig:
        """Settings of the symbolic regression."""
        return FormulaConfig(max_complexity=self.max_complexity, symbols=self.operon_symbols,
                             population_size=self.operon_population, generations=self.operon_generations,
                             max_length=self.operon_max_length, precision=self.precision, seed=self.seed)


def latent_name(index: int) -> str:
    """Name of latent dimension ``index`` in formulas: ``z3``."""
    return f"z{index}"


@dataclass
class InterpretableModel:
    """beta-TCVAE features, the sparse classifier over them and the formula distilled from it.

    ``class_names[1]`` is the positive class: the formula's output is its logit.
    """

    vae: BetaTCVAE
    sparse: SparseClassifier
    distilled: Formula
    config: InterpretConfig
    class_names: tuple[str, str]
    class_column: str = "control"
    report: dict = field(default_factory=dict)

    @property
    def formula(self) -> str:
        """The formula as printed, over latents named ``z<index>``."""
        return self.distilled.text

    @property
    def complexity(self) -> int:
        """Nodes of the printed, simplified formula."""
        return self.distilled.complexity

    @property
    def selected(self) -> list[int]:
        """Latent dimensions the sparse classifier kept."""
        return self.sparse.selected

    def check_crops(self, crops: np.ndarray) -> np.ndarray:
        """``crops`` as float32, or ``InterpretError`` when their shape does not fit the VAE."""
        return as_crops(crops, self.vae.config.in_channels, self.vae.config.image_size)

    def latents(self, crops: np.ndarray) -> np.ndarray:
        """VAE posterior means (N, latent_dim)."""
        return encode_means(self.vae, self.check_crops(crops))

    def formula_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        """The formula's named inputs from latents (N, latent_dim)."""
        return {latent_name(i): latents[:, i] for i in range(latents.shape[1])}

    def logit(self, crops: np.ndarray) -> np.ndarray:
        """The formula's value per cell (> 0: positive class)."""
        z = self.latents(crops)
        return self.distilled.evaluate(self.formula_inputs(z)) if len(z) else np.zeros(0)

    def torch_logit(self, crops: torch.Tensor) -> torch.Tensor:
        """The formula's value of crops as a differentiable function of the pixels."""
        z = self.vae(crops)
        return evaluate_torch(self.distilled.expression, {latent_name(i): z[:, i] for i in range(z.shape[1])}, len(z))

    def score(self, crops: np.ndarray) -> np.ndarray:
        """Positive-class score per cell in [0, 1]: the logistic of the formula."""
        return 1 / (1 + np.exp(-np.clip(self.logit(crops), -50, 50)))

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """(N, 2) scores in ``class_names`` order, like ``screenxai.models.predict_proba``."""
        positive = self.score(crops)
        return np.stack([1 - positive, positive], axis=1)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Class index per cell (1: ``class_names[1]``)."""
        return (self.logit(crops) > 0).astype(np.int64)

    def sparse_logit(self, crops: np.ndarray) -> np.ndarray:
        """The sparse classifier's positive-class logit per cell."""
        return sparse_logit(self.sparse, self.latents(crops))


def as_crops(crops: np.ndarray, channels: int | None = None, size: int | None = None) -> np.ndarray:
    """``crops`` as contiguous float32 (N, C, S, S); ``InterpretError`` naming what does not fit."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[2] != crops.shape[3]:
        raise InterpretError(f"crops must be (N, C, S, S) arrays, got shape {crops.shape}")
    if channels is not None and crops.shape[1] != channels:
        raise InterpretError(f"crops have {crops.shape[1]} channels; the model was fitted on {channels}")
    if size is not None and crops.shape[2] != size:
        raise InterpretError(f"crops are {crops.shape[2]} px; the model was fitted on {size} px crops")
    return np.ascontiguousarray(crops, np.float32)


def black_box_module(classifier: Any, class_names: Sequence[str]) -> nn.Module:
    """The torch module of a black box given as a module or as a ``TrainedClassifier``."""
    names = getattr(classifier, "class_names", None)
    if names is not None and tuple(names) != tuple(class_names):
        raise InterpretError(f"the classifier was trained on classes {list(names)}, not {list(class_names)}")
    module = getattr(classifier, "model", classifier)
    if not isinstance(module, nn.Module):
        raise InterpretError(f"classifier must be a torch module or a TrainedClassifier, got {type(classifier)}")
    n_classes = getattr(getattr(module, "config", None), "n_classes", 2)
    if n_classes != 2:
        raise InterpretError(f"the classifier tells {n_classes} classes apart; the interpretable model needs 2")
    return module


def _class_rows(table: pd.DataFrame, class_column: str, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    labels, _ = class_labels(table, class_column, class_names)
    rows = np.flatnonzero(labels >= 0)
    return rows, labels[rows]


def _n_wells(table: pd.DataFrame) -> int:
    return int(table[["plate", "well"]].drop_duplicates().shape[0]) if len(table) else 0


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted == labels).mean())


def _balanced(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([(predicted[labels == k] == k).mean() for k in np.unique(labels)]))


def evaluate(model: InterpretableModel, classifier: nn.Module, crops: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracies of black box, sparse model and formula on labelled cells; fidelity and agreements."""
    blackbox = predict_proba(classifier, crops).argmax(1)
    sparse = (model.sparse_logit(crops) > 0).astype(np.int64)
    formula = model.predict(crops)
    accuracy = {"blackbox": _accuracy(blackbox, labels), "sparse": _accuracy(sparse, labels),
                "formula": _accuracy(formula, labels)}
    return {"accuracy": accuracy,
            "balanced_accuracy": {"blackbox": _balanced(blackbox, labels), "sparse": _balanced(sparse, labels),
                                  "formula": _balanced(formula, labels)},
            "fidelity": accuracy["formula"] / accuracy["blackbox"] if accuracy["blackbox"] > 0 else float("nan"),
            "sparse_fidelity": accuracy["sparse"] / accuracy["blackbox"] if accuracy["blackbox"] > 0 else float("nan"),
            "agreement": _accuracy(formula, blackbox), "sparse_agreement": _accuracy(sparse, blackbox),
            "formula_sparse_agreement": _accuracy(formula, sparse)}


def fit_interpretable(
    crops: np.ndarray,
    table: pd.DataFrame,
    classifier: Any,
    config: InterpretConfig = InterpretConfig(),
    class_column: str = "control",
    class_names: Sequence[str] = ("negative", "positive"),
    heldout: tuple[np.ndarray, pd.DataFrame] | None = None,
    vae: BetaTCVAE | None = None,
    on_step: StepCallback | None = None,
) -> InterpretableModel:
    """Fit the interpretable model to ``crops`` (N, C, S, S) and its cell ``table``; score it on held-out wells.

    ``classifier`` is the black box (a ``CellClassifier`` or ``TrainedClassifier``)
    whose ``class_names`` order this model follows. Without ``heldout``
    the cells are split by well (``split_by_well``, ``config.val_fraction``);
    the VAE then trains on the training wells' cells only. With ``heldout``
    (crops and table of other wells or plates) all of ``crops`` is for
    training and the held-out class cells are scored. A ``vae`` given is
    used as it is (one VAE shared by several formulas) instead of training one.
    ``on_step(step, done, total)`` reports the ``VAE``, ``sparse network``
    and ``formula`` steps.
    """
    step = on_step or (lambda *_: None)
    class_names = tuple(class_names)
    if len(set(class_names)) != 2 or len(class_names) != 2:
        raise InterpretError("the interpretable model tells 2 classes apart (a formula's sign); "
                             f"got {list(class_names)}")
    crops = as_crops(crops) if vae is None else as_crops(crops, vae.config.in_channels, vae.config.image_size)
    if len(crops) != len(table):
        raise InterpretError(f"{len(crops)} crops but {len(table)} rows in the cell table")
    black_box = black_box_module(classifier, class_names)
    torch.manual_seed(config.seed)
    cells = _split_cells(crops, table, config, class_column, class_names, heldout)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    shared_vae = vae is not None
    if not shared_vae:
        vae_config = TCVAEConfig(crops.shape[1], crops.shape[2], config.latent_dim, config.vae_width,
                                 config.texture_maps)
        vae, vae_log = train_tcvae(crops[cells.vae_rows], vae_config, config.beta, config.vae_steps,
                                   config.batch_size, config.lr, config.seed, config.recon_weight,
                                   on_step=lambda done, total: step("VAE", done, total))
    else:
        vae_log = [None]  # trained elsewhere: its caller reports its loss
    timings["vae_s"] = time.perf_counter() - start

    start = time.perf_counter()
    train_z = encode_means(vae, crops[cells.train_rows])
    if config.target == "classifier":
        target = predict_proba(black_box, crops[cells.train_rows])[:, 1]
    else:
        target = cells.train_labels.astype(np.float32)
    sparse = train_sparse(train_z, target, config.sparse())
    timings["sparse_s"] = time.perf_counter() - start
    step("sparse network", 1, 1)

    start = time.perf_counter()
    selected = sparse.selected
    distilled = fit_formula(train_z[:, selected], sparse_logit(sparse, train_z), [latent_name(i) for i in selected],
                            config.formula())
    timings["formula_s"] = time.perf_counter() - start
    step("formula", 1, 1)

    model = InterpretableModel(vae, sparse, distilled, config, class_names, class_column)
    model.report = _fit_report(model, black_box, crops, table, cells, shared_vae, vae_log[-1], timings,
                               "split_by_well" if heldout is None else "given")
    return model


@dataclass
class _CellSplit:
    """Which cells train the VAE and the sparse net, and the held-out cells the model is scored on."""

    vae_rows: np.ndarray
    train_rows: np.ndarray
    train_labels: np.ndarray
    test_crops: np.ndarray
    test_table: pd.DataFrame
    test_labels: np.ndarray


def _split_cells(crops: np.ndarray, table: pd.DataFrame, config: InterpretConfig, class_column: str,
                 class_names: tuple[str, str], heldout: tuple[np.ndarray, pd.DataFrame] | None) -> _CellSplit:
    """Training and held-out cells: a split by well of ``table``, or all of it against the ``heldout`` cells."""
    if heldout is None:
        split = split_by_well(table, class_column, config.val_fraction, config.seed, class_names)
        labels, _ = class_labels(table, class_column, class_names)
        val_keys = set(split.val_wells)
        in_val = np.array([(str(p), str(w)) in val_keys for p, w in zip(table["plate"], table["well"], strict=True)])
        return _CellSplit(np.flatnonzero(~in_val), split.train_index, labels[split.train_index],
                          crops[split.val_index], table.iloc[split.val_index], labels[split.val_index])
    held_crops, held_table = heldout
    held_crops = as_crops(held_crops, crops.shape[1], crops.shape[2])
    if len(held_crops) != len(held_table):
        raise InterpretError(f"held-out set has {len(held_crops)} crops but {len(held_table)} table rows")
    train_rows, train_labels = _class_rows(table, class_column, class_names)
    test_rows, test_labels = _class_rows(held_table, class_column, class_names)
    return _CellSplit(np.arange(len(crops)), train_rows, train_labels, held_crops[test_rows],
                      held_table.iloc[test_rows], test_labels)


def _fit_report(model: InterpretableModel, black_box: torch.nn.Module, crops: np.ndarray, table: pd.DataFrame,
                cells: _CellSplit, shared_vae: bool, vae_loss: float | None, timings: dict[str, float],
                heldout_source: str) -> dict:
    """What a fitted model reports: its formula, held-out and training figures, sizes, cells and timings."""
    distilled, sparse, vae = model.distilled, model.sparse, model.vae
    return {
        "formula": distilled.text, "complexity": distilled.complexity, "selected": sparse.selected,
        "formula_variables": distilled.variables, "positive_class": model.class_names[1],
        "heldout": evaluate(model, black_box, cells.test_crops, cells.test_labels),
        "train": evaluate(model, black_box, crops[cells.train_rows], cells.train_labels),
        "parameters": {"blackbox": sum(p.numel() for p in black_box.parameters()),
                       "vae_encoder": sum(p.numel() for p in vae.encoder.parameters()),
                       "sparse_nonzero": sparse.n_nonzero(),
                       "formula_constants": len(distilled.expression.atoms(sympy.Number))},
        "cells": {"vae_train": None if shared_vae else len(cells.vae_rows), "train": len(cells.train_rows),
                  "heldout": len(cells.test_labels)},
        "wells": {"train": _n_wells(table.iloc[cells.train_rows]), "heldout": _n_wells(cells.test_table)},
        "heldout_source": heldout_source,
        "vae": {"final_loss": vae_loss, "heldout_reconstruction_mse": reconstruction_mse(vae, cells.test_crops[:512])},
        "timings": timings,
    }

