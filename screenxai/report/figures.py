"""The report's figures, drawn with matplotlib's object API (no pyplot state, safe in any thread).

Each function returns a ``Figure``; ``save_figure`` writes it as PNG (and
SVG for plots) and gives the PNG back for embedding. Images of cells are
shown in the models' normalised intensities ([-1, 1]) mapped to [0, 1]
with one scale per strip or gallery, so brightness compares within it.
"""

from __future__ import annotations

import base64
import io
import string
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

DPI = 90
THUMB_IN = 0.9  # side of one cell thumbnail, inches
CHANNEL_COLOURS = ("#00ff00", "#ff00ff", "#00ffff", "#ffff00", "#ff8000", "#ffffff")
NUCLEAR_NAMES = ("dna", "dapi", "hoechst", "nuclei", "nucleus")
FLAG_MARK = dict(marker="x", color="black", s=18, linewidths=1.0)


def save_figure(figure: Figure, folder: Path, name: str, svg: bool = True) -> str:
    """Write ``name``.png (and .svg) under ``folder``; return the PNG as a ``data:`` URI."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    (folder / f"{name}.png").write_bytes(buffer.getvalue())
    if svg:
        figure.savefig(folder / f"{name}.svg", format="svg")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def row_letters(n: int) -> list[str]:
    """Instrument row names: A..Z, then AA, AB, ... (1536-well plates)."""
    letters = string.ascii_uppercase
    return [letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26] for i in range(n)]


def plate_map(positions: pd.DataFrame, values: np.ndarray, flagged: np.ndarray, title: str, label: str,
              n_rows: int, n_columns: int, cmap: str = "viridis", centred: bool = False) -> Figure:
    """A plate as on the instrument (row A at the top), one square per well, flagged wells crossed."""
    grid = np.full((n_rows, n_columns), np.nan)
    grid[positions["row"].to_numpy() - 1, positions["column"].to_numpy() - 1] = values
    width = min(1.2 + 0.28 * n_columns, 8.5)
    figure = Figure(figsize=(width, 0.8 + width * n_rows / n_columns * 0.8), layout="constrained")
    axes = figure.add_subplot()
    finite = grid[np.isfinite(grid)]
    limits = {}
    if centred and finite.size:
        bound = max(float(np.abs(finite).max()), 1e-9)
        limits = dict(vmin=-bound, vmax=bound)
    image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, **limits)
    axes.set_facecolor("#dddddd")  # wells without a value
    mark = flagged.astype(bool)
    if mark.any():
        axes.scatter(positions["column"].to_numpy()[mark] - 1, positions["row"].to_numpy()[mark] - 1, **FLAG_MARK)
    step = 1 if n_columns <= 12 else 2
    axes.set_xticks(range(0, n_columns, step), [str(c + 1) for c in range(0, n_columns, step)], fontsize=7)
    axes.set_yticks(range(n_rows), row_letters(n_rows), fontsize=7)
    axes.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False, length=0)
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8).set_label(label, fontsize=8)
    return figure


def channel_colours(channels: list[str]) -> list[tuple[float, float, float]]:
    """False colours: blue for the nuclear stain, green, magenta, ... for the others."""
    colours, others = [], iter(CHANNEL_COLOURS)
    for name in channels:
        colours.append(to_rgb("#3060ff") if name.lower() in NUCLEAR_NAMES else to_rgb(next(others, "#ffffff")))
    return colours


def intensity_limits(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel display limits over a whole strip or gallery (images: ..., c, y, x)."""
    flat = np.moveaxis(np.asarray(images, np.float32), -3, 0).reshape(images.shape[-3], -1)
    low, high = np.percentile(flat, 0.5, axis=1), np.percentile(flat, 99.5, axis=1)
    return low, np.maximum(high, low + 1e-6)


def scaled(image: np.ndarray, limits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One crop (c, y, x) in [0, 1] per channel under the given limits."""
    low, high = limits
    return np.clip((image - low[:, None, None]) / (high - low)[:, None, None], 0, 1)


def composite(image: np.ndarray, colours) -> np.ndarray:
    """A (c, y, x) crop in [0, 1] as an RGB false-colour image (y, x, 3)."""
    rgb = np.tensordot(np.asarray(colours).T, image, axes=([1], [0]))  # 3, y, x
    return np.clip(np.moveaxis(rgb, 0, -1), 0, 1)


def counterfactual_strip(original: np.ndarray, edits: np.ndarray, alphas: list[float], probabilities: list[float],
                         original_probability: float, channels: list[str], target: str) -> Figure:
    """The real crop, then its decodings at each alpha: composite on top, each channel in grey below."""
    limits = intensity_limits(np.concatenate([original[None], edits]))
    colours = channel_colours(channels)
    columns = [(original, "original", original_probability)] + [
        (edit, f"alpha {alpha:+g}", p) for edit, alpha, p in zip(edits, alphas, probabilities)]
    n_rows = 1 + len(channels)
    figure = Figure(figsize=(THUMB_IN * len(columns), THUMB_IN * n_rows + 0.5), layout="constrained")
    grid = figure.subplots(n_rows, len(columns), squeeze=False)
    for j, (image, title, p) in enumerate(columns):
        crop = scaled(image, limits)
        grid[0, j].imshow(composite(crop, colours), interpolation="nearest")
        grid[0, j].set_title(title, fontsize=7)
        for i, _ in enumerate(channels):
            grid[i + 1, j].imshow(crop[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        grid[-1, j].set_xlabel(f"p({target}) {p:.2f}", fontsize=7)
    for i, name in enumerate(["composite", *channels]):
        grid[i, 0].set_ylabel(name, fontsize=7)
    for axes in grid.ravel():
        axes.set_xticks([])
        axes.set_yticks([])
    return figure


def dose_response(points: pd.DataFrame, curve: tuple[np.ndarray, np.ndarray] | None, ec50: float, label: str,
                  negative: tuple[float, float] | None, readout: pd.DataFrame | None = None,
                  readout_label: str = "") -> Figure:
    """Well means +- SD against dose (log axis), the four-parameter fit and EC50; a readout on a twin axis."""
    figure = Figure(figsize=(4.2, 2.8), layout="constrained")
    axes = figure.add_subplot()
    axes.errorbar(points["dose"], points["mean"], yerr=points["sd"], fmt="o", ms=4, capsize=2, color="C0",
                  label="wells (mean +- SD of cells)")
    if curve is not None:
        axes.plot(*curve, color="C0", lw=1.2, label="four-parameter fit")
    if np.isfinite(ec50):
        axes.axvline(ec50, color="C0", ls=":", lw=1, label=f"EC50 {ec50:.3g}")
    if negative is not None:
        centre, spread = negative
        axes.axhspan(centre - spread, centre + spread, color="0.85", zorder=0, label="negative controls (+- SD)")
    axes.set_xscale("log")
    axes.set_xlabel("dose", fontsize=8)
    axes.set_ylabel(label, fontsize=8, color="C0")
    if readout is not None and len(readout):
        twin = axes.twinx()
        twin.plot(readout["dose"], readout["value"], "s", ms=3, color="C3", alpha=0.8)
        twin.set_ylabel(readout_label, fontsize=8, color="C3")
        twin.tick_params(labelsize=7)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=6, loc="best")
    return figure


def gallery(crops: np.ndarray, scores: np.ndarray, titles: list[str], channels: list[str]) -> Figure:
    """Cells side by side as false-colour composites, one scale for all, their score under each."""
    limits = intensity_limits(crops)
    colours = channel_colours(channels)
    figure = Figure(figsize=(THUMB_IN * len(crops), THUMB_IN + 0.6), layout="constrained")
    grid = figure.subplots(1, len(crops), squeeze=False)[0]
    for axes, crop, score, title in zip(grid, crops, scores, titles):
        axes.imshow(composite(scaled(crop, limits), colours), interpolation="nearest")
        axes.set_title(title, fontsize=6)
        axes.set_xlabel(f"score {score:+.2f}", fontsize=7)
        axes.set_xticks([])
        axes.set_yticks([])
    return figure


def replicate_agreement(first: np.ndarray, second: np.ndarray, label: str) -> Figure:
    """One replicate well's value against another's of the same condition, with the identity line."""
    figure = Figure(figsize=(2.8, 2.8), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(first, second, s=12)
    both = np.concatenate([first, second])
    low, high = float(np.nanmin(both)), float(np.nanmax(both))
    axes.plot([low, high], [low, high], color="0.6", lw=1)
    axes.set_xlabel(f"{label}, replicate 1", fontsize=8)
    axes.set_ylabel(f"{label}, replicate 2", fontsize=8)
    axes.tick_params(labelsize=7)
    return figure


def effect_bars(names: list[str], effects: np.ndarray, active: np.ndarray, label: str) -> Figure:
    """Treatments ordered by effect, active ones coloured."""
    figure = Figure(figsize=(4.5, 0.6 + 0.18 * len(names)), layout="constrained")
    axes = figure.add_subplot()
    axes.barh(range(len(names)), effects, color=np.where(active, "C1", "0.7"))
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(label, fontsize=8)
    axes.tick_params(labelsize=7)
    return figure


def similarity_heatmap(matrix: pd.DataFrame, groups: list[str]) -> Figure:
    """Treatment-by-treatment similarity, with a strip of colours for the mechanism groups."""
    n = len(matrix)
    figure = Figure(figsize=(2.0 + 0.22 * n, 1.6 + 0.22 * n), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1)
    codes = pd.Categorical(groups).codes
    axes.scatter(np.full(n, -1.0), np.arange(n), c=codes, cmap="tab10", marker="s", s=30, clip_on=False)
    axes.set_xlim(-1.6, n - 0.5)
    axes.set_xticks(range(n), matrix.columns, rotation=90, fontsize=6)
    axes.set_yticks(range(n), [f"{t} ({g})" for t, g in zip(matrix.index, groups)], fontsize=6)
    figure.colorbar(image, ax=axes, shrink=0.7).set_label("similarity", fontsize=8)
    return figure


def adversarial_sweep(sweep: pd.DataFrame) -> Figure:
    """Fraction of cells flipped against the attack budget, black box and formula."""
    figure = Figure(figsize=(3.6, 2.6), layout="constrained")
    axes = figure.add_subplot()
    for target, rows in sweep.groupby("target"):
        rows = rows.sort_values("budget")
        axes.plot(rows["budget"], rows["flip_rate"], "o-", ms=3, label=str(target))
    axes.set_xlabel("L-infinity budget (intensities span [-1, 1])", fontsize=8)
    axes.set_ylabel("fraction of cells flipped", fontsize=8)
    axes.legend(fontsize=7)
    axes.tick_params(labelsize=7)
    return figure
