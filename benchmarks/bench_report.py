"""Measure the run report on a 384-well, 20-treatment screen: page size, build time and browser load time.

Usage: python -m benchmarks.bench_report [--workdir DIR] [--out FILE] [--before REF]

The run folder is synthesised (``tests/report_screen.py``): a 16 x 24 plate
of 20 compounds (8 half-log doses in duplicate each), negative and positive
controls, 3 attributes per compound, treatments and similarity tables, a
cell table of 3 cells per well and a counterfactuals.zarr of 2 exemplar
cells per compound and 2 negatives (32 px, 2 channels, 5 alphas) with each
attribute's gallery of 4 + 4 cells, in the multi-treatment tables' layout.
No models run: what is measured is the report alone. The page is then
opened from disk in headless Chromium (selenium, system chromedriver).

With ``--before REF`` the report builder of git revision REF (its
``screenxai/`` extracted with ``git archive``) first builds the same run
folder (a copy) in a subprocess, so the two build times are measured in
one sitting, under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from report_screen import write_run  # noqa: E402

from screenxai.report import build_report  # noqa: E402
from screenxai.report.browser import load_report  # noqa: E402

ROWS, COLUMNS, TREATMENTS, ATTRIBUTES = 16, 24, 20, 3
TIMED_BUILD = ("import sys, time; from screenxai.report import build_report; start = time.perf_counter(); "
               "build_report(sys.argv[1]); print(time.perf_counter() - start)")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_before(ref: str, run: Path, workdir: Path) -> dict:
    """Build a copy of ``run`` with git revision ``ref``'s report builder, in a subprocess; its seconds and loads."""
    source, copy = workdir / "before-src", workdir / "run-before"
    for path in (source, copy):
        shutil.rmtree(path, ignore_errors=True)
    source.mkdir(parents=True)
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "screenxai"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report", "report.html"))
    at_start = load()
    done = subprocess.run([sys.executable, "-c", TIMED_BUILD, str(copy)], cwd=source, check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(source)})
    return {"ref": ref, "commit": commit, "build_seconds": round(float(done.stdout.strip().splitlines()[-1]), 1),
            "load_at_start": at_start, "load_at_end": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/screenxai-bench-report"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report_cpu.json")
    parser.add_argument("--before", help="git revision whose report builder to time on the same run first")
    args = parser.parse_args()
    result = {"hardware": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))},
              "load_at_start": load(),
              "input": {"synthesised": True, "plate": f"{ROWS}x{COLUMNS}", "wells": ROWS * COLUMNS,
                        "treatments": TREATMENTS, "attributes_per_treatment": ATTRIBUTES,
                        "note": "wells, attributes, treatments, similarity, cell tables and counterfactuals.zarr "
                                "(with galleries) synthesised by tests/report_screen.py; no plate images or models"}}
    shutil.rmtree(args.workdir / "run", ignore_errors=True)
    run = write_run(args.workdir / "run", rows=ROWS, columns=COLUMNS, n_treatments=TREATMENTS,
                    attributes_per_treatment=ATTRIBUTES)
    if args.before:
        result["before"] = build_before(args.before, run, args.workdir)
    at_start = load()
    start = time.perf_counter()
    html = build_report(run)
    result["build_seconds"] = round(time.perf_counter() - start, 1)
    result["build_load"] = {"at_start": at_start, "at_end": load()}
    if args.before:
        result["before_over_after"] = round(result["before"]["build_seconds"] / result["build_seconds"], 2)
    figures = list((run / "report" / "figures").iterdir())
    result["page"] = {"html_mb": round(html.stat().st_size / 1e6, 2),
                      "images": len(list(run.glob("report/figures/*.png"))),
                      "figures_folder_mb": round(sum(f.stat().st_size for f in figures) / 1e6, 2)}
    loads = [load_report(html) for _ in range(3)]
    result["browser"] = {"browser": "headless Chromium (selenium, system chromedriver), file://",
                         "load_seconds": [round(p.load_seconds, 2) for p in loads],
                         "load_event_seconds": [round(p.dom_seconds, 2) for p in loads],
                         "console_errors": len(loads[0].console_errors),
                         "failed_requests": len(loads[0].failed_requests),
                         "images_not_loaded": sum(not i["naturalWidth"] for i in loads[0].images)}
    result["load_at_end"] = load()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
