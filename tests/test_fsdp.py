"""FSDP2 through accelerate, on CPUs with gloo: `accelerate launch --config_file fsdp.yaml -m loraplug run`
with 2 processes on the tiny causal LM, the frozen base and the LoRA weights both sharded.

Two processes with micro-batch 2 see exactly the samples one process with micro-batch 4 sees, and the
loss is normalised by the whole step's target count, so the runs agree up to float summation order
(FSDP reduce-scatters the gradients, one process sums them in one batch): measured ~2e-7 on the
adapter, ~5e-7 on the losses, after 6 AdamW steps. Under FSDP no process holds a whole weight, so
checkpoints, the adapter and the exports must gather them: each is compared with the one-process run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from loraplug.testing import (
    accelerate_launch,
    assert_same_tensors,
    launch_errors,
    logged_losses,
    run_cli,
    torchrun,
)
from loraplug.training.state import load_state

pytestmark = pytest.mark.slow  # several 2-process launches of the tiny LM (~30 s each on 2 cores)

TOLERANCE = 1e-6
STEPS, KILLED_AT = 6, 5  # checkpoints every 2 steps: a rank killed in step 5 leaves step 4's

# What `accelerate config` writes for FSDP2 on one machine with 2 processes (docs/distributed.md).
FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: true
"""


def recipe_in(root: Path) -> Path:
    from loraplug_causal_lm.testing import tiny_lm_recipe  # the core's tests need no model plugin to load

    return tiny_lm_recipe(
        root,
        adapter={"dropout": 0.0},
        train={"max_steps": STEPS, "batch_size": 2, "save_every_n_steps": 2, "keep_last": 3},
        eval={"sample_prompts": ["q: rain"], "every_n_steps": 2},
        export=[{"kind": "peft"}, {"kind": "merged"}],
    )


def launch(root: Path, *args: str, fault: str = "") -> Any:
    config = root / "fsdp.yaml"
    config.write_text(FSDP_CONFIG, encoding="utf-8")
    return accelerate_launch(recipe_in(root), *args, config=config, cwd=root, fault=fault)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One FSDP run (2 processes) and one single-process run with the same global batch."""
    root = tmp_path_factory.mktemp("fsdp")
    sharded = launch(root, "run.name=fsdp")
    assert sharded.returncode == 0, launch_errors(sharded)
    assert "FSDP: this process holds" in sharded.stdout  # sharded, not silently DDP
    one = run_cli("run", recipe_in(root), "run.name=one", "train.batch_size=4")
    assert one.exit_code == 0, one.output
    return root / "runs"


def test_fsdp_run_equals_one_process_with_the_same_global_batch(runs: Path) -> None:
    one, sharded = runs / "one", runs / "fsdp"
    curve_one, curve_sharded = logged_losses(one), logged_losses(sharded)
    assert [(s, k) for s, k, _ in curve_one] == [(s, k) for s, k, _ in curve_sharded]
    for (_, key, a), (_, _, b) in zip(curve_one, curve_sharded, strict=True):
        assert abs(a - b) < 1e-5, key
    adapter = load_file(str(one / "adapter" / "adapter.safetensors"))
    assert_same_tensors(adapter, load_file(str(sharded / "adapter" / "adapter.safetensors")), TOLERANCE)
    assert any(float(v.abs().max()) > 1e-4 for k, v in adapter.items() if "lora_B" in k)  # it trained
    status = json.loads((sharded / "run.json").read_text())
    assert status["status"] == "finished" and status["processes"] == 2


def test_fsdp_checkpoints_hold_the_whole_trainable_state(runs: Path) -> None:
    # Every tensor whole (not one process's shard) and equal to the one-process run's at the same step:
    # the adapter, and AdamW's moments (keyed by parameter name under FSDP, by position otherwise).
    for step in ("step-00000002", "step-00000006"):
        one, sharded = runs / "one" / "checkpoints" / step, runs / "fsdp" / "checkpoints" / step
        assert_same_tensors(
            load_file(str(one / "adapter.safetensors")),
            load_file(str(sharded / "adapter.safetensors")),
            TOLERANCE,
        )
        state_one = load_state(one / "optimizer.safetensors")["optimizer"]
        state_sharded = load_state(sharded / "optimizer.safetensors")["optimizer"]
        names = state_sharded["param_groups"][0]["params"]
        positions = state_one["param_groups"][0]["params"]
        assert len(names) == len(positions) > 0
        for name, position in zip(names, positions, strict=True):
            for moment in ("exp_avg", "exp_avg_sq"):
                a, b = state_one["state"][position][moment], state_sharded["state"][name][moment]
                assert a.shape == b.shape, name
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-9, msg=f"{name} {moment}")
        assert json.loads((sharded / "checkpoint.json").read_text())["fsdp"] is True


def test_fsdp_exports_equal_the_one_process_run(runs: Path) -> None:
    one, sharded = runs / "one" / "exports", runs / "fsdp" / "exports"
    assert_same_tensors(
        load_file(str(one / "peft" / "adapter_model.safetensors")),
        load_file(str(sharded / "peft" / "adapter_model.safetensors")),
        TOLERANCE,
    )
    merged = sorted((sharded / "merged").glob("*.safetensors"))
    assert merged
    for path in merged:
        assert_same_tensors(load_file(str(one / "merged" / path.name)), load_file(str(path)), 1e-5)
    assert (runs / "fsdp" / "samples").is_dir()


def test_a_killed_fsdp_rank_resumes_to_the_same_adapter(runs: Path, tmp_path: Path) -> None:
    # Rank 1 is SIGKILLed in step 5 (after the step-4 checkpoint); the resumed run must end bitwise
    # where the uninterrupted FSDP run ended: weights, AdamW state and each process's RNG restored.
    killed = launch(tmp_path, "run.name=fsdp", fault=f"kill:micro={KILLED_AT}:rank=1")
    assert killed.returncode != 0
    run_dir = tmp_path / "runs" / "fsdp"
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert saved[-1] == "step-00000004", saved
    resumed = launch(tmp_path, "run.name=fsdp", "--resume")
    assert resumed.returncode == 0, launch_errors(resumed)
    assert "step-00000004" in resumed.stdout
    assert_same_tensors(
        load_file(str(runs / "fsdp" / "adapter" / "adapter.safetensors")),
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        0.0,
    )
    assert logged_losses(run_dir) == logged_losses(runs / "fsdp")


def test_samples_during_training_are_refused_under_fsdp(tmp_path: Path) -> None:
    # They run the model on rank 0 alone; under FSDP that forward pass would wait for rank 1 forever.
    result = launch(tmp_path, "eval.sample_every_n_steps=2")
    assert result.returncode != 0
    assert "FSDP cannot do" in result.stdout + result.stderr
    assert "eval.sample_every_n_steps" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_fsdp_checkpoint_continues_under_ddp_to_the_same_adapter(runs: Path, tmp_path: Path) -> None:
    # The engine can change on resume: FSDP's checkpoint (optimizer state keyed by parameter name) read
    # by a 2-process DDP run (keyed by position), from step 2 to the end, ends where FSDP ended.
    import shutil

    run_dir = tmp_path / "runs" / "fsdp"
    shutil.copytree(runs / "fsdp", run_dir)
    for later in ("step-00000004", "step-00000006"):
        shutil.rmtree(run_dir / "checkpoints" / later)
    resumed = torchrun(recipe_in(tmp_path), "run.name=fsdp", "--resume", "--force", cwd=tmp_path)
    assert resumed.returncode == 0, launch_errors(resumed)
    output = resumed.stdout + resumed.stderr
    assert "step-00000002 was written by a run sharded with FSDP; this run is neither" in output
    assert json.loads((run_dir / "run.json").read_text())["resumed_at_step"] == 2
    assert_same_tensors(
        load_file(str(runs / "fsdp" / "adapter" / "adapter.safetensors")),
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        TOLERANCE,
    )


def test_fsdp_in_bf16_trains_like_one_process_in_bf16(tmp_path: Path) -> None:
    # FSDP2's mixed-precision policy (bf16 compute, fp32 sharded weights) against one process's bf16
    # autocast: the same training, not the same rounding (measured 2.5e-3 on the adapter, values ~0.09).
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_CONFIG.replace("mixed_precision: 'no'", "mixed_precision: bf16"), encoding="utf-8")
    sharded = accelerate_launch(
        recipe_in(tmp_path), "run.name=fsdp", "train.mixed_precision=bf16", config=config, cwd=tmp_path
    )
    assert sharded.returncode == 0, launch_errors(sharded)
    one = run_cli(
        "run", recipe_in(tmp_path), "run.name=one", "train.batch_size=4", "train.mixed_precision=bf16"
    )
    assert one.exit_code == 0, one.output
    trained = load_file(str(tmp_path / "runs" / "fsdp" / "adapter" / "adapter.safetensors"))
    assert all(v.dtype == torch.float32 for v in trained.values())
    assert_same_tensors(
        load_file(str(tmp_path / "runs" / "one" / "adapter" / "adapter.safetensors")), trained, 1e-2
    )
    val_sharded, val_one = (
        logged_losses(tmp_path / "runs" / "fsdp")[-1],
        logged_losses(tmp_path / "runs" / "one")[-1],
    )
    assert val_sharded[1] == "val_loss" and abs(val_sharded[2] - val_one[2]) < 1e-3 * val_one[2]
