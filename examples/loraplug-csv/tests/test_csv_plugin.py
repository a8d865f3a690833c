"""How a third-party plugin tests itself: register it as an installed distribution, run the CLI."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from loraplug.testing import plugin_dist, write_recipe

PACKAGE = Path(__file__).parents[1] / "loraplug_csv"


def installed(tmp_path: Path) -> Path:
    return plugin_dist(tmp_path / "site", distribution="loraplug-csv", module="loraplug_csv", package=PACKAGE)


def run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "loraplug", *args], capture_output=True, text=True, env=env, timeout=300)


def reviews(path: Path, rows: int = 16) -> Path:
    """Texts whose label is spelt in them, so a few steps learn something."""
    lines = [f"{'great fun' if i % 2 else 'awful bore'} number {i},{'positive' if i % 2 else 'negative'}\n" for i in range(rows)]
    path.write_text("review,verdict\n" + "".join(lines), encoding="utf-8")
    return path


def classifier_recipe(tmp_path: Path, **changes: dict[str, object]) -> Path:
    reviews(tmp_path / "reviews.csv")
    recipe: dict[str, dict[str, object]] = {
        "run": {"name": "reviews", "output_dir": str(tmp_path / "runs"), "seed": 3},
        "data": {"kind": "csv-labels", "path": "reviews.csv", "text_column": "review", "label_column": "verdict", "val_fraction": 0.25},
        "model": {"kind": "text-classifier", "pretrained": "tiny-classifier", "labels": ["negative", "positive"]},
        "adapter": {"kind": "lora", "r": 4},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3},
        "eval": {"metrics": ["accuracy"], "sample_prompts": ["great fun"]},
    }
    for section, values in changes.items():
        recipe.setdefault(section, {}).update(values)
        recipe[section] = {key: value for key, value in recipe[section].items() if value is not None}  # None: drop the key
    return write_recipe(tmp_path / "reviews.toml", recipe)


def test_csv_data_trains_a_causal_lm(tmp_path: Path) -> None:
    site = installed(tmp_path)
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
    site = installed(tmp_path)
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
    site = installed(tmp_path)
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


def test_a_new_model_kind_trains_evaluates_and_samples(tmp_path: Path) -> None:
    site = installed(tmp_path)
    proc = run(site, "run", str(classifier_recipe(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "rows 16" in proc.stdout and "val rows 4" in proc.stdout
    run_dir = tmp_path / "runs" / "reviews"
    assert (run_dir / "adapter" / "adapter.safetensors").is_file()
    scores = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [s["accuracy"] for s in scores if "accuracy" in s]
    assert accuracy and all(0.0 <= a <= 1.0 for a in accuracy)
    samples = "\n".join(p.read_text() for p in (run_dir / "samples").rglob("*") if p.is_file() and p.suffix in (".md", ".txt", ".jsonl", ".json"))
    assert "positive" in samples or "negative" in samples, "the sample is the label the classifier gives its prompt"


def test_a_label_the_model_does_not_know_names_the_row(tmp_path: Path) -> None:
    site = installed(tmp_path)
    recipe = classifier_recipe(tmp_path, model={"labels": ["negative", "neutral"]})
    proc = run(site, "run", str(recipe))
    assert proc.returncode == 2, proc.stderr
    assert "has the label 'positive', which is not in model.labels" in proc.stderr and "reviews.csv:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_labelled_rows_for_a_causal_lm_are_refused_by_recipe_check(tmp_path: Path) -> None:
    site = installed(tmp_path)
    recipe = classifier_recipe(tmp_path, model={"kind": "causal-lm", "pretrained": "tiny-llama", "labels": None})
    proc = run(site, "recipe", "check", str(recipe))
    assert proc.returncode == 2
    assert "the data kind 'csv-labels' (loraplug-csv) produces labelled-text records" in proc.stderr


def test_the_plugin_imports_loraplug_only_never_another_plugin() -> None:
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    assert {name for name in imported if name.startswith("loraplug")} == {"loraplug", "loraplug_csv"}
