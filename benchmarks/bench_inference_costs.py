"""Two costs of scoring and checking models, each beside its baseline in the same run.

Usage: python -m benchmarks.bench_inference_costs [--out FILE]

1. Memory per batch shape. A process runs the ``tiny`` classifier and
   encoder (random weights: kernels depend on shapes, not on values) over
   ``ROUNDS`` batches of 256 + k rows. It runs once with one k for every
   round (baseline), once with a new k each round in plain slices (each last
   batch a new shape), and once with the same new k through
   ``screenxai.models.batches.map_batches`` (padded). Each mode runs in its
   own subprocess; its resident-memory rise after ``malloc_trim`` is recorded.
2. CPU of the central-cell factors. ``measure_cell_factors`` on 300
   synthetic crops, beside the same measurement through ``measure_features``
   (shape features included) on the same masks, the way it was measured
   before; both must give the same figures.

Results go to ``benchmarks/results/inference_costs_cpu.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_pipeline import hardware, load

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "inference_costs_cpu.json"
ROUNDS = 100
MODES = ("one_shape", "new_shape_each_batch", "new_shape_padded")


def shape_memory(mode: str) -> dict:
    """RSS rise (MB) of this process over ``ROUNDS`` scoring passes in ``mode`` (run it in a fresh process)."""
    import psutil
    import torch

    from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
    from screenxai.models.batches import map_batches
    from screenxai.models.classifier import CellClassifier, ClassifierConfig
    from screenxai.models.presets import get_preset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    preset = get_preset("tiny")
    classifier = CellClassifier(ClassifierConfig(in_channels=2, n_classes=2, **preset.classifier)).eval()
    autoencoder = DiffusionAutoencoder(AutoencoderConfig(in_channels=2, image_size=preset.crop_size, n_classes=2,
                                                         **preset.autoencoder), classifier).eval()
    libc = ctypes.CDLL("libc.so.6")
    process, rng = psutil.Process(), np.random.default_rng(0)

    def score(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([classifier(batch), autoencoder.encode(batch)], dim=1)

    rises = []
    with torch.no_grad():
        for round_ in range(ROUNDS + 1):
            rows = 256 + (100 if mode == "one_shape" else int(rng.integers(1, 256)))
            x = torch.from_numpy(rng.uniform(-1, 1, (rows, 2, preset.crop_size, preset.crop_size)).astype(np.float32))
            if mode == "new_shape_padded":
                map_batches(score, x, 256)
            else:
                [score(x[i:i + 256]) for i in range(0, rows, 256)]
            libc.malloc_trim(0)
            rss = process.memory_info().rss / 2**20
            if round_ == 0:
                start = rss  # after the first pass: the models' own memory is in the baseline
            rises.append(round(rss - start, 1))
    return {"rounds": ROUNDS, "rise_mb": rises[-1], "rise_mb_per_round": round(rises[-1] / ROUNDS, 3)}


def central_factor_cpu() -> dict:
    """CPU seconds of the central-cell factors on 300 crops, and of the same through ``measure_features``."""
    from scipy.ndimage import gaussian_filter

    from screenxai.cells.central import (DNA_SIGMA, NUCLEUS_LEVEL, RING_WIDTH, central_object,
                                         measure_cell_factors)
    from screenxai.cells.features import measure_features, perinuclear_rings

    rng = np.random.default_rng(0)
    distance = np.hypot(*(np.indices((32, 32)) - 16))
    crops = np.stack([np.stack([np.where(distance < 6 + rng.uniform(-2, 2), 0.8, -0.9),
                                np.where(distance < 6, rng.uniform(-0.5, 0.5), np.where(distance < 12, -0.2, -0.9))
                                + 0.1 * rng.standard_normal((32, 32))]) for _ in range(300)]).astype(np.float32)

    def with_measure_features() -> list[tuple[float, float]]:
        out = []
        for crop in np.clip((crops + 1) / 2, 0, None):
            nucleus = central_object(gaussian_filter(crop[0], DNA_SIGMA), NUCLEUS_LEVEL).astype(np.int32)
            cell = nucleus + perinuclear_rings(nucleus, RING_WIDTH)
            channels = ["dna", "reporter"]
            out.append((measure_features(crop, nucleus, channels, ring_width=RING_WIDTH)["reporter_ratio"].iloc[0],
                        measure_features(crop, cell, channels, ring_width=RING_WIDTH)["reporter_texture"].iloc[0]))
        return out

    start = time.process_time()
    factors = measure_cell_factors(crops)
    now_s = time.process_time() - start
    start = time.process_time()
    reference = np.nan_to_num(np.array(with_measure_features()))
    before_s = time.process_time() - start
    same = bool(np.allclose(factors[["translocation", "texture"]].to_numpy(), reference, rtol=1e-6))
    return {"crops": len(crops), "measure_cell_factors_cpu_s": round(now_s, 3),
            "through_measure_features_cpu_s": round(before_s, 3), "speedup": round(before_s / now_s, 2),
            "same_figures": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one memory mode, in a child process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(shape_memory(args.mode)))
        return
    results = {"hardware": hardware(), "load_at_start": load(), "batch_shape_memory": {}}
    for mode in MODES:
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_inference_costs", "--mode", mode],
                               cwd=ROOT, capture_output=True, text=True, check=True)
        results["batch_shape_memory"][mode] = json.loads(child.stdout.strip().splitlines()[-1])
    results["central_cell_factors"] = central_factor_cpu()
    results["load_at_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
