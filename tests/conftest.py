"""Shared fixtures: the real data in ../shared/data, and plates built once per test run.

Tests marked ``acceptance`` check an issue's acceptance criterion. On a
user's checkout without ../shared/data they skip with a clear reason; under
``CI=true`` a missing folder is a failure, and so is any skipped acceptance
test (see ``pytest_runtest_makereport``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"
BBBC013_PATTERN = "Channel{channel}-{index}-{row}-{column}.tif"
BBBC013_CHANNELS = "1=GFP,2=DNA"


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
