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
from matplotlib.ticker import FuncFormatter

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
    cell_in = min(0.28, 7.0 / n_columns)
    width, height = 1.6 + cell_in * n_columns, 0.8 + cell_in * n_rows
    figure = Figure(figsize=(width, height))
    axes = figure.add_axes((0.45 / width, 0.2 / height, cell_in * n_columns / width, cell_in * n_rows / height))
    bar = figure.add_axes(((0.6 + cell_in * n_columns) / width, 0.2 / height, 0.12 / width, cell_in * n_rows / height))
    finite = grid[np.isfinite(grid)]
    limits = {}
    if centred and finite.size:
        bound = max(float(np.abs(finite).max()), 1e-9)
        limits = dict(vmin=-bound, vmax=bound)
    image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", **limits)
    axes.set_facecolor("#dddddd")  # wells without a value
    mark = flagged.astype(bool)
    if mark.any():
        axes.scatter(positions["column"].to_numpy()[mark] - 1, positions["row"].to_numpy()[mark] - 1, **FLAG_MARK)
    step = 1 if n_columns <= 12 else 2
    axes.set_xticks(range(0, n_columns, step), [str(c + 1) for c in range(0, n_columns, step)], fontsize=7)
    axes.set_yticks(range(n_rows), row_letters(n_rows), fontsize=7)
    axes.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False, length=0)
    figure.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    figure.colorbar(image, cax=bar).set_label(label, fontsize=8)
    bar.tick_params(labelsize=7)
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


def montage(tiles: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Rows of equal-sized RGB tiles (y, x, 3) as one white-separated image."""
    h, w = tiles[0][0].shape[:2]
    n_rows, n_cols = len(tiles), len(tiles[0])
    canvas = np.ones((n_rows * (h + gap) - gap, n_cols * (w + gap) - gap, 3))
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    return canvas


def _tile_figure(canvas: np.ndarray, n_rows: int, n_cols: int, column_titles: list[str], column_labels: list[str],
                 row_labels: list[str]) -> Figure:
    """One axes showing a montage, titles above and labels under each column, names left of each row."""
    width, height = 0.7 + THUMB_IN * n_cols, 0.6 + THUMB_IN * n_rows
    figure = Figure(figsize=(width, height))
    axes = figure.add_axes((0.6 / width, 0.3 / height, THUMB_IN * n_cols / width, THUMB_IN * n_rows / height))
    axes.imshow(canvas, interpolation="nearest", aspect="auto")
    step_x, step_y = canvas.shape[1] / n_cols, canvas.shape[0] / n_rows
    axes.set_xticks([step_x * (j + 0.5) for j in range(n_cols)], column_labels, fontsize=7)
    axes.set_yticks([step_y * (i + 0.5) for i in range(n_rows)], row_labels, fontsize=7)
    axes.tick_params(length=0)
    for j, title in enumerate(column_titles):
        axes.text(step_x * (j + 0.5), -2, title, ha="center", va="bottom", fontsize=7)
    for spine in axes.spines.values():
        spine.set_visible(False)
    return figure


def counterfactual_strip(original: np.ndarray, edits: np.ndarray, alphas: list[float], probabilities: list[float],
                         original_probability: float, channels: list[str], target: str) -> Figure:
    """The real crop, then its decodings at each alpha: composite on top, each channel in grey below."""
    limits = intensity_limits(np.concatenate([original[None], edits]))
    colours = channel_colours(channels)
    crops = [scaled(image, limits) for image in [original, *edits]]
    tiles = [[composite(c, colours) for c in crops]]
    tiles += [[np.repeat(c[i][..., None], 3, axis=-1) for c in crops] for i in range(len(channels))]
    titles = ["original"] + [f"alpha {a:+g}" for a in alphas]
    labels = [f"p {p:.2f}" for p in [original_probability, *probabilities]]
    figure = _tile_figure(montage(tiles), len(tiles), len(crops), titles, labels, ["composite", *channels])
    figure.text(0.5, 0.02, f"p = classifier's probability of {target}", ha="center", fontsize=7)
    return figure


def plain_number(value: float, _position: int | None = None) -> str:
    """A log axis's tick label as a plain number (0.01, 0.1, 1, 10): as legible for a dose as 10^-2, and drawn
    without mathtext, which costs as much as the rest of a dose-response figure."""
    return f"{value:g}"


def dose_response(points: pd.DataFrame, curve: tuple[np.ndarray, np.ndarray] | None, ec50: float, label: str,
                  negative: tuple[float, float] | None, readout: pd.DataFrame | None = None,
                  readout_label: str = "") -> Figure:
    """Well means +- SD against dose (log axis), the four-parameter fit and EC50; a readout on a twin axis."""
    figure = Figure(figsize=(4.6, 3.0))
    axes = figure.add_axes((0.14, 0.15, 0.7, 0.8))
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
    axes.xaxis.set_major_formatter(FuncFormatter(plain_number))
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
    tiles = [[composite(scaled(crop, limits), colours) for crop in crops]]
    return _tile_figure(montage(tiles), 1, len(crops), titles, [f"score {s:+.2f}" for s in scores], [""])


def replicate_agreement(first: np.ndarray, second: np.ndarray, label: str) -> Figure:
    """One replicate well's value against another's of the same condition, with the identity line."""
    figure = Figure(figsize=(3.0, 3.0))
    axes = figure.add_axes((0.2, 0.16, 0.76, 0.78))
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
    """Fraction of cells flipped against the attack budget, black box and formula (of each treatment, with many)."""
    figure = Figure(figsize=(4.0, 2.8))
    axes = figure.add_axes((0.15, 0.17, 0.8, 0.78))
    several = "treatment" in sweep and sweep["treatment"].nunique() > 1
    for key, rows in sweep.groupby(["treatment", "target"] if several else "target"):
        rows = rows.sort_values("budget")
        label = f"{key[0]}: {key[1]}" if several else str(key[0] if isinstance(key, tuple) else key)
        axes.plot(rows["budget"], rows["flip_rate"], "o-", ms=3, label=label)
    axes.set_xlabel("L-infinity budget (intensities span [-1, 1])", fontsize=8)
    axes.set_ylabel("fraction of cells flipped", fontsize=8)
    axes.legend(fontsize=7)
    axes.tick_params(labelsize=7)
    return figure
