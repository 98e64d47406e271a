"""The model stage of ``screenxai run``: bundle plugin, batched scoring on (GPU) workers, cell and embedding files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import xarray as xr
import pytest
from distributed import get_task_stream

from screenxai.cells import CellConfig, fit_normalisation, process_field
from screenxai.errors import ScreenxaiError
from screenxai.explain import contrast_columns, load_directions
from screenxai.models.bundle import BundleError, load_bundle, seal_bundle
from screenxai.models.classifier import predict_proba
from screenxai.models.presets import registered_preset
from screenxai.pipeline.bundle_plugin import BundlePlugin
from screenxai.pipeline.run import run_cells
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.reader import open_plate
from screenxai.plate.simulate import simulate_screen
from conftest import in_process_cluster, REPO_ROOT, documented_columns
from test_models_training import MINI


@pytest.fixture(scope="module")
def cluster_client():
    """A real scheduler with two in-process workers, one declaring a GPU."""
    with in_process_cluster(gpu_worker=True) as client:
        yield client


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("model-stage") / "plate.zarr"
    simulate_screen(path, rows=2, columns=4, fields=2, size=192, seed=7)
    return open_plate(path)


@pytest.fixture(scope="module")
def bundle(plate, cluster_client, tmp_path_factory):
    with registered_preset(MINI):
        out = tmp_path_factory.mktemp("bundle") / "bundle"
        settings = TrainSettings(preset="mini", seed=1, max_cells_per_well=30, explain_cells=12, check_cells=8,
                                 check_steps=2)
        train([plate], out, cluster_client, settings)
        return out


@pytest.fixture(scope="module")
def scored(plate, bundle, cluster_client, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    steps = []
    with get_task_stream(cluster_client) as stream:
        result = run_cells([plate], out, cluster_client, bundle=bundle, fields_per_batch=3,
                           on_counterfactual=lambda done, total: steps.append((done, total)))
    return result, stream.data, steps


def test_rendering_counterfactuals_reports_every_step_to_the_client(scored):
    """A report at the start and one per (batch of exemplar cells, attribute), in order, the last one complete."""
    result, _, steps = scored
    dataset = xr.open_zarr(result.out / "counterfactuals.zarr")
    total = dataset.sizes["attribute"]  # the exemplars fit in one batch
    assert steps == [(k, total) for k in range(0, total + 1)]


def test_every_field_is_scored_once_and_written_with_class_probabilities(scored, plate, bundle):
    result, *_ = scored
    assert (result.fields["status"] == "done").all() and len(result.fields) == len(plate.field_keys())
    cells = pd.read_parquet(result.out / "cells")
    assert cells["cell_id"].is_unique
    np.testing.assert_allclose(cells["p_negative"] + cells["p_positive"], 1, atol=1e-5)
    assert cells["formula_value"].notna().all()
    # the per-cell probabilities are those of the bundle's classifier on the field's normalised crops
    loaded = load_bundle(bundle)
    field = process_field(plate, "A02", 1, CellConfig(crop_size=16, normalisation=fit_normalisation(plate)))
    want = predict_proba(loaded["classifier"], field.crops)[:, 1]
    got = cells[(cells["well"] == "A02") & (cells["field"] == 1)].sort_values("label")["p_positive"]
    np.testing.assert_allclose(got.to_numpy(), want[np.argsort(field.table["label"].to_numpy())], atol=1e-5)


def test_embeddings_have_their_own_table_keyed_like_the_cells(scored, bundle):
    result, *_ = scored
    cells = pd.read_parquet(result.out / "cells")
    embeddings = pd.read_parquet(result.out / "embeddings")
    z_dim = load_bundle(bundle).config["models"]["autoencoder"]["config"]["z_dim"]
    assert [c for c in embeddings.columns if c.startswith("z_")] == [f"z_{i}" for i in range(z_dim)]
    assert set(embeddings["cell_id"]) == set(cells["cell_id"])
    assert not any(c.startswith("z_") for c in cells.columns)


def test_cells_the_models_saw_are_marked_in_training(scored, bundle):
    result, *_ = scored
    cells = pd.read_parquet(result.out / "cells")
    trained_on = set(load_bundle(bundle).config["provenance"]["training_cells"])
    assert cells["in_training"].sum() == len(trained_on & set(cells["cell_id"])) > 0
    assert not cells.loc[cells["well"].isin(["A02", "A03"]), "in_training"].any()  # dose wells


def test_wells_carry_mean_probabilities_and_the_formula(scored, bundle):
    result, *_ = scored
    wells = pd.read_parquet(result.out / "wells.parquet")
    assert {"mean_p_negative", "mean_p_positive", "mean_formula_value", "fraction_formula_positive",
            "n_training_cells"} <= set(wells.columns)
    formula = pd.read_parquet(result.out / "interpretable.parquet")
    fitted = pd.read_parquet(bundle / "interpretable" / "interpretable.parquet")
    assert formula["formula"].iloc[0] == fitted["formula"].iloc[0]
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["bundle"]["content_hash"] == load_bundle(result.out / "bundle").content_hash
    assert len(manifest["config_hash"]) == 64


def test_attribute_scores_per_cell_and_screen_statistics_beside_the_hand_built_ratio(scored, bundle):
    result, *_ = scored
    _, attributes = load_directions(bundle / "explain")
    assert json.loads((bundle / "explain" / "directions.json").read_text())["guided"] is True  # the default
    ids = list(dict.fromkeys(attributes["attribute"]))
    columns = [f"attribute_{a}" for a in ids]
    cells = pd.read_parquet(result.out / "cells")
    assert set(columns) <= set(cells.columns) and cells[columns].notna().all().all()
    wells = pd.read_parquet(result.out / "wells.parquet")
    assert {f"mean_{columns[0]}", f"sd_{columns[0]}", f"robust_z_{columns[0]}"} <= set(wells.columns)
    negative = wells.loc[wells["control"] == "negative", f"robust_z_{columns[0]}"]
    assert abs(negative.median()) < 1  # robust z is centred on the negative controls
    table = pd.read_parquet(result.out / "attributes.parquet")
    assert list(table["rank"]) == list(attributes["rank"]) and set(table["treatment"]) == {"positive"}
    assert {"name", "changes", "mean_delta_p", "flip_rate", "control_z_prime", "control_ssmd", "ec50",
            "hill", "max_effect", "robust_z_top_dose"} <= set(table.columns)
    readouts = pd.read_parquet(result.out / "readouts.parquet")
    assert {*columns, "reporter_ratio", "p_negative", "p_positive"} <= set(readouts["readout"])
    treatments = pd.read_parquet(result.out / "treatments.parquet")
    assert treatments["treatment"].tolist() == ["positive"]
    assert treatments["top_attribute"].iloc[0] == table.loc[table["rank"] == 1, "attribute"].iloc[0]


def test_counterfactuals_of_exemplar_cells_open_with_xarray(scored, cluster_client):
    import xarray as xr

    result, stream, _ = scored
    dataset = xr.open_zarr(result.out / "counterfactuals.zarr")
    assert dataset["image"].dims == ("cell", "attribute", "alpha", "c", "y", "x")
    assert dataset.sizes["cell"] == 8 and sorted(set(dataset["condition"].values)) == ["negative", "positive"]
    assert dataset["image"].chunks[0] == (1,) * 8
    assert {"plate", "well", "field", "label", "alpha", "c", "treatment"} <= set(dataset.coords)
    assert dataset["probability"].dims == ("cell", "attribute", "alpha")
    cells = pd.read_parquet(result.out / "cells").set_index("cell_id")
    positive = dataset["cell"].values[dataset["condition"].values == "positive"]
    others = cells.loc[cells.index.difference(positive)]
    assert cells.loc[positive, "p_positive"].min() >= others.loc[others["well"].isin(["A04", "B04"]),
                                                                   "p_positive"].median()
    rendered = [t for t in stream if str(t["key"]).startswith("render_exemplars")]
    gpu = [a for a, w in cluster_client.scheduler_info()["workers"].items() if w["resources"].get("GPU")]
    assert rendered and {t["worker"] for t in rendered} <= set(gpu)


def test_model_tasks_run_only_on_the_gpu_worker(scored, cluster_client):
    _, stream, _ = scored
    gpu = [a for a, w in cluster_client.scheduler_info()["workers"].items() if w["resources"].get("GPU")]
    scoring = [t for t in stream if str(t["key"]).startswith("score-")]
    assert scoring and {t["worker"] for t in scoring} == set(gpu)


def test_a_bundle_of_other_channels_is_refused_before_any_work(plate, bundle, cluster_client, tmp_path):
    other = tmp_path / "other-bundle"
    shutil.copytree(bundle, other)
    config = json.loads((other / "config.json").read_text())
    config["channel_names"] = ["GFP", "DNA"]
    (other / "config.json").write_text(json.dumps(config))
    seal_bundle(other)
    out = tmp_path / "run"
    with pytest.raises(BundleError, match="are not those the bundle"):
        run_cells([plate], out, cluster_client, bundle=other)
    assert not out.exists()


def test_the_plugin_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    with pytest.raises(ScreenxaiError, match="config.json is missing"):
        BundlePlugin.from_path(tmp_path)


@pytest.mark.parametrize("section, path", [("cells/ with a bundle", "cells"), ("embeddings/", "embeddings"),
                                           ("wells.parquet with a bundle", "wells.parquet"),
                                           ("attributes.parquet", "attributes.parquet"),
                                           ("attributes.parquet, two-class statistics", "attributes.parquet"),
                                           ("treatments.parquet", "treatments.parquet"),
                                           ("similarity.parquet", "similarity.parquet"),
                                           ("readouts.parquet", "readouts.parquet")])
def test_every_documented_model_column_reads_back_with_its_dtype(scored, bundle, section, path):
    result, *_ = scored
    data = pd.read_parquet(result.out / path)
    loaded = load_bundle(bundle)
    z_dim = loaded.config["models"]["autoencoder"]["config"]["z_dim"]
    ids = list(dict.fromkeys(pd.read_parquet(result.out / "attributes.parquet")["attribute"]))
    contrast = [c.removeprefix("contrast_") for c in contrast_columns(load_directions(bundle / "explain")[0])]
    assert contrast, "the bundle has no contrast direction to read out"
    features = [c for c in pd.read_parquet(result.out / "cells").columns
                if c in ("area", "perimeter", "form_factor") or c.endswith(("_ratio", "_texture", "_mean"))]

    def expand(name: str) -> list[str]:
        if "{class}" in name:
            return [name.replace("{class}", c) for c in loaded.class_names]
        if "{attribute}" in name:
            return [name.replace("{attribute}", a) for a in ids]
        if "d{k}" in name:
            return [name.replace("d{k}", c) for c in contrast]
        if name == "d_{feature}":
            return [f"d_{f}" for f in features]
        return [f"z_{i}" for i in range(z_dim)] if name == "z_{i}" else [name]

    for name, dtype in documented_columns("outputs.md", section).items():
        columns = expand(name)
        for column in columns:
            assert column in data, f"{section}: documented column {column} missing"
            kind = "string" if pd.api.types.is_string_dtype(data[column].dtype) else str(data[column].dtype)
            assert kind == dtype, f"{section}: {column} is {data[column].dtype}, docs say {dtype}"


JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "object": dict, "array": list,
              "null": type(None)}


def _manifest_values(manifest: dict, key: str) -> list:
    """Every value at a documented key: ``a.b`` is member b of object a, ``a[].b`` member b of each item of a."""
    values = [manifest]
    for part in key.split("."):
        name = part.removesuffix("[]")
        assert all(name in v for v in values), f"manifest.json: documented key {key} missing"
        values = [item for v in values for item in v[name]] if part.endswith("[]") else [v[name] for v in values]
    return values


def test_every_documented_manifest_key_is_in_the_run_manifest_with_its_type(scored):
    result, *_ = scored
    manifest = json.loads((result.out / "manifest.json").read_text())
    documented = documented_columns("outputs.md", "manifest.json")
    assert set(manifest) == {k for k in documented if "." not in k}
    for key, kind in documented.items():
        types = tuple(JSON_TYPES[t] for t in kind.split(" or "))
        values = _manifest_values(manifest, key)
        assert values and all(isinstance(v, types) and not isinstance(v, bool) for v in values), \
            f"manifest.json: {key} is not {kind}"


def _documented_rows(section: str) -> dict[str, list[str]]:
    """The ``## section`` table of docs/outputs.md with all its cells (wider than name | dtype), by first cell."""
    body = (REPO_ROOT / "docs" / "outputs.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in body.splitlines()
            if line.startswith("| ") and "---" not in line]
    return {row[0]: row[1:] for row in rows[1:]}


def _array_dtype(variable) -> str:
    """``string`` for any string array (numpy's StringDType, unicode or object), else numpy's dtype name."""
    return "string" if variable.dtype.kind in "OTU" else str(variable.dtype)


def test_counterfactuals_zarr_has_exactly_the_documented_dims_coordinates_variables_and_attributes(scored):
    import xarray as xr

    result, *_ = scored
    dataset = xr.open_zarr(result.out / "counterfactuals.zarr")
    assert set(dataset.dims) == set(documented_columns("outputs.md", "counterfactuals.zarr"))
    for section, found in (("coordinates", dataset.coords), ("variables", dataset.data_vars)):
        documented = _documented_rows(f"counterfactuals.zarr {section}")
        assert set(found) == set(documented), section
        for name, (dtype, dims, _) in documented.items():
            assert _array_dtype(found[name]) == dtype, f"{name} is {found[name].dtype}, docs say {dtype}"
            assert found[name].dims == tuple(d.strip() for d in dims.split(",")), f"{name}: dims {found[name].dims}"
    attrs = documented_columns("outputs.md", "counterfactuals.zarr attributes")
    assert {k: type(v).__name__ for k, v in dataset.attrs.items()} == attrs


def test_run_command_without_a_bundle_trains_one_then_scores(plate, cluster_client, tmp_path):
    from click.testing import CliRunner

    from screenxai.cli import main

    with registered_preset(MINI):
        result = CliRunner().invoke(main, ["run", plate.url, "-o", str(tmp_path / "out"), "--preset", "mini",
                                           "--scheduler", cluster_client.scheduler.address])
    assert result.exit_code == 0, result.output
    assert "no bundle given: training one (mini preset)" in result.output
    assert "formula (" in result.output and "mean_p_positive" in result.output
    assert set(load_bundle(tmp_path / "out" / "bundle").models) == {"classifier", "autoencoder"}
    assert "p_positive" in pd.read_parquet(tmp_path / "out" / "cells").columns


def test_the_default_local_cluster_has_one_single_threaded_worker_per_core_without_a_gpu():
    import os

    import torch

    from screenxai.pipeline.bundle_plugin import worker_device
    from screenxai.pipeline.cluster import local_cluster_size

    if torch.cuda.is_available():
        assert local_cluster_size() == (torch.cuda.device_count(), max(1, len(os.sched_getaffinity(0))
                                                                       // torch.cuda.device_count()), {"GPU": 1})
        assert worker_device(1) == f"cuda:{1 % torch.cuda.device_count()}"
    else:
        assert local_cluster_size() == (len(os.sched_getaffinity(0)), 1, None)
        assert worker_device(0) == "cpu"


def test_explain_command_learns_unguided_attributes_without_contrast_into_the_bundle_and_renders_exemplars(
        plate, cluster_client, tmp_path):
    import xarray as xr
    from click.testing import CliRunner

    from screenxai.cli import main

    bundle = tmp_path / "bundle"
    with registered_preset(MINI):
        train([plate], bundle, cluster_client, TrainSettings(preset="mini", seed=2, max_cells_per_well=30,
                                                             stages=("classifier", "autoencoder"), check_cells=4,
                                                             check_steps=2))
        assert not (bundle / "explain").exists()
        result = CliRunner().invoke(main, ["explain", str(bundle), plate.url, "-o", str(tmp_path / "out"),
                                           "--exemplars", "2", "--max-cells-per-well", "30", "--unguided",
                                           "--no-contrast", "--scheduler", cluster_client.scheduler.address])
    assert result.exit_code == 0, result.output
    assert "attributes (unguided, 10 learned and 0 contrast directions;" in result.output
    assert "    1. " in result.output
    stored = json.loads((bundle / "explain" / "directions.json").read_text())
    assert stored["guided"] is False and stored["config"]["n_directions"] == 10 and stored["n_linear"] == 0
    assert set(pd.read_parquet(tmp_path / "out" / "attributes.parquet")["source"]) == {"learned"}
    assert len(pd.read_parquet(tmp_path / "out" / "attributes.parquet")) >= 1
    assert xr.open_zarr(tmp_path / "out" / "counterfactuals.zarr").sizes["cell"] == 4
