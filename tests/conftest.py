"""Shared fixtures: the real data in ../shared/data, and plates built once per test run.

Tests marked ``acceptance`` check an issue's acceptance criterion. On a
user's checkout without ../shared/data they skip with a clear reason; under
``CI=true`` a missing folder is a failure, and so is any skipped acceptance
test (see ``pytest_runtest_makereport``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest_plugins = ("pytester",)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"
BBBC013_PATTERN = "Channel{channel}-{index}-{row}-{column}.tif"
BBBC013_CHANNELS = "1=GFP,2=DNA"
PLANTED_DOSE_FACTORS = ["translocation", "nuclear_area"]
# Session fixtures that train models (minutes each): the modules using one share a pytest-xdist worker.
HEAVY_SESSION_FIXTURES = ("tiny_models", "treatment_screen", "bbbc013_classifier")


@contextmanager
def in_process_cluster(gpu_worker: bool = False) -> Iterator:
    """A client of a real scheduler with one single-threaded in-process worker, and one declaring a GPU if asked."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 1}}}
    if gpu_worker:
        workers["gpu"] = {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def client():
    """A real scheduler with one single-threaded in-process worker, per test module (commands reach it by address)."""
    with in_process_cluster() as client:
        yield client


def documented_columns(doc: str, section: str) -> dict[str, str]:
    """Column names and dtypes of the ``## section`` table of docs/<doc>, in order."""
    text = (REPO_ROOT / "docs" / doc).read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in body.splitlines() if line.startswith("| ") and "---" not in line]
    return {name.strip(): dtype.strip() for name, dtype in rows[1:]}


def shared_data_dir(name: str) -> Path:
    """Path of a folder in ../shared/data; skip (or fail under CI) when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"{path} not found: the real test data lives in ../shared/data beside the checkout"
        if IN_CI:
            pytest.fail(message + " (CI=true: missing shared data is a failure)")
        pytest.skip(message)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true, a skipped acceptance test is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("acceptance") is not None:
        report.outcome = "failed"
        report.longrepr = f"acceptance test {item.nodeid} was skipped under CI=true: {report.longrepr}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Give every test an ``xdist_group`` so that ``--dist=loadgroup`` splits no shared fixture; heaviest first.

    Every module is one group, so its module-scoped fixtures are built once;
    the modules that share a costly session fixture (``HEAVY_SESSION_FIXTURES``)
    form one group each, so the fixture is built once per run, not once per
    worker. Those groups run first: the tiny models' training is the suite's
    critical path. Serial runs get the same, valid, order.
    """
    groups = module_groups(items)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[module_of(item)]))
    first = {name: rank for rank, name in enumerate(HEAVY_SESSION_FIXTURES)}
    items.sort(key=lambda item: first.get(groups[module_of(item)], len(first)))


def module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def module_groups(items: list[pytest.Item]) -> dict[str, str]:
    """Each module's xdist group: the heavy session fixture one of its tests uses, else the module itself."""
    groups: dict[str, str] = {}
    for item in items:
        module = module_of(item)
        groups.setdefault(module, module)
        for name in HEAVY_SESSION_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                groups[module] = name
    return groups


def pytest_configure(config):
    """Under CI=true with pytest-xdist workers, refuse -m and -k before any worker starts.

    Workers deselect on their own, where ``pytest_deselected`` can only crash
    the run (an INTERNALERROR without this message), not stop it cleanly.
    """
    selecting = config.getoption("markexpr", "") or config.getoption("keyword", "")
    if IN_CI and getattr(config.option, "numprocesses", None) and selecting:
        raise pytest.UsageError("CI=true: acceptance tests may not be deselected: -m/-k are refused "
                                "with pytest-xdist workers")


def pytest_deselected(items):
    """Under CI=true, deselecting an acceptance test aborts the run."""
    dropped = [i.nodeid for i in items if i.get_closest_marker("acceptance") is not None]
    if IN_CI and dropped:
        raise pytest.UsageError(f"CI=true: acceptance tests may not be deselected: {dropped}")


@pytest.fixture(scope="session")
def bbbc013_dir() -> Path:
    """The real BBBC013 wortmannin half-plate TIFFs and layout.csv."""
    return shared_data_dir("bbbc013_wortmannin")


@pytest.fixture(scope="session")
def nuclei2d_dir() -> Path:
    """The real nuclei image with its ground-truth instance mask."""
    return shared_data_dir("nuclei2d")


@pytest.fixture(scope="session")
def bbbc013_plate(bbbc013_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BBBC013 converted once per test run into an NGFF 0.5 plate named 'bbbc013'."""
    from screenxai.plate.convert import convert_tiffs

    out = tmp_path_factory.mktemp("bbbc013") / "bbbc013.zarr"
    return convert_tiffs(bbbc013_dir, out, BBBC013_PATTERN, layout=bbbc013_dir / "layout.csv",
                         channel_names=BBBC013_CHANNELS)


def simulated_cells(path: Path, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Interior 32 px crops of a 24-well simulated plate, with the planted truth joined to each cell."""
    from screenxai.cells import CellConfig, fit_normalisation, process_field
    from screenxai.plate.reader import open_plate
    from screenxai.plate.simulate import simulate_screen

    sim = simulate_screen(path, rows=4, columns=6, fields=2, size=512, seed=seed)
    plate = open_plate(path)
    config = CellConfig(crop_size=32, normalisation=fit_normalisation(plate))
    batches = [process_field(plate, well, field, config) for well in sim.layout.well for field in range(2)]
    truth = sim.truth[["plate", "well", "field", "label", *PLANTED_DOSE_FACTORS, "texture", "control", "dose"]]
    table = pd.concat([b.table for b in batches], ignore_index=True).merge(
        truth, on=["plate", "well", "field", "label"], how="left")
    keep = ~table["border"].to_numpy() & table["translocation"].notna().to_numpy()
    return np.concatenate([b.crops for b in batches])[keep], table[keep].reset_index(drop=True)


@pytest.fixture(scope="session")
def simulated_train_cells(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, pd.DataFrame]:
    """Crops and table (with planted truth) of a simulated plate, seed 0: the models' training set."""
    return simulated_cells(tmp_path_factory.mktemp("sim-train") / "train.zarr", seed=0)


@pytest.fixture(scope="session")
def simulated_test_cells(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, pd.DataFrame]:
    """Crops and table of a second simulated plate (seed 1) that no model trains on."""
    return simulated_cells(tmp_path_factory.mktemp("sim-test") / "test.zarr", seed=1)


@pytest.fixture(scope="session")
def tiny_models(simulated_train_cells):
    """The tiny preset trained once per test run on ``simulated_train_cells`` (a few minutes of CPU)."""
    import torch

    from screenxai.models.training import train_models

    torch.set_num_threads(1)
    crops, table = simulated_train_cells
    return train_models(crops, table, "tiny", seed=0)


@pytest.fixture(scope="session")
def bbbc013_control_cells(bbbc013_plate: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Interior 32 px crops of BBBC013's negative and positive control wells, with the layout joined."""
    from screenxai.cells import CellConfig, fit_normalisation, process_field
    from screenxai.plate.reader import open_plate

    plate = open_plate(bbbc013_plate)
    layout = plate.layout
    wells = layout.loc[layout["control"].isin(["negative", "positive"]), "well"].tolist()
    config = CellConfig(crop_size=32, nuclear_channel="DNA", normalisation=fit_normalisation(plate))
    batches = [process_field(plate, well, 0, config) for well in wells]
    table = pd.concat([b.table for b in batches], ignore_index=True).merge(
        layout[["well", "control", "dose_index"]], on="well", how="left")
    keep = ~table["border"].to_numpy()
    return np.concatenate([b.crops for b in batches])[keep], table[keep].reset_index(drop=True)


@pytest.fixture(scope="session")
def bbbc013_classifier(bbbc013_plate: Path, bbbc013_control_cells, tmp_path_factory: pytest.TempPathFactory):
    """The classifier stage of ``screenxai train`` (tiny preset, negative vs positive) on BBBC013, once per run.

    Trained by the real job (crop cache filled by Dask tasks, training as a
    worker task) and returned as a ``TrainedClassifier`` whose well split
    indexes ``bbbc013_control_cells``.
    """
    from distributed import Client, LocalCluster

    from screenxai.models.bundle import load_bundle
    from screenxai.models.training import classifier_from_bundle
    from screenxai.pipeline.train_job import TrainSettings, train
    from screenxai.plate.reader import open_plate

    out = tmp_path_factory.mktemp("bbbc013-train") / "bundle"
    settings = TrainSettings(preset="tiny", stages=("classifier",), seed=0)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        train([open_plate(bbbc013_plate)], out, client, settings)
    _, table = bbbc013_control_cells
    return classifier_from_bundle(load_bundle(out), table)


@pytest.fixture(scope="session")
def treatment_screen(tmp_path_factory: pytest.TempPathFactory):
    """A simulated multi-treatment screen (the ``treatments`` design) trained with the tiny preset and run, once.

    ``screenxai run``'s defaults: class column ``compound``, each treatment's
    two top dose levels, guided directions, every well scored. Returns the
    run folder (``out``), the bundle, the layout, the planted truth and the
    plate's column count.
    """
    import types

    from distributed import Client, LocalCluster

    from screenxai.pipeline.run import run_cells
    from screenxai.pipeline.train_job import TrainSettings, train
    from screenxai.plate.reader import open_plate
    from screenxai.plate.simulate import simulate_screen

    root = tmp_path_factory.mktemp("treatment-screen")
    columns = 5
    screen = simulate_screen(root / "plate.zarr", columns=columns, fields=1, size=384, seed=3, design="treatments")
    plate = open_plate(screen.plate_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        train([plate], root / "bundle", client, TrainSettings(preset="tiny", seed=0, torch_threads=1))
        result = run_cells([plate], root / "run", client, bundle=root / "bundle")
    return types.SimpleNamespace(out=result.out, bundle=root / "bundle", layout=screen.layout, truth=screen.truth,
                                 columns=columns)
