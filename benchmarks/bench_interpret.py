"""Interpretable model (issue 6): disentanglement, fidelity, formula and adversarial budgets, per data set.

Simulated screen: a tiny-preset classifier and the interpretable model are
fitted on a 24-well simulated plate (seed 0) and scored on the control
cells of a second plate (seed 1); the beta-TCVAE's MIG over the planted
factors is compared with a beta=1 VAE trained the same way. BBBC013: the
classifier and the model are fitted on the control wells of the training
side of a split by well and scored on the held-out wells. Both get a PGD
budget sweep on a sample of held-out cells. Results are merged into
benchmarks/results/interpret_cpu.json under the data set's name.

    python -m benchmarks.bench_interpret --data simulated
    python -m benchmarks.bench_interpret --data bbbc013
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.bench_models import simulated_cells
from screenxai.interpret import (
    InterpretConfig,
    adversarial_check,
    disentanglement_score,
    fit_interpretable,
    flip_budgets,
    load_interpretable,
    save_interpretable,
)
from screenxai.interpret.tcvae import TCVAEConfig, encode_means, train_tcvae
from screenxai.models.classifier import ClassifierConfig
from screenxai.models.presets import get_preset
from screenxai.models.train_classifier import train_classifier

RESULTS = Path(__file__).parent / "results" / "interpret_cpu.json"
CLASSES = ("negative", "positive")
FACTORS = ["translocation", "nuclear_area", "texture"]
BUDGETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
BBBC013 = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc013_wortmannin"


def bbbc013_control_cells(workdir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Interior 32 px crops of BBBC013's control wells with the layout joined, cached."""
    cache = workdir / "bbbc013-controls"
    if (cache / "table.parquet").is_file():
        return np.load(cache / "crops.npy"), pd.read_parquet(cache / "table.parquet")
    from screenxai.cells import CellConfig, fit_normalisation, process_field
    from screenxai.plate.convert import convert_tiffs
    from screenxai.plate.reader import open_plate

    path = convert_tiffs(BBBC013, workdir / "bbbc013.zarr", "Channel{channel}-{index}-{row}-{column}.tif",
                         layout=BBBC013 / "layout.csv", channel_names="1=GFP,2=DNA")
    plate = open_plate(path)
    layout = plate.layout
    wells = layout.loc[layout["control"].isin(CLASSES), "well"].tolist()
    config = CellConfig(crop_size=32, nuclear_channel="DNA", normalisation=fit_normalisation(plate))
    batches = [process_field(plate, well, 0, config) for well in wells]
    table = pd.concat([b.table for b in batches], ignore_index=True).merge(
        layout[["well", "control", "dose_index"]], on="well", how="left")
    keep = ~table["border"].to_numpy()
    crops, table = np.concatenate([b.crops for b in batches])[keep], table[keep].reset_index(drop=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "crops.npy", crops)
    table.to_parquet(cache / "table.parquet")
    return crops, table


def tiny_classifier(crops: np.ndarray, table: pd.DataFrame):
    """The tiny preset's negative-vs-positive classifier, split by well, seed 0."""
    preset = get_preset("tiny").with_seed(0)
    config = ClassifierConfig(in_channels=crops.shape[1], n_classes=2, **preset.classifier)
    return train_classifier(crops, table, config, preset.classifier_training, "control", CLASSES)


def attack_sample(crops: np.ndarray, table: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` control cells drawn with seed 0 and their class index."""
    keep = np.flatnonzero(table["control"].isin(CLASSES).to_numpy())
    pick = np.random.default_rng(0).choice(keep, min(n, len(keep)), replace=False)
    return crops[pick], (table["control"].to_numpy()[pick] == "positive").astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["simulated", "bbbc013"], required=True)
    parser.add_argument("--workdir", default="/tmp/screenxai-bench-interpret")
    parser.add_argument("--attack-cells", type=int, default=64)
    parser.add_argument("--config", default="{}", help="InterpretConfig settings as JSON")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = InterpretConfig.from_dict({**InterpretConfig().to_dict(), **json.loads(args.config)})
    if args.data == "simulated":
        crops, table = simulated_cells(workdir, 0, 32)
        test_crops, test_table = simulated_cells(workdir, 1, 32)
        channels = {"nuclear_channel": 0, "reporter_channel": 1}
    else:
        all_crops, all_table = bbbc013_control_cells(workdir)
        channels = {"nuclear_channel": 1, "reporter_channel": 0}

    start = time.perf_counter()
    classifier = tiny_classifier(crops, table) if args.data == "simulated" else tiny_classifier(all_crops, all_table)
    classifier_s = time.perf_counter() - start
    if args.data == "bbbc013":
        val_wells = set(classifier.split.val_wells)
        held = np.array([(str(p), str(w)) in val_wells for p, w in zip(all_table["plate"], all_table["well"],
                                                                       strict=True)])
        crops, table = all_crops[~held], all_table[~held].reset_index(drop=True)
        test_crops, test_table = all_crops[held], all_table[held].reset_index(drop=True)

    start = time.perf_counter()
    model = fit_interpretable(crops, table, classifier, config, heldout=(test_crops, test_table))
    fit_s = time.perf_counter() - start
    saved = save_interpretable(model, workdir / f"{args.data}-interpretable", overwrite=True)
    round_trip = bool(np.array_equal(load_interpretable(saved).logit(test_crops[:500]), model.logit(test_crops[:500])))

    result: dict = {
        "hardware": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "shared_with_other_work": True, "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available()},
        "config": config.to_dict(), "classifier_train_seconds": round(classifier_s, 1),
        "fit_seconds": round(fit_s, 1), "round_trip_identical": round_trip,
        **{k: model.report[k] for k in ("formula", "complexity", "selected", "heldout", "train", "parameters",
                                        "cells", "wells", "vae", "timings")},
    }
    if args.data == "simulated":
        start = time.perf_counter()
        plain, _ = train_tcvae(crops, TCVAEConfig(crops.shape[1], crops.shape[2], config.latent_dim, config.vae_width,
                                                   config.texture_maps),
                               1.0, config.vae_steps, config.batch_size, config.lr, config.seed, config.recon_weight)
        result["disentanglement_mig_nmi"] = {
            "factors": FACTORS, "cells": len(test_crops),
            f"beta_tcvae_beta{config.beta:g}": disentanglement_score(model.latents(test_crops), test_table[FACTORS]),
            "vae_beta1": disentanglement_score(encode_means(plain, test_crops), test_table[FACTORS]),
            "vae_beta1_train_seconds": round(time.perf_counter() - start, 1)}

    attack_crops, attack_labels = attack_sample(test_crops, test_table, args.attack_cells)
    start = time.perf_counter()
    attacks = adversarial_check(model, classifier, attack_crops, attack_labels, BUDGETS, **channels)
    result["adversarial"] = {"seconds": round(time.perf_counter() - start, 1), "cells": len(attack_crops),
                             "budget_to_flip_half": flip_budgets(attacks),
                             "table": attacks.to_dict(orient="records")}
    print(json.dumps(result, indent=2, default=float))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged[args.data] = result
    RESULTS.write_text(json.dumps(merged, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
