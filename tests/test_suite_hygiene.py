"""The suite's own rules: test modules import helpers (facerec.testing, tests.<helper> modules), never each other
or a conftest, and only the benchmarks' own tests import benchmark code."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_test_module_imports_another_or_a_conftest() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            name
            for name in imported_modules(path)
            if name.startswith("tests.") and (name.rsplit(".", 1)[-1].startswith("test_") or name.endswith("conftest"))
        )
        for path in TESTS.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_benchmark_tests_import_benchmark_code() -> None:
    offenders = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in TESTS.rglob("*.py")
        if path.name != "test_bench.py"
        and "bench" not in path.relative_to(TESTS).parts[:-1]
        and any(name.startswith("facerec.bench") for name in imported_modules(path))
    )
    assert offenders == []
