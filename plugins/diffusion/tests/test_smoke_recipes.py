"""Every shipped Stable Diffusion recipe runs end to end with --smoke (tiny preset, 3 steps), exports
included. (The causal-LM recipes, and the check that no recipe is left out: plugins/causal-lm/tests.)"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from loraplug.testing import run_cli

#: The model kinds this plugin serves whose recipes this file runs.
MODEL_KINDS = {"stable-diffusion", "stable-diffusion-xl", "flux"}
RECIPES = [
    recipe
    for recipe in sorted((Path(__file__).parents[3] / "recipes").glob("*.toml"))
    if tomllib.loads(recipe.read_text(encoding="utf-8"))["model"]["kind"] in MODEL_KINDS
]


def test_there_are_stable_diffusion_recipes() -> None:
    assert RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_with_smoke(recipe: Path, tmp_path: Path) -> None:
    result = run_cli("run", recipe, "--smoke")
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs" / "smoke").glob("*/run.json"))
    assert len(runs) == 1
    status = json.loads(runs[0].read_text())
    assert status["status"] == "finished" and status["smoke"] is True and status["step"] == 3
    assert all(e["ok"] for e in status["exports"])
