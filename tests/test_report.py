"""The run report: built from real runs (with a bundle, cells only, with a failed field), opened in headless
Chromium."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import in_process_cluster
import torch
import xarray as xr
from click.testing import CliRunner
from PIL import Image

from screenxai.cells import CellConfig
from screenxai.cli import main
from screenxai.models.presets import registered_preset
from screenxai.pipeline.run import open_plates, run_cells
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.reader import open_plate
from screenxai.plate.simulate import simulate_screen
from screenxai.report import build_report
from screenxai.report.browser import load_report
from screenxai.report.run_data import attribute_column, normalise_attributes
from report_screen import write_run
from test_models_training import MINI

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(shutil.which("chromedriver") is None,
                                reason="headless Chromium (apt-get install chromium chromium-driver) is needed")


@pytest.fixture(scope="module")
def cluster_client():
    with in_process_cluster(gpu_worker=False) as client:
        yield client


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """2 x 6 wells: per row a negative, four doses and a positive, so a dose-response has five doses."""
    path = tmp_path_factory.mktemp("report") / "plate.zarr"
    simulate_screen(path, rows=2, columns=6, fields=2, size=192, seed=7)
    return path


@pytest.fixture(scope="module")
def bundle_run(plate, cluster_client, tmp_path_factory):
    """A real run with a mini bundle (classifier, autoencoder, attributes, formula), and its report."""
    with registered_preset(MINI):
        root = tmp_path_factory.mktemp("bundle-run")
        settings = TrainSettings(preset="mini", seed=1, max_cells_per_well=30, explain_cells=12, check_cells=8,
                                 check_steps=2)
        train([open_plate(plate)], root / "bundle", cluster_client, settings)
    result = run_cells([open_plate(plate)], root / "out", cluster_client, bundle=root / "bundle", fields_per_batch=3)
    return result.out, build_report(result.out)


@pytest.fixture(scope="module")
def bundle_page(bundle_run):
    return load_report(bundle_run[1])


@pytest.fixture(scope="module")
def cells_only_run(plate, cluster_client, tmp_path_factory):
    result = run_cells([open_plate(plate)], tmp_path_factory.mktemp("cells-only") / "out", cluster_client)
    return result.out, build_report(result.out)


@pytest.fixture(scope="module")
def failed_run(plate, cluster_client, tmp_path_factory):
    """A cells-only run of a plate copy whose A02 field 0 has a garbage chunk."""
    root = tmp_path_factory.mktemp("failed")
    shutil.copytree(plate, root / "plate.zarr")
    chunk = next(p for p in (root / "plate.zarr" / "A" / "02" / "0" / "s0").rglob("*") if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage")
    result = run_cells(open_plates([root / "plate.zarr"]), root / "out", cluster_client, wells=["A01", "A02"])
    return result.out, build_report(result.out)


def _figures(page, kind: str) -> list[dict]:
    return [f for f in page.figure_data if f["data"].get("kind") == kind]


def _assert_loads_cleanly(page) -> None:
    assert page.console_errors == [] and page.failed_requests == []
    assert page.images and all(i["complete"] and i["naturalWidth"] > 0 for i in page.images)
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.images)  # nothing fetched
    pixels = np.asarray(Image.open(io.BytesIO(page.screenshot)).convert("L"), np.float64)
    assert pixels.std() > 10 and (pixels < 200).mean() > 0.01  # not a blank page


def test_report_of_a_run_loads_offline_in_headless_chromium(bundle_run, bundle_page):
    out, html = bundle_run
    _assert_loads_cleanly(bundle_page)
    shown = {f["figure"] for f in bundle_page.figure_data}
    saved = {p.stem for p in (out / "report" / "figures").glob("*.png")}
    assert shown <= saved and len(bundle_page.images) == len(saved)
    plots = [f for f in bundle_page.figure_data if f["data"]["kind"] in ("plate_map", "dose_response")]
    assert plots and all((out / "report" / "figures" / f"{f['figure']}.svg").is_file() for f in plots)
    assert "http://" not in html.read_text() and "https://" not in html.read_text()


def test_plate_maps_show_the_values_of_wells_parquet(bundle_run, bundle_page):
    out, _ = bundle_run
    wells = pd.read_parquet(out / "wells.parquet").set_index("well")
    maps = _figures(bundle_page, "plate_map")
    columns = {f["data"]["column"] for f in maps}
    ids = pd.read_parquet(out / "attributes.parquet")["attribute"].unique()
    assert {"n_cells", "focus", "saturated_fraction", *[f"robust_z_attribute_{a}" for a in ids]} <= columns
    for figure in maps:
        data = figure["data"]
        assert set(data["values"]) == set(wells.index)
        got = pd.Series(data["values"], dtype=float).reindex(wells.index)
        np.testing.assert_allclose(got, wells[data["column"]].astype(float), rtol=1e-12, equal_nan=True)
    count = next(f["data"] for f in maps if f["data"]["column"] == "n_cells")
    assert count["flagged"] == sorted(wells.index[wells["qc_low_count"] | wells["qc_failed_fields"]
                                                  | wells["qc_missing_chunks"]])


def test_counterfactual_strips_print_the_probabilities_of_counterfactuals_zarr(bundle_run, bundle_page):
    out, _ = bundle_run
    dataset = xr.open_zarr(out / "counterfactuals.zarr")
    strips = _figures(bundle_page, "counterfactual_strip")
    attributes = pd.read_parquet(out / "attributes.parquet").set_index("attribute")
    assert sorted({f["data"]["attribute"] for f in strips}) == sorted(attributes.index)
    for figure in strips:
        data = figure["data"]
        rank = int(attributes.loc[data["attribute"], "rank"])
        one = dataset.isel(cell=data["cell_index"]).sel(attribute=f"{data['treatment']}/{rank}")
        assert str(one["cell"].values) == data["cell_id"]
        np.testing.assert_allclose(data["probability"], one["probability"].values, rtol=1e-6)
        np.testing.assert_allclose(data["original_probability"], float(one["original_probability"]), rtol=1e-6)
        printed = ", ".join(f"{p:.2f}" for p in [data["original_probability"], *data["probability"]])
        assert printed in bundle_page.text  # the caption under the strip, as printed under its images


def test_a_two_class_run_shows_one_treatment_with_its_attributes_in_rank_order(bundle_run, bundle_page):
    out, _ = bundle_run
    attributes = pd.read_parquet(out / "attributes.parquet")
    assert "Treatment: positive" in bundle_page.text  # the bundle's second class
    headings = [f"{r}. {n}" for r, n in zip(attributes["rank"], attributes["name"])]
    positions = [bundle_page.text.index(h) for h in headings]
    assert positions == sorted(positions)
    for source in attributes["source"]:  # each attribute says which kind of direction it is
        kind = "the contrast direction of positive" if source == "contrast positive" else "a learned direction"
        assert f"Direction: {kind}" in bundle_page.text, source
    assert "no treatments.parquet" not in bundle_page.text  # a two-class run has its one treatment's row too


def test_dose_response_draws_the_treatment_wells_means_and_sds(bundle_run, bundle_page):
    out, _ = bundle_run
    wells = pd.read_parquet(out / "wells.parquet").set_index("well")
    curves = _figures(bundle_page, "dose_response")
    assert len(curves) == len(pd.read_parquet(out / "attributes.parquet"))
    for figure in curves:
        data = figure["data"]
        attribute = data["attribute"]
        treated = wells[(wells["control"] != "negative") & (wells["dose"] > 0)]
        assert sorted(data["wells"]) == sorted(treated.index)
        np.testing.assert_allclose(data["mean"], wells.loc[data["wells"], f"mean_attribute_{attribute}"])
        np.testing.assert_allclose(data["sd"], wells.loc[data["wells"], f"sd_attribute_{attribute}"])
        np.testing.assert_allclose(data["dose"], wells.loc[data["wells"], "dose"])


def _gallery_of(dataset, attribute_index: int, end: str) -> pd.DataFrame:
    """The stored gallery of one attribute's end, place by place (most extreme first), empty places dropped."""
    one = dataset.isel(attribute=attribute_index).sel(end=end)
    table = pd.DataFrame({"cell_id": [str(c) for c in one["gallery_cell"].values],
                          "well": [str(w) for w in one["gallery_well"].values], "score": one["gallery_score"].values})
    return table[table["cell_id"] != ""]


def _scorable_cells(out) -> pd.DataFrame:
    """The run's cells a gallery may show: not on the border, not of a field flagged for saturation, focus, chunks."""
    cells = pd.read_parquet(out / "cells").astype({"plate": str, "well": str})
    fields = pd.read_parquet(out / "fields.parquet")
    flagged = fields[fields[["qc_saturated", "qc_out_of_focus", "qc_missing_chunks"]].any(axis=1)]
    keys = set(zip(flagged["plate"], flagged["well"], flagged["field"]))
    bad = [k in keys for k in zip(cells["plate"], cells["well"], cells["field"])]
    return cells[~cells["border"] & ~np.asarray(bad, bool)]


def test_each_gallery_holds_the_extreme_cells_of_the_cells_table_one_per_well(bundle_run):
    out, _ = bundle_run
    dataset = xr.open_zarr(out / "counterfactuals.zarr")
    cells = _scorable_cells(out)
    for i, attribute in enumerate(str(a) for a in dataset["attribute_id"].values):
        scores = cells.set_index("cell_id")[f"attribute_{attribute}"].astype(float).dropna()
        wells = cells.set_index("cell_id").loc[scores.index, "well"]
        for end, sign in (("low", 1.0), ("high", -1.0)):
            chosen = _gallery_of(dataset, i, end)
            assert len(chosen) == min(dataset.sizes["place"], len(scores)) and chosen["cell_id"].is_unique
            np.testing.assert_allclose(chosen["score"], scores.loc[chosen["cell_id"]], rtol=1e-6)
            assert list(chosen["well"]) == list(wells.loc[chosen["cell_id"]])
            keys = sign * chosen["score"].to_numpy()
            assert list(keys) == sorted(keys)  # most extreme first
            assert keys[0] == pytest.approx((sign * scores).min(), rel=1e-6)  # the run's extreme cell
            assert wells.nunique() >= len(chosen) and chosen["well"].is_unique  # this run has enough wells
            best_per_well = (sign * scores).groupby(wells).min()
            assert np.allclose(best_per_well.loc[chosen["well"]], keys, rtol=1e-6)  # each its well's extreme
            others = best_per_well.drop(chosen["well"])
            assert (others >= keys.max() - 1e-6).all()  # no well left out has a more extreme cell


def test_gallery_crops_are_fresh_crops_of_their_cells_in_both_units(bundle_run, plate):
    from screenxai.cells import denormalise, process_field
    from screenxai.models.bundle import load_bundle
    from screenxai.pipeline.run import model_configs

    out, _ = bundle_run
    dataset = xr.open_zarr(out / "counterfactuals.zarr")
    opened = open_plate(plate)
    config = model_configs([opened], CellConfig(), load_bundle(out / "bundle"))[opened.name]
    for end in ("low", "high"):
        for place, cell_id in enumerate(str(c) for c in dataset["gallery_cell"].isel(attribute=0).sel(end=end).values):
            _, well, field, label = cell_id.split("/")
            fresh = process_field(opened, well, int(field), config)
            crop = fresh.crops[list(fresh.table["cell_id"]).index(cell_id)]
            stored = dataset.isel(attribute=0, place=place).sel(end=end)
            np.testing.assert_array_equal(stored["gallery"].values, crop)
            np.testing.assert_allclose(stored["gallery_raw"].values, denormalise(crop, config.normalisation),
                                       rtol=1e-5)
            assert str(stored["gallery_plate"].values) == opened.name and str(stored["gallery_well"].values) == well


def test_the_gallery_figure_shows_the_stored_cells_in_score_order_with_wells(bundle_run, bundle_page):
    out, _ = bundle_run
    dataset = xr.open_zarr(out / "counterfactuals.zarr")
    cells = pd.read_parquet(out / "cells").set_index("cell_id")
    galleries = _figures(bundle_page, "gallery")
    assert sorted(f["data"]["attribute"] for f in galleries) == sorted(str(a) for a in dataset["attribute_id"].values)
    for figure in galleries:
        data = figure["data"]
        index = [str(a) for a in dataset["attribute_id"].values].index(data["attribute"])
        low, high = _gallery_of(dataset, index, "low"), _gallery_of(dataset, index, "high").iloc[::-1]
        assert data["cell_id"] == [*low["cell_id"], *high["cell_id"]]
        assert data["end"] == ["low"] * len(low) + ["high"] * len(high)
        np.testing.assert_allclose(data["score"], cells.loc[data["cell_id"], f"attribute_{data['attribute']}"],
                                   rtol=1e-6)
        assert data["score"] == sorted(data["score"])
        assert data["well"] == [c.split("/")[1] for c in data["cell_id"]]
    assert "Which cells is this attribute about? Real cells of the whole run" in bundle_page.text


def test_a_run_whose_counterfactuals_hold_no_gallery_says_so(bundle_run, tmp_path):
    out, _ = bundle_run
    older = tmp_path / "older"
    shutil.copytree(out, older, ignore=shutil.ignore_patterns("report*"))
    dataset = xr.open_zarr(older / "counterfactuals.zarr").load()
    gallery = [n for n in [*dataset.data_vars, *dataset.coords] if n.startswith("gallery") or n in ("end", "place")]
    shutil.rmtree(older / "counterfactuals.zarr")
    dataset.drop_vars(gallery).to_zarr(older / "counterfactuals.zarr")
    text = build_report(older).read_text()
    assert "counterfactuals.zarr holds no gallery (a run made before galleries were stored): no gallery of cells" \
        in text and '"kind": "gallery"' not in text


def test_choose_gallery_fills_an_end_from_few_wells_and_leaves_out_border_and_flagged_cells(cluster_client):
    import dask.dataframe as dd

    from screenxai.pipeline.counterfactual_stage import choose_gallery

    scores = [5.0, 4.0, np.nan, -1.0, 9.0, 8.0, 7.0, -9.0]
    cells = pd.DataFrame({"plate": "p", "well": ["A01"] * 4 + ["A02"] * 4, "field": [0, 0, 1, 1, 0, 0, 0, 1],
                          "label": range(1, 9), "cell_id": [f"c{k}" for k in range(1, 9)],
                          "border": [False, False, False, True, False, False, False, False],
                          "attribute_x": np.asarray(scores, np.float32)})
    fields = pd.DataFrame({"plate": "p", "well": ["A02", "A02"], "field": [0, 1], "qc_saturated": [False, True],
                           "qc_out_of_focus": False, "qc_missing_chunks": False})
    chosen = choose_gallery(dd.from_pandas(cells, npartitions=3), fields, 3, cluster_client)
    high, low = chosen[chosen["end"] == "high"], chosen[chosen["end"] == "low"]
    # c3 has no score, c4 is on the border, c8's field is flagged: A01 keeps c1, c2 and A02 c5, c6, c7.
    # The three highest are all of A02; the gallery takes both wells' best first, then A02's second.
    assert list(high["cell_id"]) == ["c5", "c6", "c1"] and list(high["place"]) == [0, 1, 2]
    np.testing.assert_allclose(high["score"], [9.0, 8.0, 5.0])
    assert list(low["cell_id"]) == ["c2", "c1", "c7"] and set(chosen["attribute"]) == {"x"}


def test_the_screen_section_shows_the_formula_with_accuracy_and_fidelity(bundle_run, bundle_page):
    out, _ = bundle_run
    formula = pd.read_parquet(out / "interpretable.parquet").iloc[0]
    assert formula["formula"] in bundle_page.text
    assert f"{formula['fidelity']:.3f}" in bundle_page.text and f"{formula['accuracy_formula']:.3f}" in bundle_page.text


def test_a_cells_only_run_reports_that_it_has_no_bundle(cells_only_run):
    out, html = cells_only_run
    page = load_report(html)
    _assert_loads_cleanly(page)
    assert "no bundle (a cells-only run): no classifier, no attributes, no counterfactuals" in page.text
    assert "Treatment:" not in page.text and _figures(page, "plate_map")


def test_a_run_with_a_failed_field_lists_it_with_its_error(failed_run):
    out, html = failed_run
    failures = pd.read_parquet(out / "failures.parquet")
    page = load_report(html)
    _assert_loads_cleanly(page)
    row = failures.iloc[0]
    assert f"{row['plate']}\t{row['well']}\t{row['field']}\t{row['error']}" in page.text
    count = next(f["data"] for f in _figures(page, "plate_map") if f["data"]["column"] == "n_cells")
    assert row["well"] in count["flagged"]


def test_report_of_a_folder_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == f"error: {tmp_path}: not a screenxai run folder (no manifest.json)\n"


def test_cli_report_writes_the_page_where_asked(cells_only_run, tmp_path):
    out, _ = cells_only_run
    result = CliRunner().invoke(main, ["report", str(out), "-o", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    assert result.output == f"report: {tmp_path / 'page.html'}\n" and (tmp_path / "page.html").stat().st_size > 0


def test_multi_treatment_tables_give_one_section_per_treatment_and_the_screen(tmp_path):
    out = write_run(tmp_path / "screen", rows=8, columns=7, n_treatments=3, attributes_per_treatment=2, crop=16)
    page = load_report(build_report(out))
    _assert_loads_cleanly(page)
    treatments = pd.read_parquet(out / "treatments.parquet")
    for name in treatments["treatment"]:
        assert f"Treatment: {name}" in page.text
    inactive = ", ".join(treatments.loc[~treatments["active"], "treatment"])
    assert f"Inactive: {inactive}." in page.text
    effects = next(f["data"] for f in page.figure_data if f["data"]["kind"] == "effects")
    assert effects["value"] == sorted(effects["value"], key=abs, reverse=True)
    assert _figures(page, "similarity")
    wells = pd.read_parquet(out / "wells.parquet").set_index("well")
    robust = [f["data"] for f in _figures(page, "plate_map") if f["data"]["column"].startswith("robust_z_attribute_")]
    assert len(robust) == 6
    for data in robust:
        got = pd.Series(data["values"], dtype=float).reindex(wells.index)
        np.testing.assert_allclose(got, wells[data["column"]], rtol=1e-12)
    dataset = xr.open_zarr(out / "counterfactuals.zarr")
    for data in [f["data"] for f in _figures(page, "counterfactual_strip")]:
        one = dataset.isel(cell=data["cell_index"]).sel(attribute=data["attribute"])
        assert str(one["treatment"].values) == data["treatment"]
        np.testing.assert_allclose(data["probability"], one["probability"].values, rtol=1e-6)
    galleries = [f["data"] for f in _figures(page, "gallery")]
    assert len(galleries) == 6
    for data in galleries:
        index = [str(a) for a in dataset["attribute"].values].index(data["attribute"])
        low, high = _gallery_of(dataset, index, "low"), _gallery_of(dataset, index, "high").iloc[::-1]
        assert data["cell_id"] == [*low["cell_id"], *high["cell_id"]] and len(data["cell_id"]) == 8


def test_attribute_columns_are_found_under_both_namings():
    new = ["mean_attribute_d3p", "sd_attribute_d3p", "robust_z_attribute_d3p"]
    old = ["mean_attribute_2", "attribute_2_sd", "attribute_2_robust_z"]
    assert [attribute_column(new, "d3p", k) for k in ("mean", "sd", "robust_z")] == new
    assert [attribute_column(old, "2", k) for k in ("mean", "sd", "robust_z")] == old
    assert attribute_column(old, "3", "mean") is None


def test_a_two_class_attribute_table_is_named_after_the_second_class():
    table = normalise_attributes(pd.DataFrame({"rank": [2, 1], "name": ["b", "a"]}), ("negative", "positive"))
    assert list(table["treatment"]) == ["positive", "positive"] and list(table["attribute"]) == ["1", "2"]
