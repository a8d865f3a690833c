"""Fixtures for the core's tests: they train the toy regressor of ``loraplug.testing`` (pure torch), never
a causal LM or Stable Diffusion, so they are fast and prove the core needs no modality library. The
causal-LM end-to-end tests live in plugins/causal-lm/tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraplug.testing import plugins_installed, toy_plugin_dist, toy_recipe, toy_rows


@pytest.fixture(scope="session")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the toy plugin as the distribution ``loraplug-toy``."""
    return toy_plugin_dist(tmp_path_factory.mktemp("toy-plugin") / "site")


@pytest.fixture
def toy(toy_site: Path) -> Iterator[Path]:
    """The toy plugin installed for this test (``plugins_installed``: this process's CLI and subprocesses)."""
    with plugins_installed(toy_site):
        yield toy_site


@pytest.fixture
def toy_recipe_file(tmp_path: Path, toy: Path) -> Any:
    """Factory: ``toy_recipe_file(train={"max_steps": 2})`` writes a toy-regressor recipe (its run is
    ``runs/tiny``) and returns its path; the toy plugin is installed."""
    return lambda **changes: toy_recipe(tmp_path, **changes)


@pytest.fixture
def toy_rows_of() -> Any:
    """``toy_rows_of(count, seed=0)``: toy rows ``{"x": [...], "y": ...}``, e.g. for ``jsonl_file``."""
    return toy_rows
