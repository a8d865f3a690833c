"""Every shipped causal-LM recipe runs end to end with --smoke (tiny preset, 3 steps), exports included.
(The Stable Diffusion recipes: plugins/diffusion/tests/test_smoke_recipes.py.)"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from loraplug.testing import run_cli

ALL_RECIPES = sorted((Path(__file__).parents[3] / "recipes").glob("*.toml"))
#: The model kinds whose recipes a plugin's test_smoke_recipes.py runs.
SMOKED_KINDS = {
    "causal-lm": "plugins/causal-lm",
    "stable-diffusion": "plugins/diffusion",
    "stable-diffusion-xl": "plugins/diffusion",
    "flux": "plugins/diffusion",
    "sequence-classifier": "plugins/text-classification",
}


def model_kind(recipe: Path) -> str:
    return str(tomllib.loads(recipe.read_text(encoding="utf-8"))["model"]["kind"])


RECIPES = [r for r in ALL_RECIPES if model_kind(r) == "causal-lm"]


def test_every_shipped_recipe_is_smoked_by_its_model_plugins_tests() -> None:
    assert RECIPES and ALL_RECIPES
    unsmoked = {r.name: model_kind(r) for r in ALL_RECIPES if model_kind(r) not in SMOKED_KINDS}
    assert not unsmoked, (
        f"add a tests/test_smoke_recipes.py to the plugin of these recipes' model kinds: {unsmoked}"
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_with_smoke(recipe: Path, tmp_path: Path) -> None:
    result = run_cli("run", recipe, "--smoke")
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs" / "smoke").glob("*/run.json"))
    assert len(runs) == 1
    status = json.loads(runs[0].read_text())
    assert status["status"] == "finished" and status["smoke"] is True and status["step"] == 3
    assert all(e["ok"] for e in status["exports"])
