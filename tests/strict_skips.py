"""A pytest plugin: where every test must run (CI, or FACEREC_FORBID_SKIPS=1), a skipped test is a failure.

CI installs every dependency, Chromium and the weights, and has ../shared/datasets beside the checkout, so a
skip there means something the project needs is missing or broken, not that the test does not apply."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

TRUE = {"1", "true", "yes"}


def skips_are_failures() -> bool:
    return os.environ.get("CI", "").lower() in TRUE or os.environ.get("FACEREC_FORBID_SKIPS", "").lower() in TRUE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and skips_are_failures():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run (CI or FACEREC_FORBID_SKIPS=1): {reason}"
