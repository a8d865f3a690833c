"""A run never destroys what is already there without an explicit flag (on the toy regressor: the core alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from loraplug.status import SCHEMA_VERSION
from loraplug.testing import run_cli


def test_run_writes_resolved_recipe_status_metrics_and_tensorboard(tmp_path: Path, toy_recipe_file) -> None:
    result = run_cli("run", toy_recipe_file(export=[]))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    resolved = tomllib.loads((run_dir / "recipe.toml").read_text())
    assert resolved["train"]["max_steps"] == 4 and resolved["adapter"]["r"] == 4
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 4
    assert status["schema_version"] == SCHEMA_VERSION  # RunStatus reads older files by it
    lines = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines if row["split"] == "train"] == [2, 4]
    assert any(row["split"] == "eval" and "val_loss" in row for row in lines)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "adapter" / "adapter.safetensors").exists()
    assert json.loads((run_dir / "samples" / "step-000004.json").read_text())[0]["prompt"] == "0.5, -1, 2"


def test_finished_run_is_not_overwritten_without_the_flag(tmp_path: Path, toy_recipe_file) -> None:
    recipe = toy_recipe_file(export=[])
    assert run_cli("run", recipe).exit_code == 0
    adapter = tmp_path / "runs" / "tiny" / "adapter" / "adapter.safetensors"
    before = adapter.read_bytes()

    again = run_cli("run", recipe, "run.seed=1")
    assert again.exit_code == 2
    assert "already holds a finished run" in again.stderr and "--overwrite" in again.stderr
    assert adapter.read_bytes() == before

    replaced = run_cli("run", recipe, "run.seed=1", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert adapter.read_bytes() != before
    assert not list((tmp_path / "runs").glob(".tiny.replaced-*"))


def test_an_overwrite_that_fails_before_training_puts_the_previous_run_back(
    tmp_path: Path, toy_recipe_file, jsonl_file
) -> None:
    recipe = toy_recipe_file(export=[])
    assert run_cli("run", recipe).exit_code == 0
    run_dir = tmp_path / "runs" / "tiny"
    adapter = (run_dir / "adapter" / "adapter.safetensors").read_bytes()
    empty = jsonl_file("empty.jsonl", [])
    failed = run_cli("run", recipe, f"data.path={json_str(empty)}", "--overwrite")
    assert failed.exit_code == 2
    assert "No training samples" in failed.stderr
    assert f"the previous run is back in {run_dir}" in failed.stdout + failed.stderr
    assert (run_dir / "adapter" / "adapter.safetensors").read_bytes() == adapter
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert not list((tmp_path / "runs").glob(".tiny.replaced-*"))


def test_an_overwrite_that_fails_after_training_started_keeps_the_previous_run_aside(
    tmp_path: Path, toy_recipe_file
) -> None:
    recipe = toy_recipe_file(export=[])
    assert run_cli("run", recipe).exit_code == 0
    # The new run trains step 1, then fails in step 2.
    env = {**os.environ, "LORAPLUG_FAULT": "raise:step=2"}
    failed = subprocess.run([sys.executable, "-m", "loraplug", "run", str(recipe), "--overwrite"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert failed.returncode != 0 and "injected failure" in failed.stderr, failed.stderr
    kept = list((tmp_path / "runs").glob(".tiny.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "adapter" / "adapter.safetensors").exists()
    assert "kept at" in failed.stderr + failed.stdout
    status = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())
    assert status["status"] == "failed" and status["step"] == 1


def test_a_run_that_failed_before_training_is_replaced_without_the_flag(
    tmp_path: Path, toy_recipe_file, jsonl_file
) -> None:
    empty = jsonl_file("empty.jsonl", [])
    recipe = toy_recipe_file(export=[])
    assert run_cli("run", recipe, f"data.path={json_str(empty)}").exit_code == 2
    assert json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())["status"] == "failed"
    fixed = run_cli("run", recipe)  # the data fixed: no --overwrite needed, nothing was trained
    assert fixed.exit_code == 0, fixed.output


def json_str(path: Path) -> str:
    return json.dumps(str(path))
