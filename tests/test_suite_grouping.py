"""The suite's own scheduling: under ``make test`` (two pytest-xdist workers, ``--dist=loadgroup``) a
session fixture that trains models is built once per run, and a module's fixtures once per module."""

from __future__ import annotations

from pathlib import Path


CONFTEST = Path(__file__).with_name("conftest.py").read_text()
BUILDS = """
import os
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models():
    with open(Path(os.environ["BUILD_LOG"]), "a") as log:
        log.write("tiny_models\\n")
    time.sleep(0.5)
    return "models"
"""
USES_MODELS = """
import pytest

@pytest.mark.parametrize("i", range(8))
def test_uses_the_models(tiny_models, i):
    assert tiny_models == "models"
"""
OWN_MODULE = """
import os
from pathlib import Path

import pytest

@pytest.fixture(scope="module")
def built():
    with open(Path(os.environ["BUILD_LOG"]), "a") as log:
        log.write("module\\n")

@pytest.mark.parametrize("i", range(8))
def test_uses_the_module_fixture(built, i):
    pass
"""


def test_make_test_builds_a_shared_model_fixture_once_and_keeps_modules_whole(pytester, monkeypatch, tmp_path):
    log = tmp_path / "builds.txt"
    monkeypatch.setenv("BUILD_LOG", str(log))
    pytester.makeconftest(CONFTEST + BUILDS)
    pytester.makeini("[pytest]\nmarkers =\n    acceptance: acceptance criterion\n")
    pytester.makepyfile(test_first=USES_MODELS, test_second=USES_MODELS, test_third=OWN_MODULE)
    result = pytester.runpytest_subprocess("--numprocesses=2", "--dist=loadgroup", "-v")
    result.assert_outcomes(passed=24)
    assert sorted(log.read_text().split()) == ["module", "tiny_models"]
    workers = {line.split()[0] for line in result.outlines if "test_uses_the_models" in line and "PASSED" in line}
    assert len(workers) == 1, workers
