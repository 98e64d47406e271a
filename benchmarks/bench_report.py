"""Measure the run report on a 384-well, 20-treatment screen: page size, build time and browser load time.

Usage: python -m benchmarks.bench_report [--workdir DIR] [--out FILE]

The run folder is synthesised (``tests/report_screen.py``): a 16 x 24 plate
of 20 compounds (8 half-log doses in duplicate each), negative and positive
controls, 3 attributes per compound, treatments and similarity tables, and
a counterfactuals.zarr of 2 exemplar cells per compound and 2 negatives
(32 px, 2 channels, 5 alphas), in the multi-treatment tables' layout. No
models run: what is measured is the report alone. The page is then opened
from disk in headless Chromium (selenium, system chromedriver).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from report_screen import write_run  # noqa: E402

from screenxai.report import build_report  # noqa: E402
from screenxai.report.browser import load_report  # noqa: E402

ROWS, COLUMNS, TREATMENTS, ATTRIBUTES = 16, 24, 20, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/screenxai-bench-report"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report_cpu.json")
    args = parser.parse_args()
    result = {"hardware": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count()},
              "load_at_start": [round(x, 2) for x in os.getloadavg()],
              "input": {"synthesised": True, "plate": f"{ROWS}x{COLUMNS}", "wells": ROWS * COLUMNS,
                        "treatments": TREATMENTS, "attributes_per_treatment": ATTRIBUTES,
                        "note": "wells, attributes, treatments, similarity tables and counterfactuals.zarr "
                                "synthesised by tests/report_screen.py; no plate images or models"}}
    run = write_run(args.workdir / "run", rows=ROWS, columns=COLUMNS, n_treatments=TREATMENTS,
                    attributes_per_treatment=ATTRIBUTES)
    start = time.perf_counter()
    html = build_report(run)
    result["build_seconds"] = round(time.perf_counter() - start, 1)
    figures = list((run / "report" / "figures").iterdir())
    result["page"] = {"html_mb": round(html.stat().st_size / 1e6, 2), "images": len(list(run.glob("report/figures/*.png"))),
                      "figures_folder_mb": round(sum(f.stat().st_size for f in figures) / 1e6, 2)}
    loads = [load_report(html) for _ in range(3)]
    result["browser"] = {"browser": "headless Chromium (selenium, system chromedriver), file://",
                         "load_seconds": [round(p.load_seconds, 2) for p in loads],
                         "load_event_seconds": [round(p.dom_seconds, 2) for p in loads],
                         "console_errors": len(loads[0].console_errors),
                         "failed_requests": len(loads[0].failed_requests),
                         "images_not_loaded": sum(not i["naturalWidth"] for i in loads[0].images)}
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
