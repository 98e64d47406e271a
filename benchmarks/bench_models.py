"""Models on a simulated plate: training time, parameters and the latent checks, per recipe.

Trains a preset (optionally with another conditioning) on the cells of a
24-well simulated plate, then measures on the cells of a second plate with
another seed (held out entirely): right- vs wrong-latent decoding error,
linear-probe R^2 of the planted factors from E(x), decode(invert(x)) error,
and the Spearman correlation of factors measured on decodes with the truth.
Results are merged into benchmarks/results/models_cpu.json under ``--name``.

    python -m benchmarks.bench_models --preset tiny --name tiny
    python -m benchmarks.bench_models --preset tiny --conditioning additive --no-decoder-input --name additive
    python -m benchmarks.bench_models --preset small --bundle BUNDLE --name small-train-job   # no training
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from screenxai.cells.central import measure_cell_factors
from screenxai.models import latent_checks, load_bundle
from screenxai.models.presets import get_preset
from screenxai.models.training import save_trained, train_models

RESULTS = Path(__file__).parent / "results" / "models_cpu.json"
FACTORS = ["translocation", "nuclear_area", "texture"]
DOSE_FACTORS = ["translocation", "nuclear_area"]


def simulated_cells(workdir: Path, seed: int, crop_size: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Normalised crops of a 24-well simulated plate (border cells dropped) with the planted truth, cached."""
    cache = workdir / f"cells-seed{seed}-{crop_size}px"
    if (cache / "table.parquet").is_file():
        return np.load(cache / "crops.npy"), pd.read_parquet(cache / "table.parquet")
    from screenxai.cells import CellConfig, fit_normalisation, process_field
    from screenxai.plate.reader import open_plate
    from screenxai.plate.simulate import simulate_screen

    path = workdir / f"plate{seed}.zarr"
    sim = simulate_screen(path, rows=4, columns=6, fields=2, size=512, seed=seed, overwrite=True)
    plate = open_plate(path)
    config = CellConfig(crop_size=crop_size, normalisation=fit_normalisation(plate))
    batches = [process_field(plate, well, field, config) for well in sim.layout.well for field in range(2)]
    crops = np.concatenate([b.crops for b in batches])
    table = pd.concat([b.table for b in batches], ignore_index=True).merge(
        sim.truth[["plate", "well", "field", "label", *FACTORS, "dose", "control"]],
        on=["plate", "well", "field", "label"], how="left")
    keep = ~table["border"].to_numpy() & table["translocation"].notna().to_numpy()
    crops, table = crops[keep].astype(np.float32), table[keep].reset_index(drop=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "crops.npy", crops)
    table.to_parquet(cache / "table.parquet")
    return crops, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--name", required=True)
    parser.add_argument("--conditioning")
    parser.add_argument("--prediction-type")
    parser.add_argument("--no-decoder-input", action="store_true")
    parser.add_argument("--hint-residual", action="store_true",
                        help="the UNet predicts a correction to the auxiliary decoder's image")
    parser.add_argument("--no-pretrain", action="store_true")
    parser.add_argument("--pretrain-epochs", type=int, help="semantic pretraining epochs instead of the preset's")
    parser.add_argument("--z-dim", type=int, help="size of E(x) and z_sem instead of the preset's")
    parser.add_argument("--epochs", type=int, help="diffusion training epochs instead of the preset's")
    parser.add_argument("--workdir", default="/tmp/screenxai-bench-models")
    parser.add_argument("--eval-cells", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--bundle", type=Path,
                        help="evaluate this bundle's models (e.g. from `screenxai train`) instead of training")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    preset = get_preset(args.preset)
    changes = {k: v for k, v in {"conditioning": args.conditioning, "prediction_type": args.prediction_type}.items()
               if v is not None}
    if args.no_decoder_input:
        changes["decoder_input"] = False
    if args.hint_residual:
        changes["hint_residual"] = True
    if args.z_dim:
        changes.update(latent_dim=args.z_dim, z_dim=args.z_dim)
    if changes:
        preset = replace(preset, autoencoder={**preset.autoencoder, **changes})
    if args.no_pretrain or args.pretrain_epochs is not None:
        epochs = 0 if args.no_pretrain else args.pretrain_epochs
        preset = replace(preset, autoencoder_training=replace(preset.autoencoder_training, pretrain_epochs=epochs))
    if args.epochs is not None:
        preset = replace(preset, autoencoder_training=replace(preset.autoencoder_training, epochs=args.epochs))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    crops, table = simulated_cells(workdir, 0, preset.crop_size)
    test_crops, test_table = simulated_cells(workdir, 1, preset.crop_size)
    pick = np.random.default_rng(0).choice(len(test_crops), args.eval_cells, replace=False)
    test_crops, test_table = test_crops[pick], test_table.iloc[pick].reset_index(drop=True)

    if args.bundle is None:
        start = time.perf_counter()
        trained = train_models(crops, table, preset, progress=lambda p: print(p, flush=True))
        train_s = time.perf_counter() - start
        save_trained(workdir / f"{args.name}-bundle", trained, table, ["DNA", "reporter"], {}, overwrite=True)
        model, classifier = trained.autoencoder.model, trained.classifier.model
        training = {"train_cells": len(crops), "train_seconds": round(train_s, 1),
                    "classifier_metrics": trained.classifier.metrics.to_dict(),
                    "final_losses": trained.autoencoder.history[-1]}
    else:
        bundle = load_bundle(args.bundle)
        if bundle.crop_size != preset.crop_size:
            parser.error(f"{args.bundle} has {bundle.crop_size} px crops; pass the --preset it was trained with")
        model, classifier = bundle["autoencoder"], bundle["classifier"]
        training = {"bundle": str(args.bundle), "training_summary": bundle.config["provenance"].get("training_summary")}
    checks_start = time.perf_counter()
    use = latent_checks.latent_use(model, test_crops, steps=args.steps)
    probe = latent_checks.probe_factors(model, test_crops, test_table[FACTORS])
    reconstructed = latent_checks.reconstruct(model, test_crops, steps=args.steps)
    z = latent_checks.encode(model, test_crops)
    fresh = latent_checks.decode_fresh(model, z, args.steps, seed=0).cpu().numpy()
    truth = test_table[FACTORS]
    result = {
        "preset": preset.to_dict(),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
                    f"work, torch {torch.__version__} threads {torch.get_num_threads()}, no GPU",
        **training, "eval_cells": len(test_crops), "ddim_steps": args.steps,
        "checks_seconds": round(time.perf_counter() - checks_start, 1),
        "autoencoder_parameters": sum(p.numel() for n, p in model.named_parameters()
                                      if not n.startswith("classifier.")),
        "classifier_parameters": sum(p.numel() for p in classifier.parameters()),
        "latent_use_fresh_xT": use.to_dict(),
        "probe_r2_on_E(x)": probe,
        "reconstruction_mae_invert_decode": float(np.abs(reconstructed - test_crops).mean()),
        "spearman_measured_on_originals": latent_checks.factor_agreement(test_crops, truth, measure_cell_factors),
        "spearman_measured_on_fresh_decodes": latent_checks.factor_agreement(fresh, truth, measure_cell_factors),
        "spearman_measured_on_reconstructions": latent_checks.factor_agreement(reconstructed, truth,
                                                                               measure_cell_factors),
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged[args.name] = result
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
