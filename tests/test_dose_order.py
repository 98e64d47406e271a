"""The benchmark's dose-order figures: dose groups, the plateau ceiling and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from benchmarks.dose_order import dose_groups, plateau_ceiling, sampling_intervals


def _wells(values_per_level: dict[int, list[float]]) -> pd.DataFrame:
    rows = [(f"W{level}{i}", level, v) for level, values in values_per_level.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["well", "dose_index", "ratio"])


def test_levels_merge_where_their_wells_overlap_and_split_where_they_do_not():
    wells = _wells({1: [1.0, 1.2], 2: [1.1, 1.3], 3: [2.0, 2.1], 4: [3.0, 3.4], 5: [3.2, 3.3]})
    assert dose_groups(wells, "ratio") == {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}


def test_the_ceiling_is_the_best_order_without_plateaus_and_near_zero_for_a_flat_response():
    rising = _wells({level: [level + 0.1 * i for i in range(4)] for level in range(1, 7)})
    best = spearmanr(np.arange(len(rising)), rising["dose_index"])[0]  # replicate wells tie in dose
    assert plateau_ceiling(rising, "ratio")["mean"] == pytest.approx(best)
    flat = _wells({level: [1.0 + 0.01 * ((level * 7 + i) % 5) for i in range(4)] for level in range(1, 7)})
    ceiling = plateau_ceiling(flat, "ratio")
    assert ceiling["groups"] == [[float(level) for level in range(1, 7)]]
    assert abs(ceiling["mean"]) < 0.05 and ceiling["5"] < 0 < ceiling["95"]


def test_bootstrap_tells_a_dose_tracking_readout_from_noise():
    rng = np.random.default_rng(1)
    dose = pd.Series({f"W{level}": level for level in range(1, 9)})
    cells = pd.DataFrame([(well, level + rng.normal(0, 0.5), rng.normal()) for well, level in dose.items()
                          for _ in range(50)], columns=["well", "tracks", "noise"])
    figures = sampling_intervals(cells, dose, {"tracks": "mean", "noise": "median"}, draws=100)
    assert figures["tracks"]["5"] > 0.9 and figures["noise"]["95"] < 0.9
    assert figures["tracks - noise"]["fraction_at_least_as_good"] == 1.0
