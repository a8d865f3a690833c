"""Every shipped recipe runs end to end with --smoke (tiny preset, 3 steps), exports included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplug.testing import run_cli

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_with_smoke(recipe: Path, tmp_path: Path) -> None:
    result = run_cli("run", recipe, "--smoke")
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs" / "smoke").glob("*/run.json"))
    assert len(runs) == 1
    status = json.loads(runs[0].read_text())
    assert status["status"] == "finished" and status["smoke"] is True and status["step"] == 3
    assert all(e["ok"] for e in status["exports"])
