"""Tests of the synthetic screen: plate structure, truth, planted factors, nuisance, seeds, designs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import documented_columns
from scipy.stats import rankdata, spearmanr

from screenxai.cli import main
from screenxai.errors import PlateError
from screenxai.plate import open_plate
from screenxai.plate.simulate import (
    CLASS_FACTORS,
    MECHANISM_GROUPS,
    NEGATIVE_CONTROL,
    PLANTED_FACTORS,
    TREATMENTS,
    SimulatedScreen,
    design_layout,
    simulate_screen,
    treatment_layout,
    truth_path,
)

CROP = 48


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> SimulatedScreen:
    """A realistic plate: 4 x 6 wells, one 512 px field each."""
    return simulate_screen(tmp_path_factory.mktemp("sim") / "sim.zarr", rows=4, columns=6, fields=1, size=512)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SimulatedScreen:
    """A small plate with two fields per well, in NGFF 0.4."""
    return simulate_screen(tmp_path_factory.mktemp("small") / "small.zarr", rows=2, columns=3, fields=2,
                           size=128, seed=3, ngff_version="0.4")


def _field_labels(screen: SimulatedScreen) -> dict[tuple[str, int], np.ndarray]:
    plate = open_plate(screen.plate_path)
    return {(k.well, k.field): plate.labels(k.well, k.field).values[0] for k in plate.field_keys()}


def _well_means(truth: pd.DataFrame) -> pd.DataFrame:
    return truth.groupby("well")[[*PLANTED_FACTORS, "dose"]].mean()


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive value exceeds a negative one (ROC AUC, ties count half)."""
    ranks = rankdata(np.concatenate([positive, negative]))
    return (ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2) / (positive.size * negative.size)


def _crop_statistics(screen: SimulatedScreen) -> pd.DataFrame:
    """Mean, SD and 99th percentile per channel of a crop around every control cell."""
    plate = open_plate(screen.plate_path)
    half = CROP // 2
    controls = screen.truth[screen.truth["control"].isin(["negative", "positive"])]
    rows = []
    for (well, field), cells in controls.groupby(["well", "field"]):
        image = plate.image(well, field).values[:, 0].astype(np.float32)
        image = np.pad(image, ((0, 0), (half, half), (half, half)), mode="reflect")
        for y, x, control in zip(cells["centroid_y"], cells["centroid_x"], cells["control"]):
            y, x = int(round(y)) + half, int(round(x)) + half
            crop = image[:, y - half : y + half, x - half : x + half].reshape(2, -1)
            row = {"positive": control == "positive"}
            for c, channel in enumerate(plate.channel_names):
                row[f"{channel} mean"] = crop[c].mean()
                row[f"{channel} SD"] = crop[c].std()
                row[f"{channel} p99"] = np.percentile(crop[c], 99)
            rows.append(row)
    return pd.DataFrame(rows)


def _half_effect_dose(means: pd.DataFrame, factor: str) -> float:
    """Dose where the mean of ``factor`` first reaches half its negative-to-positive change."""
    by_dose = means.groupby("dose")[factor].mean()
    response = (by_dose - by_dose.iloc[0]) / (by_dose.iloc[-1] - by_dose.iloc[0])
    return float(response.index[np.argmax(response.to_numpy() >= 0.5)])


def test_plate_structure(small: SimulatedScreen) -> None:
    plate = open_plate(small.plate_path)
    assert plate.name == "small" and small.truth_path == small.plate_path.with_name("small.truth.parquet")
    assert len(plate.wells) == 2 * 3
    assert all(len(well.field_paths) == 2 for well in plate.wells.values())
    assert plate.channel_names == ["DNA", "reporter"]
    image = plate.image("B03", 1)
    assert image.dtype == np.uint16 and image.shape == (2, 1, 128, 128)
    assert plate.label_names("B03", 1) == ["nuclei"]
    assert plate.labels("B03", 1).dtype == np.int32
    pd.testing.assert_frame_equal(plate.layout, small.layout, check_dtype=False)


def test_layout_scheme(screen: SimulatedScreen) -> None:
    layout = open_plate(screen.plate_path).layout
    assert list(layout.columns) == ["well", "row", "column", "compound", "dose_index", "dose", "control"]
    for _, row in layout.groupby("row"):
        row = row.sort_values("column")
        assert row["control"].tolist() == ["negative", *["dose"] * 4, "positive"]
        assert row["dose_index"].tolist() == list(range(6))
        assert row["dose"].iloc[0] == 0 and row["dose"].is_monotonic_increasing
        assert row["dose"].iloc[1:].diff().dropna().gt(0).all()


def test_truth_file_and_columns(screen: SimulatedScreen) -> None:
    assert screen.truth_path == truth_path(screen.plate_path) == screen.plate_path.with_name("sim.truth.parquet")
    stored = pd.read_parquet(screen.truth_path)
    pd.testing.assert_frame_equal(stored, screen.truth)
    expected = {"plate", "well", "field", "label", *PLANTED_FACTORS, "reporter_total", "dna_total",
                "centroid_y", "centroid_x", "dose", "dose_index", "control"}
    assert expected <= set(stored.columns)
    assert (stored["plate"] == "sim").all()
    assert stored["translocation"].between(0, 1).all()


@pytest.mark.parametrize("which", ["screen", "small"])
def test_truth_matches_label_images(which: str, request: pytest.FixtureRequest) -> None:
    screen = request.getfixturevalue(which)
    labels = _field_labels(screen)
    truth = screen.truth.groupby(["well", "field"])["label"].apply(set).to_dict()
    for key, image in labels.items():
        present = set(np.unique(image).tolist()) - {0}
        assert present == truth.get(key, set()), key
        assert present == set(range(1, len(present) + 1)), key


def test_cell_density_and_size(screen: SimulatedScreen) -> None:
    counts = screen.truth.groupby(["well", "field"]).size()
    assert counts.between(120, 200).all(), counts.describe()
    untreated = screen.truth[screen.truth["dose"] == 0]
    radius = np.sqrt(untreated["nuclear_area"].mean() / np.pi)
    assert 8 <= radius <= 12
    # the label image shows the planted nucleus (overlaps with neighbours aside)
    labels = _field_labels(screen)
    cells = screen.truth[screen.truth["well"] == "A01"]
    areas = np.bincount(labels[("A01", 0)].ravel())[cells["label"]]
    assert np.median(areas / cells["nuclear_area"]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.acceptance
def test_planted_factors_follow_dose(screen: SimulatedScreen) -> None:
    means = _well_means(screen.truth)
    for factor in CLASS_FACTORS:
        assert spearmanr(means["dose"], means[factor]).statistic >= 0.9, factor
    assert abs(spearmanr(means["dose"], means["texture"]).statistic) < 0.5
    negative = screen.truth[screen.truth["control"] == "negative"]
    positive = screen.truth[screen.truth["control"] == "positive"]
    assert abs(positive["texture"].mean() - negative["texture"].mean()) < 0.05
    assert positive["translocation"].mean() > negative["translocation"].mean() + 0.4
    assert positive["nuclear_area"].mean() > 1.2 * negative["nuclear_area"].mean()
    # different EC50s: translocation reaches half its effect at a lower dose
    ec50 = {factor: _half_effect_dose(means, factor) for factor in CLASS_FACTORS}
    assert ec50["nuclear_area"] >= 3 * ec50["translocation"], ec50


@pytest.mark.acceptance
def test_class_factors_vary_independently_per_cell(screen: SimulatedScreen) -> None:
    for well, cells in screen.truth.groupby("well"):
        r = np.corrcoef(cells["translocation"], cells["nuclear_area"])[0, 1]
        assert abs(r) < 0.5, (well, r)


@pytest.mark.acceptance
def test_crude_pixel_statistics_do_not_separate_controls(screen: SimulatedScreen) -> None:
    stats = _crop_statistics(screen)
    positive = stats.pop("positive").to_numpy()
    assert positive.sum() > 300 and (~positive).sum() > 300
    aucs = {name: _auc(stats.loc[positive, name].to_numpy(), stats.loc[~positive, name].to_numpy())
            for name in stats.columns}
    assert len(aucs) == 6
    assert all(0.25 <= auc <= 0.75 for auc in aucs.values()), aucs


def test_same_seed_same_bytes_other_seed_differs(small: SimulatedScreen, tmp_path: Path) -> None:
    again = simulate_screen(tmp_path / "a" / "small.zarr", rows=2, columns=3, fields=2, size=128, seed=3,
                            ngff_version="0.4")
    files = sorted(p.relative_to(small.plate_path) for p in small.plate_path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.plate_path) for p in again.plate_path.rglob("*") if p.is_file())
    for name in files:
        assert (small.plate_path / name).read_bytes() == (again.plate_path / name).read_bytes(), name
    assert small.truth_path.read_bytes() == again.truth_path.read_bytes()

    other = simulate_screen(tmp_path / "b" / "small.zarr", rows=2, columns=3, fields=2, size=128, seed=4,
                            ngff_version="0.4")
    first = open_plate(small.plate_path).image("A01", 0).values
    assert not np.array_equal(first, open_plate(other.plate_path).image("A01", 0).values)
    assert not other.truth[["translocation", "centroid_x"]].equals(small.truth[["translocation", "centroid_x"]])


@pytest.mark.parametrize(
    ("argument", "value"),
    [("rows", 0), ("rows", 33), ("columns", 2), ("fields", 0), ("size", 32), ("size", 5000), ("rows", 2.5),
     ("seed", -1)],
)
def test_bad_arguments_raise_value_error(argument: str, value: object, tmp_path: Path) -> None:
    out = tmp_path / "bad.zarr"
    with pytest.raises(ValueError, match=argument):
        simulate_screen(out, **{argument: value})
    assert not out.exists() and not truth_path(out).exists()


def test_existing_plate_is_kept_without_overwrite(small: SimulatedScreen) -> None:
    with pytest.raises(PlateError, match="already exists"):
        simulate_screen(small.plate_path, rows=1, columns=3, fields=1, size=64)
    assert len(open_plate(small.plate_path).wells) == 6


# --- the treatments design ------------------------------------------------

TREATMENT_COLUMNS = 4
# the design as specified: compound -> the planted factors it moves
SPECIFIED_MECHANISMS = {
    "translocator-hi": ("translocation",),
    "translocator-lo": ("translocation",),
    "enlarger": ("nuclear_area",),
    "granulator": ("texture",),
    "dual": ("translocation", "nuclear_area"),
    "inert": (),
}
FACTOR_PAIRS = [(compound, factor) for compound in SPECIFIED_MECHANISMS for factor in PLANTED_FACTORS]
# the default design's truth and layout, computed before the treatments design was added
CONTROLS_TRUTH_SHA256 = "c49097c3def7276fca98831d889fc9f20f947a92945d094ab2140090056b2939"
CONTROLS_LAYOUT_SHA256 = "f272dd6f7db95a95c272d2aea74b5eae3b33dc56521bb0c5feff79e6429dcf77"


@pytest.fixture(scope="module")
def treated(tmp_path_factory: pytest.TempPathFactory) -> SimulatedScreen:
    """A treatments plate: 6 compounds x 2 replicate rows, 4 columns, one 256 px field per well."""
    return simulate_screen(tmp_path_factory.mktemp("treated") / "treated.zarr", columns=TREATMENT_COLUMNS,
                           fields=1, size=256, design="treatments")


def _cohens_d(negative: pd.Series, treated: pd.Series) -> float:
    """Difference of means (treated - negative) over the pooled SD."""
    n0, n1 = len(negative), len(treated)
    pooled = np.sqrt(((n0 - 1) * negative.var() + (n1 - 1) * treated.var()) / (n0 + n1 - 2))
    return float((treated.mean() - negative.mean()) / pooled)


def _frame_checksum(frame: pd.DataFrame) -> str:
    """SHA-256 of a table's CSV text, floats rounded to 6 decimals."""
    return hashlib.sha256(frame.round(6).to_csv(index=False).encode()).hexdigest()


def test_the_public_description_matches_the_specified_design() -> None:
    assert dict(TREATMENTS) == SPECIFIED_MECHANISMS and list(TREATMENTS) == list(SPECIFIED_MECHANISMS)
    assert NEGATIVE_CONTROL == "DMSO" and NEGATIVE_CONTROL not in TREATMENTS
    assert set(MECHANISM_GROUPS) == set(TREATMENTS)
    assert MECHANISM_GROUPS["translocator-hi"] == MECHANISM_GROUPS["translocator-lo"]
    others = [MECHANISM_GROUPS[c] for c in ("translocator-hi", "enlarger", "granulator", "dual", "inert")]
    assert len(set(others)) == len(others)


def test_treatment_layout(treated: SimulatedScreen) -> None:
    layout = open_plate(treated.plate_path).layout
    pd.testing.assert_frame_equal(layout, treated.layout, check_dtype=False)
    assert list(layout.columns) == ["well", "row", "column", "compound", "dose_index", "dose", "control"]
    assert sorted(layout["row"].unique()) == list("ABCDEFGHIJKL")
    assert len(layout) == 12 * TREATMENT_COLUMNS
    treated_wells = layout[layout["column"] > 1]
    rows_of = treated_wells.groupby("compound")["row"].unique().map(sorted).to_dict()
    expected = {c: [chr(ord("A") + 2 * i), chr(ord("A") + 2 * i + 1)] for i, c in enumerate(SPECIFIED_MECHANISMS)}
    assert rows_of == expected
    negatives = layout[layout["column"] == 1]
    assert len(negatives) == 12 and (negatives["compound"] == "DMSO").all()
    assert (negatives["dose"] == 0).all() and (negatives["dose_index"] == 0).all()
    assert (negatives["control"] == "negative").all() and (treated_wells["control"] == "treated").all()
    for _, row in treated_wells.groupby("row"):
        row = row.sort_values("column")
        assert row["dose_index"].tolist() == [1, 2, 3]
        assert row["dose"].tolist() == pytest.approx([1.0, 10**0.5, 10.0])


def test_replicates_set_the_rows_and_conflicting_rows_are_refused(tmp_path: Path) -> None:
    single = treatment_layout(5, replicates=1)
    assert single["row"].unique().tolist() == list("ABCDEF")
    assert single.loc[single["column"] > 1, "compound"].unique().tolist() == list(SPECIFIED_MECHANISMS)
    pd.testing.assert_frame_equal(design_layout("treatments", 5, rows=6, replicates=1), single)
    assert len(design_layout("treatments", 3, replicates=5)) == 30 * 3
    out = tmp_path / "bad.zarr"
    for arguments, message in [({"rows": 4}, "rows is set by the treatments design"), ({"replicates": 0}, "replicates"),
                               ({"replicates": 6}, "replicates")]:
        with pytest.raises(ValueError, match=message):
            simulate_screen(out, design="treatments", **arguments)
    with pytest.raises(ValueError, match="design must be one of controls, treatments"):
        simulate_screen(out, design="bogus")
    assert not out.exists() and not truth_path(out).exists()


def test_treatment_truth_matches_layout_and_labels(treated: SimulatedScreen) -> None:
    truth = pd.read_parquet(treated.truth_path)
    pd.testing.assert_frame_equal(truth, treated.truth)
    per_well = truth.groupby("well")[["compound", "dose", "dose_index", "control"]].first()
    layout = treated.layout.set_index("well")[per_well.columns]
    pd.testing.assert_frame_equal(per_well, layout.loc[per_well.index], check_dtype=False)
    assert truth["well"].nunique() == len(layout)
    assert truth["texture"].between(0, 1).all() and truth["translocation"].between(0, 1).all()
    labels = _field_labels(treated)
    cells = truth.groupby(["well", "field"])["label"].apply(set).to_dict()
    for key, image in labels.items():
        assert set(np.unique(image).tolist()) - {0} == cells.get(key, set()), key


def test_truth_columns_are_documented(treated: SimulatedScreen, small: SimulatedScreen) -> None:
    documented = documented_columns("outputs.md", "<plate>.truth.parquet")
    assert list(treated.truth.columns) == list(documented)
    assert list(small.truth.columns) == [c for c in documented if c != "compound"]
    for column, dtype in documented.items():
        series = treated.truth[column]
        assert (pd.api.types.is_string_dtype(series) if dtype == "string" else str(series.dtype) == dtype), column


@pytest.mark.parametrize(("compound", "factor"), FACTOR_PAIRS, ids=[f"{c}-{f}" for c, f in FACTOR_PAIRS])
def test_planted_effects_are_large_and_specific(treated: SimulatedScreen, compound: str, factor: str) -> None:
    truth = treated.truth
    negative = truth.loc[truth["control"] == "negative", factor]
    top = truth.loc[(truth["compound"] == compound) & (truth["dose_index"] == TREATMENT_COLUMNS - 1), factor]
    assert len(negative) > 300 and len(top) > 50
    d = _cohens_d(negative, top)
    if factor in SPECIFIED_MECHANISMS[compound]:
        assert d >= 3, f"{compound} {factor}: Cohen's d {d:.2f}, planted"
    else:
        assert abs(d) < 0.5, f"{compound} {factor}: Cohen's d {d:.2f}, not planted"


@pytest.mark.parametrize(("compound", "factor"), [p for p in FACTOR_PAIRS if p[1] in SPECIFIED_MECHANISMS[p[0]]],
                         ids=lambda value: value)
def test_planted_factors_rise_with_dose(treated: SimulatedScreen, compound: str, factor: str) -> None:
    rows = treated.layout.loc[treated.layout["compound"] == compound, "row"].unique()
    assert len(rows) == 2
    wells = treated.truth[treated.truth["well"].str[0].isin(rows)]
    means = wells.groupby("well")[[factor, "dose_index"]].mean()
    assert len(means) == 2 * TREATMENT_COLUMNS
    rho = spearmanr(means["dose_index"], means[factor]).statistic
    assert rho > 0.9, f"{compound} {factor}: Spearman {rho:.3f}"


def test_the_less_potent_translocator_translocates_less_at_every_dose(treated: SimulatedScreen) -> None:
    truth = treated.truth[treated.truth["control"] == "treated"]
    means = truth.groupby(["compound", "dose_index"])["translocation"].mean().unstack()
    gap = means.loc["translocator-hi"] - means.loc["translocator-lo"]
    assert (gap > 0.05).all(), gap


def test_the_controls_design_is_unchanged(tmp_path: Path) -> None:
    screen = simulate_screen(tmp_path / "d.zarr", columns=6, fields=1, size=128, seed=5)
    assert screen.layout["row"].nunique() == 4
    assert _frame_checksum(screen.truth) == CONTROLS_TRUTH_SHA256
    assert _frame_checksum(open_plate(screen.plate_path).layout) == CONTROLS_LAYOUT_SHA256
    explicit = simulate_screen(tmp_path / "e" / "d.zarr", rows=4, columns=6, fields=1, size=128, seed=5,
                               design="controls", replicates=3)
    assert explicit.truth_path.read_bytes() == screen.truth_path.read_bytes()


def test_cli_simulates_the_treatments_design(tmp_path: Path) -> None:
    out = tmp_path / "cli.zarr"
    result = CliRunner().invoke(main, ["simulate", str(out), "--design", "treatments", "--columns", "4",
                                       "--fields", "1", "--size", "256"])
    assert result.exit_code == 0, result.output
    assert "48 wells x 1 fields" in result.output
    layout = open_plate(out).layout
    assert set(layout["compound"]) == {"DMSO", *SPECIFIED_MECHANISMS}
    assert layout.groupby("compound")["row"].nunique().drop("DMSO").eq(2).all()
    assert "compound" in pd.read_parquet(truth_path(out)).columns


@pytest.mark.parametrize(("arguments", "message"), [
    (["--design", "bogus"], "Invalid value for '--design'"),
    (["--design", "treatments", "--rows", "4"], "rows is set by the treatments design"),
    (["--columns", "2"], "columns must be an integer from 3 to 48"),
])
def test_cli_bad_simulate_options_are_usage_errors(tmp_path: Path, arguments: list[str], message: str) -> None:
    out = tmp_path / "bad.zarr"
    result = CliRunner().invoke(main, ["simulate", str(out), *arguments])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
