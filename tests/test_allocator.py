"""Workers run torch with glibc's adaptive malloc thresholds (Dask's fixed trim threshold slows it 2.4x)."""

from __future__ import annotations

import os
import subprocess
import sys

from screenxai.pipeline.allocator import TRIM_VARIABLE
from screenxai.pipeline.cluster import connect


def test_local_cluster_workers_start_without_a_fixed_trim_threshold():
    with connect(n_workers=1) as client:
        found = client.run(lambda: os.environ.get(TRIM_VARIABLE))
    assert list(found.values()) == [None]


def test_a_worker_started_with_the_variable_raises_both_thresholds_at_run_time():
    script = "from screenxai.pipeline.allocator import relax_malloc_thresholds as r; print(r())"
    with_variable = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                   env={**os.environ, TRIM_VARIABLE: "65536"})
    without = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if k != TRIM_VARIABLE})
    assert with_variable.stdout.strip() == "True"  # glibc's mallopt accepted both settings
    assert without.stdout.strip() == "False"  # nothing to undo: glibc adapts on its own
