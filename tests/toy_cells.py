"""Toy single-cell crops with known, planted factors, for the models' tests (the library never uses them).

Each cell is a disk (channel 0, "DNA") of radius ``size`` inside a larger
disk (channel 1, "reporter") whose nuclear/cytoplasmic brightness balance is
``translocation``. Wells have a dose; negative wells dose 0, positive wells
dose 1, and the factors of a cell follow its well's dose plus cell noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _disk(size: int, cy: np.ndarray, cx: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Soft-edged disks (N, size, size) with values in [0, 1]."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dist = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
    return np.clip(radius[:, None, None] - dist + 0.5, 0, 1)


def toy_cells(wells_per_class: int = 3, cells_per_well: int = 40, size: int = 32, doses: int = 0,
              seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Crops (N, 2, size, size) in [-1, 1] and their table.

    The table has ``plate``, ``well``, ``control`` (negative, positive or
    dose), ``dose`` and the planted per-cell factors ``nuclear_area`` (disk
    radius, pixels) and ``translocation`` (share of reporter in the nucleus).
    ``doses`` extra wells get evenly spaced doses between the controls.
    """
    rng = np.random.default_rng(seed)
    plan = ([("negative", 0.0)] * wells_per_class + [("positive", 1.0)] * wells_per_class
            + [("dose", d) for d in np.linspace(0, 1, doses + 2)[1:-1]])
    crops, rows = [], []
    for index, (control, dose) in enumerate(plan):
        n = cells_per_well
        radius = size / 8 * (1 + 0.5 * dose) + rng.normal(0, size / 64, n)
        transloc = np.clip(0.3 + 0.4 * dose + rng.normal(0, 0.05, n), 0, 1)
        cy, cx = (size - 1) / 2 + rng.uniform(-2, 2, (2, n))
        nucleus = _disk(size, cy, cx, radius)
        cell = _disk(size, cy, cx, 1.8 * radius)
        reporter = transloc[:, None, None] * nucleus + (1 - transloc[:, None, None]) * 0.6 * (cell - nucleus)
        image = np.stack([nucleus * rng.uniform(0.8, 1.0, (n, 1, 1)), reporter], axis=1)
        image += rng.normal(0, 0.02, image.shape)
        crops.append((2 * np.clip(image, 0, 1) - 1).astype(np.float32))
        well = f"{chr(ord('B') + index // 10)}{index % 10 + 2:02d}"
        rows.append(pd.DataFrame({"plate": "toy", "well": well, "control": control, "dose": dose,
                                  "nuclear_area": np.pi * radius**2, "translocation": transloc}))
    return np.concatenate(crops), pd.concat(rows, ignore_index=True)
