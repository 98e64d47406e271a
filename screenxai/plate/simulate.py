"""A synthetic high-content screen with planted, dose-dependent phenotypes.

``simulate_screen`` writes an OME-Zarr HCS plate of fluorescent cells (a DNA
stain and a reporter) and, beside it, a Parquet table with the planted truth
of every cell. It knows two designs:

- ``"controls"`` (the default): one compound in every row; column 1 holds
  negative controls, the last column positive controls (the top dose), the
  columns between a half-log dose series;
- ``"treatments"``: the compounds of ``TREATMENTS``, each on ``replicates``
  consecutive rows with its own mechanism (``TREATMENT_EFFECTS``); column 1
  of every row holds negative controls (DMSO), columns 2.. a half-log dose
  series of the row's compound up to the top dose.

Each cell carries three planted factors, drawn independently per cell (as
described here for the controls design; in the treatments design each
compound moves only its own factors, see ``TREATMENT_EFFECTS``):

- ``translocation``: the fraction of the cell's reporter inside the nucleus
  (cytoplasmic in untreated cells, nuclear at high dose), a Hill curve of dose;
- ``nuclear_area``: the nucleus's area in pixels, growing with dose along its
  own Hill curve with a higher EC50;
- ``texture``: how spotty (granular) the reporter is, independent of dose.

The nuisance is made so that crude pixel statistics of a cell crop (mean,
SD, 99th percentile per channel) do not tell the controls apart: a cell's
total reporter is conserved when it translocates, a nucleus's total DNA is
conserved when it grows (bigger nuclei are dimmer per pixel), and expression,
DNA content, illumination, well position and camera noise all vary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from screenxai.io import write_parquet_atomic
from screenxai.plate.wells import well_id
from screenxai.plate.writer import FieldImage, PlateWriter

CHANNEL_NAMES = ("DNA", "reporter")
LABEL_NAME = "nuclei"
PLANTED_FACTORS = ("translocation", "nuclear_area", "texture")
CLASS_FACTORS = ("translocation", "nuclear_area")
COMPOUND = "simulated-compound"

# --- Planted effect sizes -------------------------------------------------
# Chosen once, from what such assays look like, before any analysis method
# was run on the simulated plates; they were NOT tuned to make later methods
# (classifier, explanations, interpretable model) pass. Doses are in µM.
TOP_DOSE = 10.0  # dose of the positive controls
DILUTION = 10**0.5  # half-log steps down from the top dose
TRANSLOCATION_BASE = 0.15  # mean fraction of reporter in the nucleus, untreated
TRANSLOCATION_MAX = 0.80  # the same at saturating dose
TRANSLOCATION_EC50 = 0.3  # dose of the half-maximal translocation
TRANSLOCATION_HILL = 1.5  # Hill slope of the translocation curve
TRANSLOCATION_CELL_SD = 0.5  # per-cell SD of the fraction on the logit scale
NUCLEAR_AREA_BASE = 300.0  # mean nuclear area in pixels, untreated (radius ~9.8 px)
NUCLEAR_AREA_MAX_GAIN = 0.5  # relative area gain at saturating dose (x1.5)
NUCLEAR_AREA_EC50 = 3.0  # dose of the half-maximal area gain
NUCLEAR_AREA_HILL = 1.0  # Hill slope of the area curve
NUCLEAR_AREA_CELL_SD = 0.15  # per-cell SD of log area around the dose mean
TEXTURE_SPOT_SD = 0.8  # log-intensity SD of the reporter spots of a cell with texture 1

# --- Nuisance -------------------------------------------------------------
# Variation that does not depend on dose. The spreads of expression, DNA
# content and chromatin condensation and the cytoplasm's thinning were set
# (physically, not by changing the planted effects) until the mean, SD and
# 99th percentile of a 48 px crop around a cell gave ROC AUCs within
# 0.25..0.75 between negative and positive controls.
CELLS_PER_512_FIELD = 150.0  # mean cell count of a 512 x 512 field (scaled by area)
CELL_RADIUS = 16.5  # mean radius of a cell's cytoplasm outline, pixels
CELL_RADIUS_SD = 0.1  # its per-cell log SD
CYTOPLASM_THINNING = 0.9  # cells thin towards their rim: there 10% of the thickness beside the nucleus
NUCLEUS_MAX_ASPECT = 1.5  # nuclei are ellipses with axis ratio in [1, this]
REPORTER_TOTAL = 3.5e5  # median total reporter of a cell, photo-electrons
REPORTER_TOTAL_SD = 0.6  # per-cell log SD of the total reporter
DNA_TOTAL = 4.5e5  # median total DNA stain of a nucleus, photo-electrons
DNA_TOTAL_SD = 0.55  # per-cell log SD of the DNA content
CHROMATIN_SD = (0.1, 0.6)  # range of the per-cell log-intensity SD of the DNA texture (condensation)
AUTOFLUORESCENCE = (30.0, 60.0)  # background photo-electrons per pixel (DNA, reporter)
CAMERA_OFFSET = 100.0  # camera bias, counts
READ_NOISE_SD = 3.0  # camera read noise, counts
VIGNETTING = 0.35  # relative intensity loss in the field's corners
GRADIENT = 0.1  # relative intensity change across a field, random direction
EDGE_WELL_DIMMING = 0.85  # intensity factor of wells on the plate's edge
WELL_SCALE_SD = 0.1  # per-well log SD of intensity
FIELD_SCALE_SD = 0.05  # per-field log SD of intensity (focus, lamp)

# --- Treatments design ----------------------------------------------------
# Fixed, like the planted effect sizes above, before any analysis method was
# run on plates of this design; they are NOT to be tuned to make later
# methods (grouping treatments by mechanism, calling them active) pass.
# Translocation uses TRANSLOCATION_BASE/MAX/CELL_SD above, the nuclear area
# NUCLEAR_AREA_BASE/CELL_SD above; the curves (EC50 in µM, Hill slope) and
# the maxima of area and texture are these.
NEGATIVE_CONTROL = "DMSO"  # compound of the negative controls in column 1 of every row
TREATMENT_AREA_GAIN = 1.0  # relative nuclear-area gain at saturating dose (x2.0)
TEXTURE_BASE = 0.15  # mean texture of an untreated cell (0 smooth .. 1 spotty)
TEXTURE_MAX_GAIN = 0.70  # texture added at saturating dose (0.15 -> 0.85)
TEXTURE_CELL_SD = 0.10  # per-cell SD of texture around its dose mean, before clipping to [0, 1]


@dataclass(frozen=True)
class DoseResponse:
    """A compound's Hill curve for one planted factor: half-maximal at ``ec50`` µM, slope ``hill``."""

    ec50: float
    hill: float


TREATMENT_EFFECTS: Mapping[str, Mapping[str, DoseResponse]] = MappingProxyType({
    compound: MappingProxyType(effects) for compound, effects in {
        "translocator-hi": {"translocation": DoseResponse(0.3, 1.5)},
        "translocator-lo": {"translocation": DoseResponse(3.0, 1.5)},  # 10x less potent
        "enlarger": {"nuclear_area": DoseResponse(1.0, 1.0)},
        "granulator": {"texture": DoseResponse(1.0, 1.0)},
        "dual": {"translocation": DoseResponse(1.0, 1.5), "nuclear_area": DoseResponse(1.0, 1.0)},
        "inert": {},
    }.items()
})
# compound -> the planted factors it moves (its mechanisms), in plate-row order
TREATMENTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {compound: tuple(effects) for compound, effects in TREATMENT_EFFECTS.items()})
# compound -> ground-truth mechanism group: compounds moving the same factors share one
MECHANISM_GROUPS: Mapping[str, str] = MappingProxyType(
    {compound: "+".join(factors) or "none" for compound, factors in TREATMENTS.items()})
DESIGNS = ("controls", "treatments")

_NUCLEUS_EDGE = 0.7  # width of a nucleus's soft edge, pixels
_CELL_EDGE = 1.5  # width of a cytoplasm's soft edge, pixels
_LIMITS = {"rows": (1, 32), "columns": (3, 48), "fields": (1, 100), "size": (64, 4096),
           "replicates": (1, 32 // len(TREATMENTS))}


@dataclass(frozen=True)
class _Phenotype:
    """Dose means of the planted factors of a well's cells."""

    translocation: float  # mean fraction of the reporter in the nucleus
    nuclear_area: float  # median nuclear area, pixels
    texture: float | None  # mean texture; None: uniform on [0, 1] (the controls design)


@dataclass
class SimulatedScreen:
    """A written synthetic plate, its ground truth per cell and its layout."""

    plate_path: Path
    truth_path: Path
    truth: pd.DataFrame
    layout: pd.DataFrame


def truth_path(plate_path: str | Path) -> Path:
    """Where the truth table of a simulated plate lives: ``sim.zarr`` -> ``sim.truth.parquet``."""
    plate_path = Path(plate_path)
    return plate_path.with_name(f"{plate_path.stem}.truth.parquet")


def hill(dose: np.ndarray | float, ec50: float, slope: float) -> np.ndarray:
    """Fraction of the maximal effect at ``dose`` (0 at dose 0, 1/2 at ``ec50``)."""
    dose = np.asarray(dose, dtype=float)
    return dose**slope / (dose**slope + ec50**slope)


def simulated_layout(rows: int, columns: int) -> pd.DataFrame:
    """Layout of a simulated plate: negatives, a half-log dose series, positives.

    Every row has the same scheme: column 1 negative controls (dose 0), the
    last column positive controls (``TOP_DOSE``), the columns between doses
    ``TOP_DOSE / DILUTION**k`` rising to the right.
    """
    _check_range("rows", rows)
    _check_range("columns", columns)
    records = []
    for r in range(rows):
        row = _row_name(r)
        for c in range(1, columns + 1):
            control = "negative" if c == 1 else "positive" if c == columns else "dose"
            records.append({"well": well_id(row, c), "row": row, "column": c, "compound": COMPOUND,
                            "dose_index": c - 1, "dose": _column_dose(c, columns), "control": control})
    return pd.DataFrame.from_records(records)


def treatment_layout(columns: int, replicates: int = 2) -> pd.DataFrame:
    """Layout of the treatments design: each compound of ``TREATMENTS`` on ``replicates`` rows.

    Rows follow ``TREATMENTS`` in order (A, B for the first compound with two
    replicates, ...). In every row column 1 holds a negative control
    (``NEGATIVE_CONTROL``, dose 0, control ``negative``), columns 2.. the
    row's compound at doses ``TOP_DOSE / DILUTION**k`` rising to the right
    (dose_index 1.., control ``treated``).
    """
    _check_range("columns", columns)
    _check_range("replicates", replicates)
    records = []
    for t, compound in enumerate(TREATMENTS):
        for r in range(t * replicates, (t + 1) * replicates):
            row = _row_name(r)
            for c in range(1, columns + 1):
                negative = c == 1
                records.append({"well": well_id(row, c), "row": row, "column": c,
                                "compound": NEGATIVE_CONTROL if negative else compound, "dose_index": c - 1,
                                "dose": _column_dose(c, columns), "control": "negative" if negative else "treated"})
    return pd.DataFrame.from_records(records)


def design_layout(design: str, columns: int, rows: int | None = None, replicates: int = 2) -> pd.DataFrame:
    """Layout of ``design``; ``rows`` (default 4) only for the controls design.

    The treatments design sets its rows itself (``replicates`` per compound)
    and refuses an explicit ``rows`` that differs.
    """
    if design == "controls":
        return simulated_layout(4 if rows is None else rows, columns)
    if design != "treatments":
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    _check_range("replicates", replicates)
    needed = len(TREATMENTS) * replicates
    if rows is not None and rows != needed:
        raise ValueError(f"rows is set by the treatments design ({len(TREATMENTS)} compounds x {replicates} "
                         f"replicates = {needed} rows), got rows={rows!r}; leave rows unset")
    return treatment_layout(columns, replicates)


def simulate_screen(
    out: str | Path,
    rows: int | None = None,
    columns: int = 6,
    fields: int = 2,
    size: int = 512,
    seed: int = 0,
    name: str | None = None,
    ngff_version: str = "0.5",
    overwrite: bool = False,
    *,
    design: str = "controls",
    replicates: int = 2,
) -> SimulatedScreen:
    """Write a synthetic screen to ``out`` and its per-cell truth beside it.

    The plate has ``rows`` x ``columns`` wells of ``fields`` fields, each a
    uint16 image (DNA, reporter) of ``size`` x ``size`` pixels with a
    ``nuclei`` label image; its layout (see ``design_layout``) is stored in
    the plate. ``design`` is ``"controls"`` (``rows`` default 4) or
    ``"treatments"`` (``replicates`` rows per compound of ``TREATMENTS``;
    ``rows`` follows from it and is best left unset; the controls design
    ignores ``replicates``). The truth (one row
    per labelled nucleus) is written to ``truth_path(out)``. The same
    ``seed`` gives the same pixels and truth. Raises ``ValueError`` for
    out-of-range arguments and ``PlateError`` when ``out`` exists and
    ``overwrite`` is false.

    Truth columns: ``plate, well, field, label`` (the cell's value in the
    field's ``nuclei`` label image), the planted ``translocation`` (fraction
    of reporter in the nucleus), ``nuclear_area`` (pixels, the planted
    ellipse) and ``texture`` (0 smooth .. 1 spotty), ``reporter_total`` and
    ``dna_total`` (photo-electrons before illumination and well effects),
    ``centroid_y, centroid_x`` (the nucleus centre, pixels), in the
    treatments design the well's ``compound``, and the well's ``dose`` (µM),
    ``dose_index`` and ``control``.
    """
    _check_arguments(rows, columns, fields, size, seed)
    out = Path(out)
    name = name or out.stem
    layout = design_layout(design, columns, rows, replicates)
    # a pyramid level would double the write time and helps no viewer at <= 1024 px
    levels = 1 if size <= 1024 else 2
    with PlateWriter(out, name=name, channel_names=CHANNEL_NAMES, ngff_version=ngff_version,
                     pyramid_levels=levels, overwrite=overwrite) as writer:
        tables = _write_wells(writer, layout, design, fields, size, seed)
        writer.set_layout(layout)
    truth = _truth_table(tables, with_compound=design == "treatments")
    path = truth_path(out)
    write_parquet_atomic(truth, path)
    return SimulatedScreen(out, path, truth, layout)


def _write_wells(writer: PlateWriter, layout: pd.DataFrame, design: str, fields: int, size: int,
                 seed: int) -> list[pd.DataFrame]:
    """Simulate and write every field of every well of ``layout``; the per-cell truth of each field."""
    well_scales = _well_scales(layout, seed)
    vignette = _vignetting(size)
    textures = _texture_banks(seed)
    tables = []
    for well, scale in zip(layout.itertuples(index=False), well_scales):
        phenotype = _phenotype(design, well.compound, well.dose)
        for f in range(fields):
            rng = np.random.default_rng([seed, 1, well.column, _row_number(well.row), f])
            image, labels, cells = _simulate_field(rng, phenotype, size, scale * vignette, textures)
            writer.add_field(FieldImage(well.well, f, image, {LABEL_NAME: labels}))
            tables.append(cells.assign(plate=writer.name, well=well.well, field=f, compound=well.compound,
                                       dose=well.dose, dose_index=well.dose_index, control=well.control))
    return tables


def _check_arguments(rows: int | None, columns: int, fields: int, size: int, seed: int) -> None:
    """Raise ``ValueError`` for a plate size, field count, image size or seed out of range."""
    for argument, value in (("rows", rows), ("columns", columns), ("fields", fields), ("size", size)):
        if value is not None or argument != "rows":
            _check_range(argument, value)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_range(argument: str, value: int) -> None:
    low, high = _LIMITS[argument]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{argument} must be an integer from {low} to {high}, got {value!r}")


def _row_name(index: int) -> str:
    """Plate row letter(s) of the 0-based row ``index``: A..Z, then AA, AB, ..."""
    return chr(ord("A") + index) if index < 26 else "A" + chr(ord("A") + index - 26)


def _column_dose(column: int, columns: int) -> float:
    """Dose (µM) of a plate column: 0 in column 1, half-log steps up to ``TOP_DOSE`` in the last."""
    return 0.0 if column == 1 else float(TOP_DOSE / DILUTION ** (columns - column))


def _phenotype(design: str, compound: str, dose: float) -> _Phenotype:
    """Dose means of a well's planted factors under ``design``."""
    if design == "controls":
        return _Phenotype(
            translocation=TRANSLOCATION_BASE + (TRANSLOCATION_MAX - TRANSLOCATION_BASE) * hill(
                dose, TRANSLOCATION_EC50, TRANSLOCATION_HILL),
            nuclear_area=NUCLEAR_AREA_BASE * (1 + NUCLEAR_AREA_MAX_GAIN * hill(
                dose, NUCLEAR_AREA_EC50, NUCLEAR_AREA_HILL)),
            texture=None)
    effects = TREATMENT_EFFECTS.get(compound, {})
    effect = {factor: float(hill(dose, curve.ec50, curve.hill)) for factor, curve in effects.items()}
    return _Phenotype(
        translocation=TRANSLOCATION_BASE + (TRANSLOCATION_MAX - TRANSLOCATION_BASE) * effect.get("translocation", 0.0),
        nuclear_area=NUCLEAR_AREA_BASE * (1 + TREATMENT_AREA_GAIN * effect.get("nuclear_area", 0.0)),
        texture=TEXTURE_BASE + TEXTURE_MAX_GAIN * effect.get("texture", 0.0))


def _row_number(row: str) -> int:
    return sum((ord(ch) - ord("A") + 1) * 26**i for i, ch in enumerate(reversed(row)))


def _well_scales(layout: pd.DataFrame, seed: int) -> np.ndarray:
    """Intensity factor per well: random, and dimmer on the plate's edge."""
    rng = np.random.default_rng([seed, 0])
    scale = np.exp(rng.normal(0.0, WELL_SCALE_SD, len(layout)))
    rows = layout["row"].map(_row_number)
    edge = ((rows == rows.min()) | (rows == rows.max()) | (layout["column"] == 1)
            | (layout["column"] == layout["column"].max()))
    return scale * np.where(edge, EDGE_WELL_DIMMING, 1.0)


def _vignetting(size: int) -> np.ndarray:
    """Optical fall-off towards the corners of a field, 1 in the centre."""
    axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / ((size - 1) / 2)
    radius2 = (axis[:, None] ** 2 + axis[None, :] ** 2) / 2
    return 1.0 - VIGNETTING * radius2


def _texture_banks(seed: int, size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Smooth unit-SD noise images (reporter spots, chromatin); cells take random windows of them.

    Smoothing two images once per plate is much cheaper than smoothing noise
    for every cell of every field.
    """
    rng = np.random.default_rng([seed, 2])
    return _smooth_noise(rng, (size, size), 1.0), _smooth_noise(rng, (size, size), 1.5)


def _simulate_field(rng: np.random.Generator, phenotype: _Phenotype, size: int, illumination: np.ndarray,
                    textures: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Image (2, size, size) uint16, nuclei labels and truth of one field."""
    n = rng.poisson(CELLS_PER_512_FIELD * (size / 512) ** 2)
    cells = _draw_cells(rng, n, phenotype)
    cells = _place_cells(rng, cells, size)
    signal, labels = _render(rng, cells, size, textures)
    labels, kept = _relabel(labels, len(cells["cy"]))
    gain = illumination * _field_gain(rng, size)
    image = _acquire(rng, signal, gain)
    table = pd.DataFrame({
        "label": np.arange(1, kept.size + 1, dtype=np.int32),
        "translocation": cells["translocation"][kept],
        "nuclear_area": cells["nuclear_area"][kept],
        "texture": cells["texture"][kept],
        "reporter_total": cells["reporter_total"][kept],
        "dna_total": cells["dna_total"][kept],
        "centroid_y": cells["cy"][kept],
        "centroid_x": cells["cx"][kept],
    })
    return image, labels, table


def _draw_cells(rng: np.random.Generator, n: int, phenotype: _Phenotype) -> dict[str, np.ndarray]:
    """Planted factors and nuisance attributes of ``n`` cells around ``phenotype``."""
    t_mean = phenotype.translocation
    logit = np.log(t_mean / (1 - t_mean)) + rng.normal(0.0, TRANSLOCATION_CELL_SD, n)
    area = phenotype.nuclear_area * np.exp(rng.normal(0.0, NUCLEAR_AREA_CELL_SD, n))
    aspect = rng.uniform(1.0, NUCLEUS_MAX_ASPECT, n)
    radius = np.sqrt(area / np.pi)
    major = radius * np.sqrt(aspect)
    offset = rng.uniform(0.0, 3.0, n)
    offset_angle = rng.uniform(0, 2 * np.pi, n)
    harmonics = rng.uniform(-0.06, 0.06, (n, 4))
    cell_radius = CELL_RADIUS * np.exp(rng.normal(0.0, CELL_RADIUS_SD, n))
    # the cytoplasm outline must hold the whole nucleus
    cell_radius = np.maximum(cell_radius, (major + offset + 3.0) / (1 - np.abs(harmonics).sum(axis=1)))
    return {
        "translocation": 1 / (1 + np.exp(-logit)),
        "nuclear_area": area,
        "texture": _draw_texture(rng, n, phenotype.texture),
        "reporter_total": REPORTER_TOTAL * np.exp(rng.normal(0.0, REPORTER_TOTAL_SD, n)),
        "dna_total": DNA_TOTAL * np.exp(rng.normal(0.0, DNA_TOTAL_SD, n)),
        "chromatin": rng.uniform(*CHROMATIN_SD, n),
        "semi_major": major,
        "semi_minor": radius / np.sqrt(aspect),
        "angle": rng.uniform(0, np.pi, n),
        "offset_y": offset * np.sin(offset_angle),
        "offset_x": offset * np.cos(offset_angle),
        "harmonics": harmonics,
        "cell_radius": cell_radius,
    }


def _draw_texture(rng: np.random.Generator, n: int, mean: float | None) -> np.ndarray:
    """Per-cell texture: uniform on [0, 1] without a ``mean``, else Normal around it, clipped to [0, 1]."""
    if mean is None:
        return rng.uniform(0.0, 1.0, n)
    return np.clip(mean + rng.normal(0.0, TEXTURE_CELL_SD, n), 0.0, 1.0)


def _place_cells(rng: np.random.Generator, cells: dict[str, np.ndarray], size: int,
                 tries: int = 30) -> dict[str, np.ndarray]:
    """Random nucleus centres, whole nuclei inside the field, cells barely overlapping.

    Cells are placed in turn; a cell keeps its first random position at least
    ``exclusion_i + exclusion_j`` from every placed cell, and is dropped when
    ``tries`` positions all fail (a crowded field).
    """
    n = len(cells["translocation"])
    exclusion = np.maximum(0.7 * cells["cell_radius"], 0.95 * cells["semi_major"])
    placed, cy, cx = [], np.empty(n), np.empty(n)
    for i in range(n):
        margin = cells["semi_major"][i] + 1.0
        ys = rng.uniform(margin, size - 1 - margin, tries)
        xs = rng.uniform(margin, size - 1 - margin, tries)
        if placed:
            idx = np.array(placed)
            d2 = (ys[:, None] - cy[idx]) ** 2 + (xs[:, None] - cx[idx]) ** 2
            ok = np.flatnonzero((d2 >= (exclusion[i] + exclusion[idx]) ** 2).all(axis=1))
            if ok.size == 0:
                continue
            ys, xs = ys[ok], xs[ok]
        cy[i], cx[i] = ys[0], xs[0]
        placed.append(i)
    keep = np.array(placed, dtype=int)
    placed_cells = {key: value[keep] for key, value in cells.items()}
    placed_cells["cy"], placed_cells["cx"] = cy[keep], cx[keep]
    return placed_cells


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    """Logistic function, overwriting ``x`` (saves allocating large temporaries)."""
    x *= 0.5
    np.tanh(x, out=x)
    x += 1
    x *= 0.5
    return x


def _render(rng: np.random.Generator, cells: dict[str, np.ndarray], size: int,
            textures: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free photo-electron images (2, size, size) and nuclei labels in placement order.

    Every cell is drawn into its own square patch (all patches at once, as
    float32 arrays of shape (n, P, P); the nucleus in a smaller central
    (n, Q, Q) part) and the patches are added into a padded canvas, so a cell
    cut by the field's edge keeps its planted totals.
    """
    n = len(cells["cy"])
    reach = cells["cell_radius"] * (1 + np.abs(cells["harmonics"]).sum(axis=1)) + np.hypot(
        cells["offset_y"], cells["offset_x"]) + 3 * _CELL_EDGE
    half_nucleus = int(np.ceil(cells["semi_major"].max(initial=1.0) + 4 * _NUCLEUS_EDGE))
    half = max(int(np.ceil(reach.max(initial=0.0))), half_nucleus)
    patch, inner = 2 * half + 1, slice(half - half_nucleus, half + half_nucleus + 1)
    y, x, top, left = _patch_grids(cells, half)
    nucleus, inside, rho = _nucleus_masks(cells, y[:, inner], x[:, :, inner])
    cytoplasm = _cytoplasm_profile(cells, y, x)
    cytoplasm[:, inner, inner] *= 1 - nucleus
    spots = np.exp(TEXTURE_SPOT_SD * _per_cell(cells, "texture") * _windows(rng, textures[0], n, patch))
    t, total = _per_cell(cells, "translocation"), _per_cell(cells, "reporter_total")
    reporter = _normalised(cytoplasm * spots) * ((1 - t) * total)
    reporter[:, inner, inner] += _normalised(nucleus * spots[:, inner, inner]) * (t * total)
    chromatin = np.exp(_per_cell(cells, "chromatin") * _windows(rng, textures[1], n, 2 * half_nucleus + 1))
    dome = np.maximum(1 - 0.2 * rho**2, 0)
    dna = _normalised(nucleus * dome * chromatin) * _per_cell(cells, "dna_total")
    canvas = np.zeros((2, size + patch + 1, size + patch + 1), dtype=np.float32)
    labels = np.zeros(canvas.shape[1:], dtype=np.int32)
    for i in range(n):
        # a patch's corner in a canvas padded by `half` on every side
        window = (slice(top[i], top[i] + patch), slice(left[i], left[i] + patch))
        centre = (slice(top[i] + inner.start, top[i] + inner.stop), slice(left[i] + inner.start, left[i] + inner.stop))
        canvas[1][window] += reporter[i]
        canvas[0][centre] += dna[i]
        labels[centre][inside[i]] = i + 1
    crop = (slice(half, half + size), slice(half, half + size))
    return canvas[:, crop[0], crop[1]], labels[crop]


def _per_cell(cells: dict[str, np.ndarray], key: str) -> np.ndarray:
    """A per-cell value as float32 of shape (n, 1, 1), to broadcast over patches."""
    return cells[key].astype(np.float32)[:, None, None]


def _windows(rng: np.random.Generator, bank: np.ndarray, n: int, patch: int) -> np.ndarray:
    """``n`` random (patch x patch) windows of a texture bank, shape (n, patch, patch)."""
    views = np.lib.stride_tricks.sliding_window_view(bank, (patch, patch))
    oy = rng.integers(0, views.shape[0], n)
    ox = rng.integers(0, views.shape[1], n)
    return views[oy, ox]


def _patch_grids(cells: dict[str, np.ndarray], half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets (y, x) from each nucleus centre over its patch, and each patch's corner."""
    iy, ix = np.rint(cells["cy"]).astype(int), np.rint(cells["cx"]).astype(int)
    grid = np.arange(-half, half + 1, dtype=np.float32)
    y = grid[None, :, None] - (cells["cy"] - iy).astype(np.float32)[:, None, None]
    x = grid[None, None, :] - (cells["cx"] - ix).astype(np.float32)[:, None, None]
    return y, x, iy, ix


def _nucleus_masks(cells: dict[str, np.ndarray], y: np.ndarray,
                   x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft nucleus mask, its label mask (inside the ellipse) and elliptic radius."""
    angle = _per_cell(cells, "angle")
    a, b = _per_cell(cells, "semi_major"), _per_cell(cells, "semi_minor")
    u = x * (np.cos(angle) / a) + y * (np.sin(angle) / a)
    v = y * (np.cos(angle) / b) - x * (np.sin(angle) / b)
    u *= u
    v *= v
    rho = np.sqrt(u + v)
    soft = np.subtract(1, rho, out=u)
    soft *= np.sqrt(a * b) / _NUCLEUS_EDGE
    return _sigmoid_inplace(soft), rho <= 1.0, rho


def _cytoplasm_profile(cells: dict[str, np.ndarray], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Relative cytoplasm thickness: a soft outline, thinning from the centre to the rim.

    The outline is a circle around an offset centre bent by 2nd and 3rd
    harmonics: with theta the angle around that centre and d the distance, it
    lies at ``R (1 + h0 cos 2theta + h1 sin 2theta + h2 cos 3theta + h3 sin
    3theta)``. The harmonics are polynomials in dx/d and dy/d, computed in
    place (this is the costliest step of a field). Inside, the thickness
    falls as ``1 - CYTOPLASM_THINNING (d / outline)^2``.
    """
    dy = y - _per_cell(cells, "offset_y")
    dx = x - _per_cell(cells, "offset_x")
    h = cells["harmonics"].astype(np.float32)[:, :, None, None]
    distance = np.maximum(dx * dx + dy * dy, np.float32(1e-6))
    inverse = np.divide(1, distance)  # 1 / d^2
    np.sqrt(distance, out=distance)
    shape = dx * dx - dy * dy  # cos 2theta = (dx^2 - dy^2) / d^2
    shape *= inverse
    shape *= h[:, 0]
    term = np.multiply(dx, dy, out=np.empty_like(shape))  # sin 2theta = 2 dx dy / d^2
    term *= inverse
    term *= 2 * h[:, 1]
    shape += term
    inverse /= distance  # 1 / d^3
    np.multiply(dx * dx - 3 * dy * dy, dx, out=term)  # cos 3theta = dx (dx^2 - 3 dy^2) / d^3
    term *= inverse
    term *= h[:, 2]
    shape += term
    np.multiply(3 * dx * dx - dy * dy, dy, out=term)  # sin 3theta = dy (3 dx^2 - dy^2) / d^3
    term *= inverse
    term *= h[:, 3]
    shape += term
    shape += 1
    outline = np.multiply(shape, _per_cell(cells, "cell_radius"), out=shape)
    relative = np.divide(distance, outline, out=inverse)
    np.minimum(relative, 1, out=relative)
    thickness = np.multiply(relative, relative, out=relative)
    thickness *= -CYTOPLASM_THINNING
    thickness += 1
    edge = np.subtract(outline, distance, out=outline)
    edge /= _CELL_EDGE
    return _sigmoid_inplace(edge) * thickness


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit SD."""
    noise = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=sigma)
    return noise / noise.std()


def _normalised(patches: np.ndarray) -> np.ndarray:
    """Each patch divided by its sum, so it spreads a total of 1 over its pixels."""
    return patches / patches.sum(axis=(1, 2), keepdims=True)


def _relabel(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 1..k over the cells still visible, and those cells' indices."""
    visible = np.bincount(labels.ravel(), minlength=n + 1) > 0
    visible[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[visible] = np.arange(1, visible.sum() + 1, dtype=np.int32)
    return lut[labels], np.flatnonzero(visible[1:])


def _field_gain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Per-field intensity factor: a random scale and a linear gradient in a random direction."""
    direction = rng.uniform(0, 2 * np.pi)
    axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size - 1)
    ramp = np.sin(direction) * axis[:, None] + np.cos(direction) * axis[None, :]
    return np.exp(rng.normal(0.0, FIELD_SCALE_SD)) * (1 + GRADIENT * ramp)


def _acquire(rng: np.random.Generator, signal: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Camera image: shot and read noise on the illuminated signal, offset, uint16.

    Shot noise is drawn as Gaussian with variance equal to the mean, exact
    enough here since the autofluorescence keeps every pixel's mean above
    ~30 photo-electrons, and much faster than Poisson draws.
    """
    expected = signal * gain.astype(np.float32) + np.asarray(AUTOFLUORESCENCE, dtype=np.float32)[:, None, None]
    noise = rng.standard_normal(expected.shape, dtype=np.float32) * np.sqrt(expected + np.float32(READ_NOISE_SD**2))
    counts = np.rint(expected + noise + np.float32(CAMERA_OFFSET))
    return np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _truth_table(tables: list[pd.DataFrame], with_compound: bool) -> pd.DataFrame:
    columns = ["plate", "well", "field", "label", *PLANTED_FACTORS, "reporter_total", "dna_total",
               "centroid_y", "centroid_x", *(["compound"] if with_compound else []), "dose", "dose_index",
               "control"]
    truth = pd.concat(tables, ignore_index=True)[columns]
    return truth.astype({"field": "int32", "label": "int32", "dose_index": "int32"})
