"""Every shipped sequence-classifier recipe runs end to end with --smoke (tiny preset, few steps), exports included."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from loraplug.testing import run_cli

RECIPES = [
    recipe
    for recipe in sorted((Path(__file__).parents[3] / "recipes").glob("*.toml"))
    if tomllib.loads(recipe.read_text(encoding="utf-8"))["model"]["kind"] == "sequence-classifier"
]


def test_there_is_a_classification_recipe() -> None:
    assert [r.name for r in RECIPES] == ["tiny_classify.toml"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_with_smoke(recipe: Path, tmp_path: Path) -> None:
    result = run_cli("run", recipe, "--smoke")
    assert result.exit_code == 0, result.output
    exports = {p.name for p in (tmp_path / "runs").glob("**/exports/*")}
    assert {"peft", "merged", "onnx"} <= exports, result.output
