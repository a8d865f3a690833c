"""How a third-party plugin tests itself: register it as an installed distribution, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loraplug.testing import plugin_dist, write_recipe

SOURCE = Path(__file__).parents[1] / "loraplug_csv" / "__init__.py"


def run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "loraplug", *args], capture_output=True, text=True, env=env, timeout=300)


def test_csv_data_trains_a_causal_lm(tmp_path: Path) -> None:
    site = plugin_dist(tmp_path / "site", distribution="loraplug-csv", module="loraplug_csv", source=SOURCE.read_text())
    (tmp_path / "pairs.csv").write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(12)))
    recipe = write_recipe(
        tmp_path / "csv.toml",
        {
            "run": {"output_dir": str(tmp_path / "runs")},
            "data": {"kind": "csv", "path": "pairs.csv", "prompt_column": "question", "response_column": "answer"},
            "model": {"kind": "causal-lm", "pretrained": "tiny-llama"},
            "adapter": {"kind": "lora"},
            "train": {"max_steps": 2, "batch_size": 4},
        },
    )
    proc = run(site, "run", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert "rows 12" in proc.stdout


def test_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    site = plugin_dist(tmp_path / "site", distribution="loraplug-csv", module="loraplug_csv", source=SOURCE.read_text())
    (tmp_path / "pairs.csv").write_text("q,a\nx,y\n")
    recipe = write_recipe(
        tmp_path / "csv.toml",
        {
            "data": {"kind": "csv", "path": "pairs.csv"},
            "model": {"kind": "causal-lm", "pretrained": "tiny-llama"},
            "adapter": {"kind": "lora"},
        },
    )
    proc = run(site, "run", str(recipe))
    assert proc.returncode == 2
    assert "has no column prompt, response" in proc.stderr and "Traceback" not in proc.stderr


def test_csv_data_for_an_image_model_is_refused_by_recipe_check(tmp_path: Path) -> None:
    site = plugin_dist(tmp_path / "site", distribution="loraplug-csv", module="loraplug_csv", source=SOURCE.read_text())
    (tmp_path / "pairs.csv").write_text("prompt,response\nx,y\n")
    recipe = write_recipe(
        tmp_path / "csv.toml",
        {
            "data": {"kind": "csv", "path": "pairs.csv"},
            "model": {"kind": "stable-diffusion", "pretrained": "tiny-sd"},
            "adapter": {"kind": "lora"},
        },
    )
    proc = run(site, "recipe", "check", str(recipe))
    assert proc.returncode == 2
    assert "the data kind 'csv' (loraplug-csv) produces chat records" in proc.stderr
    assert "trains on caption-image records" in proc.stderr and "Traceback" not in proc.stderr
