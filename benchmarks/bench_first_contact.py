"""Measure a newcomer's two commands in a checkout: ``make run`` per stage, and ``make test`` per test and group.

Usage:
    python -m benchmarks.bench_first_contact demo  --checkout DIR [--out FILE]
    python -m benchmarks.bench_first_contact suite --checkout DIR [--out FILE]

Point ``--checkout`` at a fresh clone (no ``.venv``) to measure what a new user
waits for: the virtual environment is part of the time. ``demo`` runs ``make
run`` under ``/usr/bin/time -v`` and stamps every line it prints on arrival; a
stage's time is from the previous stage's last line to its own last line (the
stamped lines are kept in ``DIR/make-run.log``). ``suite`` runs ``.ci/run``
(the CI entry point, which calls ``make test``) with a JUnit report added to
the pytest arguments, and records the wall time, each test's time (setup, call
and teardown) and each pytest-xdist group's total (the groups of
``tests/conftest.py``: a heavy group bounds the suite's wall time from below).
Results merge into ``benchmarks/results/first_contact_cpu.json`` under the
command's name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "first_contact_cpu.json"
# The first words of the lines ``screenxai run`` prints, in the order its stages run.
STAGES = [("simulate", r"no plate given"), ("train: crop cache", r"no bundle given|crop cache|cells "),
          ("classifier", r"classifier epoch"), ("semantic encoder", r"semantic epoch"),
          ("autoencoder", r"autoencoder epoch"), ("explain", r"explain"),
          ("interpretable", r"interpretable"), ("bundle summary", r"bundle |classifier, validation"),
          ("cell and model stage", r"fields"), ("counterfactuals", r"counterfactuals"),
          ("tables and report", r"\d+ wells, |report: |treatments|QC flags")]
TIME_FIELDS = {"User time (seconds)": "user_s", "System time (seconds)": "system_s",
               "Maximum resident set size (kbytes)": "max_rss_kb",
               "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall"}


def machine() -> dict:
    """The hardware and load the figures were taken on, and the seconds of a fixed workload on it."""
    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "speed_reference_s": speed_reference()}


def speed_reference() -> dict[str, float]:
    """Seconds of one fixed workload in this process: 200 single-threaded 512 x 512 matmuls, a Python loop.

    Virtual machines of one kind differ in speed from day to day; a figure
    of this benchmark is comparable to another only beside this one.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(200):
        a @ a
    matmul = time.perf_counter() - start
    torch.set_num_threads(threads)
    start = time.perf_counter()
    sum(i * i for i in range(5_000_000))
    return {"torch_matmul": round(matmul, 3), "python_loop": round(time.perf_counter() - start, 3)}


def stamped_lines(command: list[str], cwd: Path, env: dict | None = None) -> tuple[int, list[tuple[float, str]]]:
    """Run ``command`` and return its status and every output line with the seconds since the start."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in process.stdout]
    return process.wait(), lines


def stage_of(line: str) -> str | None:
    """The stage a line of ``screenxai run`` belongs to, by its first words after any ``stage k/n, `` (None: other)."""
    words = re.sub(r"^stage \d+/\d+, ", "", line)
    return next((name for name, pattern in STAGES if re.match(pattern, words)), None)


def stage_seconds(lines: list[tuple[float, str]], setup_s: float) -> dict[str, float]:
    """Seconds per stage: from the previous stage's last line to this stage's last line."""
    last: dict[str, float] = {}
    for seconds, line in lines:
        stage = stage_of(line)
        if stage is not None and seconds >= setup_s:
            last[stage] = seconds
    ordered = sorted(last.items(), key=lambda item: item[1])
    previous, spans = setup_s, {"virtual environment": round(setup_s, 1)}
    for stage, end in ordered:
        spans[stage] = round(end - previous, 1)
        previous = end
    return spans


def time_figures(lines: list[tuple[float, str]]) -> dict:
    """The figures ``/usr/bin/time -v`` printed last."""
    found = {}
    for _, line in lines:
        key, _, value = line.strip().partition(": ")
        if key in TIME_FIELDS:
            found[TIME_FIELDS[key]] = value if key.startswith("Elapsed") else float(value)
    return found


def measure_demo(checkout: Path) -> dict:
    """``make run`` in ``checkout``: wall and CPU time, peak memory and time per stage."""
    status, lines = stamped_lines(["/usr/bin/time", "-v", "make", "run"], checkout)
    (checkout / "make-run.log").write_text("".join(f"{s:8.1f} {line}\n" for s, line in lines))
    setup_end = next((s for s, line in lines if "screenxai run" in line and "bin/screenxai" in line), 0.0)
    return {"command": "make run", "status": status, "wall_s": round(lines[-1][0], 1) if lines else None,
            "time": time_figures(lines), "stages_s": stage_seconds(lines, setup_end),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def xdist_groups(checkout: Path) -> dict[str, str]:
    """Each test module's pytest-xdist group, as ``tests/conftest.py`` assigns it at collection."""
    script = ("import json, sys, pytest\n"
              "class Groups:\n"
              "    found = {}\n"
              "    @pytest.hookimpl(trylast=True)\n"
              "    def pytest_collection_modifyitems(self, items):\n"
              "        for item in items:\n"
              "            self.found[item.nodeid.split('::')[0]] = item.get_closest_marker('xdist_group').args[0]\n"
              "plugin = Groups()\n"
              "pytest.main(['--collect-only', '-q', '-p', 'no:xdist', 'tests'], plugins=[plugin])\n"
              "print('GROUPS=' + json.dumps(plugin.found))\n")
    output = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", script], cwd=checkout,
                            capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("GROUPS="))[len("GROUPS="):])


def test_times(report: Path) -> list[dict]:
    """Each test case of a JUnit report: its module, name, seconds and outcome."""
    cases = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = "tests/" + case.get("classname", "").split(".")[-1] + ".py"
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else \
            "skipped" if case.find("skipped") is not None else "passed"
        cases.append({"module": module, "name": case.get("name"), "seconds": float(case.get("time", 0)),
                      "outcome": outcome})
    return cases


def measure_suite(checkout: Path, slowest: int = 25) -> dict:
    """``.ci/run`` in ``checkout``: wall time, the slowest tests and every xdist group's total."""
    report = checkout / ".suite-junit.xml"
    env = {**os.environ, "PYTEST_ARGS": f"--numprocesses=2 --dist=loadgroup --junitxml={report}"}
    status, lines = stamped_lines(["/usr/bin/time", "-v", ".ci/run"], checkout, env)
    cases = test_times(report)
    groups = xdist_groups(checkout)
    by_group: dict[str, float] = defaultdict(float)
    for case in cases:
        by_group[groups.get(case["module"], case["module"])] += case["seconds"]
    summary = next((line for _, line in reversed(lines) if re.search(r"\d+ passed", line)), "")
    return {"command": ".ci/run (make test)", "status": status, "wall_s": round(lines[-1][0], 1) if lines else None,
            "time": time_figures(lines), "pytest_summary": summary.strip("= "),
            "outcomes": {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "skipped")},
            "test_seconds_total": round(sum(c["seconds"] for c in cases), 1),
            "groups_s": dict(sorted(((g, round(s, 1)) for g, s in by_group.items()), key=lambda i: -i[1])[:15]),
            "slowest_tests": [{**c, "seconds": round(c["seconds"], 1)}
                              for c in sorted(cases, key=lambda c: -c["seconds"])[:slowest]],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo", "suite"])
    parser.add_argument("--checkout", type=Path, required=True, help="a clone of the repository (fresh: no .venv)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.checkout, capture_output=True,
                            text=True).stdout.strip()
    fresh = not (args.checkout / ".venv").exists()
    result = {"machine": machine(), "commit": commit, "fresh_checkout": fresh}
    result.update(measure_demo(args.checkout) if args.command == "demo" else measure_suite(args.checkout))
    merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged[args.command] = result
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["status"] == 0 else 1)


if __name__ == "__main__":
    main()
