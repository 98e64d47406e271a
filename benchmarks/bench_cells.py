"""The cell stage of one field, step by step, for this checkout and (optionally) an earlier git revision.

Usage: python -m benchmarks.bench_cells [--before REF] [--out FILE] [--workdir DIR]

On the same fields for both code versions: four simulated fields of
1,024 px (two wells, treatments design, seed 0) and six BBBC013 wortmannin
fields (640 px, read from ``../shared/data``), each segmented from its DNA
channel, then measured and cropped (``process_field`` without the plate
read). Records per field the seconds of segmentation, of its h-maxima
step, of the shape and channel features and of the crops, whether both
versions give identical labels and features, and the matched-object F1 of
the real annotated nuclei2d image. ``--before REF`` runs revision REF's
``screenxai`` (extracted with ``git archive``) in a subprocess, then this
checkout's, one after the other in one sitting under the same load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REPEATS = 3


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def field_images(workdir: Path) -> dict[str, np.ndarray]:
    """The fields both versions measure, (c, y, x) with the DNA channel first, by name."""
    import tifffile

    from screenxai.plate.reader import open_plate
    from screenxai.plate.simulate import simulate_screen

    plate_path = workdir / "cells.zarr"
    if not plate_path.exists():
        simulate_screen(plate_path, design="treatments", replicates=1, columns=3, fields=2, size=1024, seed=0)
    plate = open_plate(plate_path)
    images = {f"simulated/{well}/{field}": plate.read_pixels(plate.open_field(well, field).image().max(dim="z"))
              for well in ("A1", "A3") for field in (0, 1)}
    folder = SHARED / "bbbc013_wortmannin"
    for number in (1, 9, 17, 25, 33, 41):
        dna, reporter = (sorted(folder.glob(f"Channel{c}-{number:02d}-*.tif"))[0] for c in (2, 1))
        images[f"bbbc013/{dna.name[9:-4]}"] = np.stack([tifffile.imread(dna), tifffile.imread(reporter)])
    return images


def measure(images_file: str) -> dict:
    """Seconds per step (best of ``REPEATS``) and the outputs' fingerprints, for the ``screenxai`` on the path."""
    import tifffile
    from scipy import ndimage as ndi
    from skimage import filters, measure as skmeasure

    from screenxai.cells import crops, features, segment

    def best(step) -> tuple[float, object]:
        times, out = [], None
        for _ in range(REPEATS):
            start = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - start)
        return min(times), out

    def relief(dna: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        params = segment.SegmentationParams()
        smooth = filters.gaussian(dna.astype(np.float32), sigma=params.smoothing_sigma, preserve_range=True)
        mask = segment.foreground_mask(smooth, params)
        clumps = skmeasure.label(mask)
        distance = filters.gaussian(ndi.distance_transform_edt(mask), sigma=params.marker_sigma, preserve_range=True)
        intensity = filters.gaussian(smooth, sigma=params.marker_sigma, preserve_range=True)
        mean = np.maximum(segment.label_means(clumps, intensity), np.finfo(np.float32).tiny)
        return (distance * np.clip(intensity / mean[clumps], 0, None)).astype(np.float32), clumps

    fields = {}
    with np.load(images_file) as stored:
        for name in stored.files:
            image = stored[name]
            seg_s, labels = best(lambda: segment.segment_nuclei(image[0]))
            field_relief, clumps = relief(image[0])
            h = segment.SegmentationParams().h
            hmax_s, maxima = best(lambda: segment.h_maxima_per_clump(field_relief, clumps, h))
            shape_s, shape = best(lambda: features.shape_features(labels))
            background = features.field_background(image)
            channel_s, channel = best(lambda: features.channel_features(image, labels, ["DNA", "reporter"], 5,
                                                                       background))
            crops_s, _ = best(lambda: crops.crop_cells(image, labels, 32))
            table = shape.join(channel)
            fields[name] = {"cells": int(labels.max()), "segment_s": seg_s, "h_maxima_s": hmax_s,
                            "shape_features_s": shape_s, "channel_features_s": channel_s, "crops_s": crops_s,
                            "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest(),
                            "maxima_sha1": hashlib.sha1(np.packbits(maxima).tobytes()).hexdigest(),
                            "features_sha1": hashlib.sha1(table.to_numpy(dtype=np.float64).tobytes()).hexdigest()}
    nuclei = SHARED / "nuclei2d"
    truth = tifffile.imread(nuclei / "mask2d.tif")
    f1 = segment.match_objects(segment.segment_nuclei(tifffile.imread(nuclei / "img2d.tif")), truth, iou=0.5)
    return {"fields": fields, "nuclei2d_f1": round(f1.f1, 4), "nuclei2d_mean_iou": round(f1.mean_iou, 4)}


def summarise(result: dict) -> dict:
    """Seconds per field of each step, summed over the fields of each data set."""
    totals: dict[str, dict[str, float]] = {}
    for name, field in result["fields"].items():
        data = totals.setdefault(name.split("/")[0], {})
        for key, value in field.items():
            if key.endswith("_s") or key == "cells":
                data[key] = data.get(key, 0) + value
    return {data: {key: round(value, 3) for key, value in steps.items()} for data, steps in totals.items()}


def run_version(source: Path, images_file: Path) -> dict:
    """``measure`` in a subprocess importing ``screenxai`` from ``source``."""
    code = f"import json, sys; sys.path.append({str(ROOT)!r}); from benchmarks.bench_cells import measure; " \
           f"print(json.dumps(measure({str(images_file)!r})))"
    at_start = load()
    done = subprocess.run([sys.executable, "-c", code], cwd=source, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "load_at_start": at_start, "load_at_end": load()}


def extract(ref: str, into: Path) -> str:
    """Write revision ``ref``'s ``screenxai`` package under ``into``; its full commit id."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "screenxai"], cwd=ROOT, check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision whose cell stage to measure on the same fields first")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "screenxai-bench-cells")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cells_cpu.json")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench_cells needs the shared data folder {SHARED}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    images_file = args.workdir / "fields.npz"
    np.savez(images_file, **field_images(args.workdir))
    result: dict = {"hardware": {"machine": platform.machine(), "processor": platform.processor(),
                                 "cores": os.cpu_count()},
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeats": REPEATS}
    if args.before:
        source = args.workdir / "before-src"
        commit = extract(args.before, source)
        result["before"] = {"ref": args.before, "commit": commit, **run_version(source, images_file)}
    result["after"] = run_version(ROOT, images_file)
    for version in ("before", "after"):
        if version in result:
            result[version]["per_data_set"] = summarise(result[version])
    if args.before:
        before, after = result["before"]["fields"], result["after"]["fields"]
        result["identical_outputs"] = all(
            before[name][key] == after[name][key] for name in after for key in ("cells", "labels_sha1", "maxima_sha1",
                                                                               "features_sha1"))
        result["before_over_after"] = {
            data: {key: round(steps[key] / result["after"]["per_data_set"][data][key], 2)
                   for key in steps if key.endswith("_s")}
            for data, steps in result["before"]["per_data_set"].items()}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in result if key not in ("before", "after")}, indent=1))


if __name__ == "__main__":
    main()
