"""Which code carries a treatment's phenotype, ``z_sem`` or ``x_T``? Swap them between treated and negative cells.

Reads a bundle trained by ``bench_treatments`` (its crop cache and models),
encodes and inverts cells of one treatment and of the negative control,
decodes every pairing of the two ``z_sem`` and the two ``x_T`` and measures
the morphology features of the crops and of each decoding. A phenotype that
stays with ``x_T`` cannot be drawn by an edit of ``z_sem``, so no attribute
can show it. Results go to ``results/latent_split_cpu.json``.

    python -m benchmarks.bench_latent_split --treatment granulator [--work /tmp/screenxai-bench-treatments/tiny-seed0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from screenxai.cells.field import nuclear_channel_index
from screenxai.explain.naming import crop_features
from screenxai.models.bundle import load_bundle
from screenxai.pipeline.crop_cache import read_crop_cache
from screenxai.pipeline.run import bundle_conditions
from screenxai.pipeline.train_job import work_folder

RESULTS = Path(__file__).parent / "results" / "latent_split_cpu.json"
FEATURES = ("reporter_texture", "reporter_ratio", "area")


def decodings(autoencoder, treated: torch.Tensor, negative: torch.Tensor, steps: int) -> dict[str, np.ndarray]:
    """The crops and the decodings of every (z_sem, x_T) pairing of treated (T) and negative (N) cells."""
    with torch.no_grad():
        z_t, z_n = autoencoder.encode(treated), autoencoder.encode(negative)
        x_t, x_n = autoencoder.invert(treated, z_t, steps), autoencoder.invert(negative, z_n, steps)
        return {"crops T": treated.numpy(), "crops N": negative.numpy(),
                "z T, x_T T": autoencoder.decode(x_t, z_t, steps).numpy(),
                "z N, x_T N": autoencoder.decode(x_n, z_n, steps).numpy(),
                "z T, x_T N": autoencoder.decode(x_n, z_t, steps).numpy(),
                "z N, x_T T": autoencoder.decode(x_t, z_n, steps).numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/screenxai-bench-treatments/tiny-seed0"))
    parser.add_argument("--treatment", default="granulator")
    parser.add_argument("--cells", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    bundle = load_bundle(args.work / "bundle")
    autoencoder = bundle["autoencoder"].eval()
    conditions = bundle_conditions(bundle)
    crops, table, _ = read_crop_cache(work_folder(args.work / "bundle") / "cache")
    classes = table[conditions.class_column].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    picks = [rng.permutation(np.flatnonzero(classes == c))[:args.cells] for c in (args.treatment, conditions.negative)]
    treated, negative = (torch.from_numpy(np.ascontiguousarray(crops[p], np.float32)) for p in picks)
    channels = list(bundle.channel_names)
    nuclear = nuclear_channel_index(channels, None)
    measured = {name: crop_features(images, channels, nuclear)[list(FEATURES)].mean().to_dict()
                for name, images in decodings(autoencoder, treated, negative, args.steps).items()}
    record = {"treatment": args.treatment, "negative": conditions.negative, "cells_each": args.cells,
              "steps": args.steps, "work": str(args.work), "mean_features": measured,
              "hardware": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, torch "
                          f"{torch.__version__}"}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[f"{args.work.name}-{args.treatment}"] = record
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
