"""The notebook API: a lazy cell table, a run from Python, the results re-opened with pandas."""

from __future__ import annotations

import dask
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import screenxai
from screenxai.errors import ScreenxaiError
from screenxai.plate.simulate import simulate_screen


@pytest.fixture(scope="module")
def plate_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("screen") / "plate.zarr"
    simulate_screen(path, rows=2, columns=3, fields=2, size=192, seed=4)
    return path


def test_cells_are_lazy_until_computed(plate_path, monkeypatch):
    from screenxai import screen as screen_module

    calls = []
    original = screen_module._field_cells
    monkeypatch.setattr(screen_module, "_field_cells", lambda key, config: calls.append(key) or original(key, config))
    cells = screenxai.Screen.open(plate_path).cells()
    assert calls == [] and cells.npartitions == 12
    assert {"cell_id", "reporter_ratio", "area"} <= set(cells.columns)
    with dask.config.set(scheduler="synchronous"):
        b02 = cells[cells["well"] == "B02"].compute()
    assert len(calls) == 12 and len(b02) > 0 and set(b02["well"]) == {"B02"}


def test_run_then_open_results_with_pandas(plate_path, tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        results = screenxai.Screen.open(plate_path).run(tmp_path / "out", client=client)
    again = screenxai.open_results(tmp_path / "out")
    assert again.manifest["plates"][0]["name"] == "plate"
    wells = again.wells
    assert len(wells) == 6 and wells["n_cells"].sum() == len(again.cells())
    b02 = pd.read_parquet(tmp_path / "out" / "cells", filters=[("well", "==", "B02")])
    assert len(b02) == int(wells.set_index("well").loc["B02", "n_cells"])
    assert isinstance(b02["well"].dtype, pd.CategoricalDtype)
    assert results.out == again.out


def test_open_results_names_a_folder_without_a_run(tmp_path):
    with pytest.raises(ScreenxaiError, match="manifest.json is missing"):
        screenxai.open_results(tmp_path)
