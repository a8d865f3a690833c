"""Every optimizer kind trains through ``loraplug_build_optimizer``, checks its ``[optimizer]`` table like
any kind, and a run killed mid-way resumes to exactly the weights of an uninterrupted run — so each
optimizer's whole state is in its checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from loraplug.testing import run_cli
from loraplug.training.state import load_state

STEPS = 4


def recipe_for(lm_recipe: Any, name: str, kind: str, options: dict[str, Any], lr: float) -> Path:
    return lm_recipe(
        run={"name": name},
        data={"val_fraction": 0.0},
        adapter={"dropout": 0.1},  # dropout on: the random generators must be restored too
        train={
            "optimizer": kind,
            "lr": lr,
            "weight_decay": 0.01,
            "max_steps": STEPS,
            "batch_size": 2,
            "grad_accum_steps": 2,
            "save_every_n_steps": 2,
        },  # fmt: skip
        optimizer=options,
        eval={"sample_prompts": []},
        export=[],
    )


def killed(recipe: Path, micro: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORAPLUG_FAULT": f"kill:micro={micro}"}
    return subprocess.run(
        [sys.executable, "-m", "loraplug", "run", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter.safetensors"))


@pytest.mark.parametrize(
    ("kind", "options", "lr", "shows_it"),
    [
        # min_8bit_size: the tiny model's LoRA matrices are small; 8-bit state only above this size.
        (
            "adamw8bit",
            {"min_8bit_size": 64},
            5e-3,
            lambda state, group: state["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.uint8,
        ),
        (
            "lion",
            {"betas": [0.9, 0.98]},
            1e-3,
            lambda state, group: set(state) == {"exp_avg"} and group["betas"] == (0.9, 0.98),
        ),
        (
            "prodigy",
            {"d0": 1e-4, "safeguard_warmup": True},
            1.0,
            lambda state, group: "p0" in state and group["d"] > 0,
        ),
        (
            "adafactor",
            {"beta1": 0.9},
            5e-3,
            lambda state, group: "exp_avg_sq_row" in state and "exp_avg" in state,
        ),
    ],
)
def test_a_killed_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, lm_recipe, kind: str, options: dict, lr: float, shows_it
) -> None:
    straight = run_cli("run", recipe_for(lm_recipe, "straight", kind, options, lr))
    assert straight.exit_code == 0, straight.output
    assert f"{kind} lr {lr:g}" in straight.stdout
    expected = adapter(tmp_path / "runs" / "straight")
    # The optimizer in the checkpoint is the kind asked for, with its options.
    saved = load_state(
        tmp_path / "runs" / "straight" / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.safetensors"
    )["optimizer"]
    assert shows_it(saved["state"][0], saved["param_groups"][0])

    recipe = recipe_for(lm_recipe, "resumed", kind, options, lr)
    # micro-batch 5: the first half of step 3's accumulation, after step 2's checkpoint.
    assert killed(recipe, 5, tmp_path).returncode == -signal.SIGKILL
    resumed = run_cli("run", recipe, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "step-00000002" in resumed.stdout
    weights = adapter(tmp_path / "runs" / "resumed")
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(weights[key], value), f"{kind}: {key} differs after resume"
    trained = load_file(
        str(tmp_path / "runs" / "straight" / "checkpoints" / "step-00000002" / "adapter.safetensors")
    )
    assert any(
        not torch.equal(trained[k], v) for k, v in expected.items()
    )  # steps 3 and 4 did change the weights


def test_each_kind_checks_its_own_options_table(lm_recipe) -> None:
    result = run_cli(
        "recipe",
        "check",
        lm_recipe(train={"optimizer": "lion"}, optimizer={"eps": 1e-8, "betas": [0.9, 1.5]}),
    )
    assert result.exit_code == 2
    assert "unknown key `optimizer.eps`" in result.stderr and "known keys here: betas" in result.stderr
    assert "`optimizer.betas[1]` = 1.5: Input should be less than 1" in result.stderr
    # The deprecated train.betas / train.eps move into [optimizer] (with a warning) where the kind has
    # them, and are refused where it has not.
    moved = run_cli(
        "recipe", "check", "--resolved", lm_recipe(train={"optimizer": "adamw8bit", "betas": [0.8, 0.9]})
    )
    assert moved.exit_code == 0, moved.output
    assert (
        "`train.betas`" in moved.stderr and "is deprecated: it is read as `optimizer.betas`" in moved.stderr
    )
    train_table, optimizer_table = moved.stdout.split("[train]")[1].split("[optimizer]")
    assert "betas" not in train_table and "betas = [\n    0.8,\n    0.9,\n]" in optimizer_table
    no_eps = run_cli("recipe", "check", lm_recipe(train={"optimizer": "lion", "eps": 1e-6}))
    assert (
        no_eps.exit_code == 2
        and "`train.eps`" in no_eps.stderr
        and "the lion optimizer has no `eps`" in no_eps.stderr
    )


def test_prodigy_at_an_adamw_learning_rate_is_warned_about(lm_recipe) -> None:
    result = run_cli("run", recipe_for(lm_recipe, "slow", "prodigy", {}, 1e-3))
    assert result.exit_code == 0, result.output
    assert "train.lr = 0.001 with the prodigy optimizer" in result.stdout and "1000× smaller" in result.stdout


def test_recipe_keys_lists_each_optimizers_table() -> None:
    result = run_cli("recipe", "keys", "--markdown")
    assert result.exit_code == 0
    for kind in ("adamw", "adamw8bit", "lion", "prodigy", "adafactor"):
        assert f'### `[optimizer] with train.optimizer = "{kind}"`' in result.stdout
