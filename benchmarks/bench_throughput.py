"""Per preset: training seconds per epoch, UNet forward, classifier and encoder inference throughput.

Each figure is timed on random crops of the preset's size (throughput does
not depend on the pixels) after warm-up steps, as the median of repeats.
Seconds per epoch are the measured seconds per training step times the
preset's steps per epoch (for presets without a fixed count, one pass over
``--cells`` cells). Ratios are against the ``tiny`` preset measured in the
same run, which makes figures comparable across machines. Results go to
``benchmarks/results/throughput_<device>.json`` with the hardware noted.

    python -m benchmarks.bench_throughput                 # CPU, all presets
    python -m benchmarks.bench_throughput --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.classifier import CellClassifier, ClassifierConfig
from screenxai.models.device import generator
from screenxai.models.presets import PRESETS, Preset
from screenxai.models.train_autoencoder import semantic_losses

RESULTS = Path(__file__).parent / "results"
CHANNELS = 2


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(preset: Preset, device: torch.device) -> tuple[CellClassifier, DiffusionAutoencoder]:
    """The preset's classifier and autoencoder (which freezes a classifier of its own), on ``device``."""
    def classifier() -> CellClassifier:
        return CellClassifier(ClassifierConfig(in_channels=CHANNELS, n_classes=2, **preset.classifier)).to(device)

    config = AutoencoderConfig(in_channels=CHANNELS, image_size=preset.crop_size, n_classes=2, **preset.autoencoder)
    return classifier(), DiffusionAutoencoder(config, classifier()).to(device)


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(preset: Preset, device: torch.device, repeats: int, cells: int, batch_cap: int | None) -> dict:
    """All figures of one preset."""
    classifier, autoencoder = build(preset, device)
    size = preset.crop_size
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    gen = generator(0, device)

    def batch(n: int) -> torch.Tensor:
        return torch.rand((n, CHANNELS, size, size), generator=gen, device=device) * 2 - 1

    # Training steps: forward, backward and optimiser step at the preset's batch size (capped on CPU).
    c_batch = min(preset.classifier_training.batch_size, batch_cap or 10**9)
    a_batch = min(preset.autoencoder_training.batch_size, batch_cap or 10**9)
    c_opt = torch.optim.AdamW(classifier.parameters(), lr=1e-4)
    a_opt = torch.optim.AdamW([p for p in autoencoder.parameters() if p.requires_grad], lr=1e-4)
    x_c, y_c, x_a = batch(c_batch), torch.randint(0, 2, (c_batch,), device=device), batch(a_batch)

    def classifier_step() -> None:
        classifier.train()
        with torch.autocast(**autocast):
            loss = torch.nn.functional.cross_entropy(classifier(x_c).float(), y_c)
        c_opt.zero_grad()
        loss.backward()
        c_opt.step()

    def autoencoder_step() -> None:
        autoencoder.train()
        with torch.autocast(**autocast):
            losses = autoencoder.training_losses(x_a, gen)
        a_opt.zero_grad()
        (losses["diffusion"] + losses.get("aux", 0.0)).backward()
        a_opt.step()

    def semantic_step() -> None:
        with torch.autocast(**autocast):
            loss = semantic_losses(autoencoder, x_a)["aux"]
        a_opt.zero_grad()
        loss.backward()
        a_opt.step()

    c_step = timed(classifier_step, device, repeats)
    a_step = timed(autoencoder_step, device, repeats)
    s_step = timed(semantic_step, device, repeats) if autoencoder.aux_decoder is not None else 0.0
    # Per-image cost scales linearly with batch on CPU, so a capped batch stands for the full one.
    c_steps = preset.classifier_training.steps_per_epoch or max(1, cells // preset.classifier_training.batch_size)
    a_steps = preset.autoencoder_training.steps_per_epoch or max(1, cells // preset.autoencoder_training.batch_size)
    c_epoch = c_step / c_batch * preset.classifier_training.batch_size * c_steps
    a_epoch = a_step / a_batch * preset.autoencoder_training.batch_size * a_steps
    s_epoch = s_step / a_batch * preset.autoencoder_training.batch_size * a_steps

    # Inference throughput, no gradients, eval mode.
    classifier.eval()
    autoencoder.eval()
    n = min(256 if device.type == "cuda" else 64, batch_cap or 10**9)
    x = batch(n)
    z = autoencoder.encode(x)
    t = torch.full((n,), 500, device=device)

    def infer(fn: Callable[[], object]) -> float:
        def run() -> None:
            with torch.no_grad(), torch.autocast(**autocast):
                fn()
        return n / timed(run, device, repeats)

    return {
        "crop_size": size,
        "parameters": {"classifier": n_parameters(classifier),
                       "autoencoder_trainable": n_parameters(autoencoder) - n_parameters(classifier),
                       "unet": n_parameters(autoencoder.unet)},
        "timed_batch": {"classifier": c_batch, "autoencoder": a_batch, "inference": n},
        "seconds_per_epoch": {"classifier": c_epoch, "semantic_pretraining": s_epoch, "autoencoder": a_epoch},
        "steps_per_epoch": {"classifier": c_steps, "autoencoder": a_steps},
        "estimated_training_seconds": (c_epoch * preset.classifier_training.epochs
                                       + s_epoch * preset.autoencoder_training.pretrain_epochs
                                       + a_epoch * preset.autoencoder_training.epochs),
        "images_per_second": {"unet_forward": infer(lambda: autoencoder.denoise(x, t, z)),
                              "classifier": infer(lambda: classifier(x)),
                              "encoder_z_sem": infer(lambda: autoencoder.latent(x))},
    }


def hardware(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
            "load_average_1min_at_start": os.getloadavg()[0]}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=10_000, help="Cells per epoch where a preset has no step count.")
    parser.add_argument("--cpu-batch-cap", type=int, default=16, help="Largest batch timed on CPU.")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cap = args.cpu_batch_cap if device.type == "cpu" else None
    figures = {}
    for name in args.presets.split(","):
        start = time.perf_counter()
        figures[name] = measure(PRESETS[name], device, args.repeats, args.cells, cap)
        print(name, json.dumps(figures[name]["images_per_second"]), f"{time.perf_counter() - start:.0f} s",
              flush=True)
    if "tiny" in figures:
        for name, result in figures.items():
            result["relative_to_tiny"] = {
                "images_per_second": {k: v / figures["tiny"]["images_per_second"][k]
                                      for k, v in result["images_per_second"].items()},
                "seconds_per_epoch": {k: v / figures["tiny"]["seconds_per_epoch"][k]
                                      for k, v in result["seconds_per_epoch"].items()
                                      if figures["tiny"]["seconds_per_epoch"][k] > 0}}
    out = RESULTS / f"throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hardware": hardware(device), "presets": figures,
                               "note": "random crops; CPU batches capped at --cpu-batch-cap and scaled per image"},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
