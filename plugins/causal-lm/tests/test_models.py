"""Model loading: presets, hub ids that cannot be reached, bad adapter targets."""

from __future__ import annotations

from pathlib import Path

from loraplug.testing import run_cli


def test_unreachable_hub_id_suggests_a_local_path_or_smoke(lm_recipe) -> None:
    result = run_cli("run", lm_recipe(model={"pretrained": "no-such-org/no-such-model"}))
    assert result.exit_code == 2
    assert "Could not load the model 'no-such-org/no-such-model'" in result.stderr
    assert "--smoke" in result.stderr and "Traceback" not in result.output


def test_missing_local_model_directory_is_caught_by_validation(tmp_path: Path, lm_recipe) -> None:
    result = run_cli("recipe", "check", lm_recipe(model={"pretrained": "./models/mine"}))
    assert result.exit_code == 2
    assert f"model directory not found: {tmp_path / 'models' / 'mine'}" in result.stderr


def test_local_model_directory_is_accepted(tmp_path: Path, lm_recipe) -> None:
    import os
    import shutil

    from loraplug_causal_lm.presets import preset_dir

    local = tmp_path / "my-model"
    shutil.copytree(preset_dir("tiny-llama", Path(os.environ["LORAPLUG_CACHE"])), local)
    result = run_cli("run", lm_recipe(model={"pretrained": "my-model"}, export=[{"kind": "peft"}]))
    assert result.exit_code == 0, result.output


def test_unknown_target_module_names_the_modules_that_exist(lm_recipe) -> None:
    result = run_cli("run", lm_recipe(adapter={"target_modules": ["to_q"]}))
    assert result.exit_code == 2
    assert "adapter.target_modules" in result.stderr and "q_proj" in result.stderr


def test_rslora_and_dora_train(lm_recipe) -> None:
    result = run_cli(
        "run", lm_recipe(adapter={"use_rslora": True, "use_dora": True}, export=[{"kind": "merged"}])
    )
    assert result.exit_code == 0, result.output
