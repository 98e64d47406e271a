"""The CI guard itself: under CI=true an acceptance test may not be skipped or deselected."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py").read_text()
TESTS = """
import pytest

@pytest.mark.acceptance
def test_needs_data():
    pytest.skip("data folder absent")

def test_ordinary_skip():
    pytest.skip("not an acceptance test")
"""


@pytest.fixture
def guarded(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    acceptance: acceptance criterion\n")
    pytester.makepyfile(test_guard=TESTS)
    return pytester


@pytest.mark.parametrize("ci, failed, skipped", [("true", 1, 1), ("", 0, 2)])
def test_skipped_acceptance_test_fails_only_under_ci(guarded, monkeypatch, ci, failed, skipped):
    monkeypatch.setenv("CI", ci)
    result = guarded.runpytest_subprocess()
    result.assert_outcomes(failed=failed, skipped=skipped)


@pytest.mark.parametrize("workers", [(), ("--numprocesses=2", "--dist=loadgroup")])
def test_deselecting_acceptance_tests_aborts_under_ci(guarded, monkeypatch, workers):
    monkeypatch.setenv("CI", "true")
    result = guarded.runpytest_subprocess(*workers, "-m", "not acceptance")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*acceptance tests may not be deselected*"])
