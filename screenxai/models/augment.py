"""Augmentations that do not change what a microscope cell image means.

A cell has no preferred orientation, so the 8 flips and 90-degree rotations
of the square are free; exposure varies a little between fields, so a mild
per-channel gain and offset are too. Images are in [-1, 1] with background
near -1, so gain is applied around -1 and leaves the background in place.
"""

from __future__ import annotations

import torch


def dihedral(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Apply element ``index[i]`` (0..7) of the square's symmetry group to image ``x[i]``.

    Elements 0-3 rotate by 0/90/180/270 degrees; 4-7 flip left-right first.
    """
    out = torch.empty_like(x)
    for element in range(8):
        rows = (index == element).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        chunk = x[rows]
        if element >= 4:
            chunk = chunk.flip(-1)
        out[rows] = torch.rot90(chunk, element % 4, dims=(-2, -1))
    return out


def augment(x: torch.Tensor, gen: torch.Generator, intensity_jitter: float = 0.1) -> torch.Tensor:
    """Random symmetry plus per-image, per-channel gain ``1 +- jitter`` and offset ``+- jitter / 2``.

    Every random draw comes from ``gen`` (on ``x``'s device), so a seeded
    generator gives the same augmentation on every run.
    """
    n, c = x.shape[:2]
    index = torch.randint(0, 8, (n,), generator=gen, device=gen.device).to(x.device)
    x = dihedral(x, index)
    if intensity_jitter > 0:
        gain = 1 + intensity_jitter * (2 * torch.rand(n, c, 1, 1, generator=gen, device=gen.device) - 1)
        offset = intensity_jitter / 2 * (2 * torch.rand(n, c, 1, 1, generator=gen, device=gen.device) - 1)
        x = (x + 1) * gain.to(x) - 1 + offset.to(x)
    return x
