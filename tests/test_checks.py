"""The checks `make test` runs before the tests (ruff, ruff format, mypy), so CI (.ci/run) enforces them."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["ruff check .", "ruff format --check .", "mypy loraplug"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_runs_ruff_and_mypy_before_the_tests() -> None:
    dry_run = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = dry_run.stdout.splitlines()

    def position(command: str) -> int:
        found = [i for i, line in enumerate(lines) if line.endswith(command)]
        assert found, f"`make test` does not run `{command}`:\n{dry_run.stdout}"
        return found[0]

    pytest_at = position("-m pytest -n 2 -q")
    assert all(position(check) < pytest_at for check in CHECKS)


def test_the_checkers_are_pinned_in_the_test_extra_and_mypy_is_scoped_to_the_core() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = project["project"]["optional-dependencies"]["test"]
    for tool in ("ruff", "mypy"):
        assert any(requirement.startswith(f"{tool}==") for requirement in test_extra), test_extra
    mypy = project["tool"]["mypy"]
    assert mypy["files"] == ["loraplug"]
    assert mypy["disallow_untyped_defs"] and mypy["warn_unused_ignores"]
    # Untyped libraries are named one by one: a missing stub package elsewhere must still be reported.
    assert "ignore_missing_imports" not in mypy
    for override in mypy["overrides"]:
        if override.get("ignore_missing_imports"):
            assert all(module and module != "*" for module in override["module"])
