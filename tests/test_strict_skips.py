"""In CI every test must run: a skip there is reported as a failure (tests/strict_skips.py)."""

from __future__ import annotations

import pytest

INNER = """
import pytest

def test_skips():
    pytest.skip("no data here")

@pytest.fixture
def missing():
    pytest.skip("fixture could not be set up")

def test_skips_in_setup(missing):
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


def run_inner(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(INNER)
    # In-process: the inner run sees the outer xdist worker's environment; pytest-benchmark (where installed)
    # would then warn that it is disabled, which is not what these tests count.
    return pytester.runpytest("-p", "tests.strict_skips", "-p", "no:benchmark")


@pytest.mark.parametrize("variable", ["CI", "FACEREC_FORBID_SKIPS"])
def test_a_skip_fails_where_every_test_must_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(variable, "true")
    result = run_inner(pytester)
    result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped where every test must run*no data here*"])


def test_a_skip_is_a_skip_elsewhere(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("FACEREC_FORBID_SKIPS", raising=False)
    result = run_inner(pytester)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
