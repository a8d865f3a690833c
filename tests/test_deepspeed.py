"""DeepSpeed ZeRO-2 and ZeRO-3 through accelerate, on CPUs (DeepSpeed's CPU accelerator, gloo):
`accelerate launch --config_file zero.yaml -m loraplug run` with 2 processes on the tiny causal LM.

ZeRO-2 splits the optimizer state and the fp32 master copy of the LoRA weights between the processes;
ZeRO-3 splits every weight, frozen base included. Two processes with micro-batch 2 see exactly the
samples one process with micro-batch 4 sees, and the loss is normalised by the whole step's target
count, so the runs agree up to float summation order: measured ~2e-7 (ZeRO-2) and ~8e-8 (ZeRO-3) on the
adapter and ~6e-7 on the losses after 6 AdamW steps; the tests allow 1e-6 and 1e-5, as for FSDP.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from loraplug.testing import (
    accelerate_launch,
    assert_same_tensors,
    deepspeed_config,
    launch_errors,
    logged_losses,
    run_cli,
    torchrun,
)
from loraplug.training.state import load_state

pytest.importorskip("deepspeed", reason="pip install deepspeed (make install does)")
pytestmark = pytest.mark.slow  # several 2-process launches of the tiny LM (~25 s each on 2 cores)

TOLERANCE = 1e-6
STEPS, KILLED_AT = 6, 5  # checkpoints every 2 steps: a rank killed in step 5 leaves step 4's


def recipe_in(root: Path, **train: Any) -> Path:
    from loraplug_causal_lm.testing import tiny_lm_recipe  # the core's tests need no model plugin to load

    return tiny_lm_recipe(
        root,
        adapter={"dropout": 0.0},
        train={"max_steps": STEPS, "batch_size": 2, "save_every_n_steps": 2, "keep_last": 3, **train},
        eval={"sample_prompts": ["q: rain"], "every_n_steps": 2},
        export=[{"kind": "peft"}, {"kind": "merged"}],
    )


def launch(
    root: Path,
    stage: int,
    *args: str,
    fault: str = "",
    precision: str = "no",
    processes: int = 2,
    **train: Any,
) -> Any:
    config = root / f"zero{stage}-{processes}.yaml"
    config.write_text(deepspeed_config(stage, processes=processes, precision=precision), encoding="utf-8")
    return accelerate_launch(recipe_in(root, **train), *args, config=config, cwd=root, fault=fault)


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process with the global batch of the two-process runs."""
    root = tmp_path_factory.mktemp("one")
    result = run_cli("run", recipe_in(root), "run.name=one", "train.batch_size=4")
    assert result.exit_code == 0, result.output
    return root / "runs" / "one"


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    """A 2-process run under ZeRO-2 or ZeRO-3: its stage, run directory and output."""
    stage: int = request.param
    root = tmp_path_factory.mktemp(f"zero{stage}")
    result = launch(root, stage, f"run.name=zero{stage}")
    assert result.returncode == 0, launch_errors(result)
    return stage, root / "runs" / f"zero{stage}", result.stdout


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter.safetensors"))


def test_a_zero_run_equals_one_process_with_the_same_global_batch(
    one: Path, zero: tuple[int, Path, str]
) -> None:
    stage, run_dir, output = zero
    assert f"DeepSpeed ZeRO-{stage}:" in output  # DeepSpeed's engine, not silently DDP
    if stage == 3:
        assert "this process holds 189,504 of the model's 379,008 parameter values" in output  # half each
    # The accelerate config's accumulation steps are replaced by the recipe's, and the run says so.
    assert "replaces the accelerate config's gradient_accumulation_steps" not in output  # both 1 here
    curve_one, curve_zero = logged_losses(one), logged_losses(run_dir)
    assert [(s, k) for s, k, _ in curve_one] == [(s, k) for s, k, _ in curve_zero]
    for (_, key, a), (_, _, b) in zip(curve_one, curve_zero, strict=True):
        assert abs(a - b) < 1e-5, key
    trained = adapter(one)
    assert_same_tensors(trained, adapter(run_dir), TOLERANCE)
    assert any(float(v.abs().max()) > 1e-4 for k, v in trained.items() if "lora_B" in k)  # it trained
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["processes"] == 2


def test_zero_checkpoints_hold_the_whole_trainable_state(one: Path, zero: tuple[int, Path, str]) -> None:
    # Every tensor whole (not one process's partition) and equal to the one-process run's at the same
    # step: the adapter, and AdamW's moments and step (keyed by parameter name, as under FSDP).
    stage, run_dir, _ = zero
    for step in ("step-00000002", "step-00000006"):
        a, b = one / "checkpoints" / step, run_dir / "checkpoints" / step
        assert_same_tensors(
            load_file(str(a / "adapter.safetensors")), load_file(str(b / "adapter.safetensors")), TOLERANCE
        )
        state_one = load_state(a / "optimizer.safetensors")["optimizer"]
        state_zero = load_state(b / "optimizer.safetensors")["optimizer"]
        names = state_zero["param_groups"][0]["params"]
        positions = state_one["param_groups"][0]["params"]
        assert len(names) == len(positions) > 0
        assert state_zero["param_groups"][0]["lr"] == pytest.approx(state_one["param_groups"][0]["lr"])
        for name, position in zip(names, positions, strict=True):
            for moment in ("exp_avg", "exp_avg_sq"):
                x, y = state_one["state"][position][moment], state_zero["state"][name][moment]
                assert x.shape == y.shape, name
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-9, msg=f"{name} {moment}")
            assert float(state_zero["state"][name]["step"]) == float(state_one["state"][position]["step"])
        assert json.loads((b / "checkpoint.json").read_text())["deepspeed_zero"] == stage


def test_zero_exports_equal_the_one_process_run(one: Path, zero: tuple[int, Path, str]) -> None:
    _, run_dir, _ = zero
    assert_same_tensors(
        load_file(str(one / "exports" / "peft" / "adapter_model.safetensors")),
        load_file(str(run_dir / "exports" / "peft" / "adapter_model.safetensors")),
        TOLERANCE,
    )
    merged = sorted((run_dir / "exports" / "merged").glob("*.safetensors"))
    assert merged
    for path in merged:
        assert_same_tensors(
            load_file(str(one / "exports" / "merged" / path.name)), load_file(str(path)), 1e-5
        )


def test_a_killed_zero_rank_resumes_to_the_same_adapter(zero: tuple[int, Path, str], tmp_path: Path) -> None:
    # Rank 1 is SIGKILLed in step 5 (after the step-4 checkpoint); the resumed run must end bitwise where
    # the uninterrupted run ended: each process's partition of the weights and AdamW state, and its RNG.
    stage, finished, _ = zero
    name = f"run.name={finished.name}"
    killed = launch(tmp_path, stage, name, fault=f"kill:micro={KILLED_AT}:rank=1")
    assert killed.returncode != 0
    run_dir = tmp_path / "runs" / finished.name
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert saved[-1] == "step-00000004", saved
    shutil.copytree(run_dir, tmp_path / "runs" / "on-one")  # for the resume on one process, below
    resumed = launch(tmp_path, stage, name, "--resume")
    assert resumed.returncode == 0, launch_errors(resumed)
    assert "step-00000004" in resumed.stdout
    assert_same_tensors(adapter(finished), adapter(run_dir), 0.0)
    assert logged_losses(run_dir) == logged_losses(finished)
    # The node is lost for good: the same checkpoint continues on one process (still under DeepSpeed)
    # with train.batch_size doubled, so each global micro-batch keeps its samples and the run ends where
    # the uninterrupted one ends (no dropout in this recipe; to float rounding: the sums are split anew).
    single = launch(tmp_path, stage, "run.name=on-one", "--resume", "train.batch_size=4", processes=1)
    assert single.returncode == 0, launch_errors(single)
    assert "on 1 process(es) instead of 2" in single.stdout
    assert_same_tensors(adapter(finished), adapter(tmp_path / "runs" / "on-one"), TOLERANCE)


@pytest.mark.parametrize("stage", [2, 3])
def test_accumulation_and_a_skipped_nan_step_match_one_process(
    stage: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Micro-batch 1 on each of 2 processes, 2 micro-batches a step, against one process with micro-batch
    # 2: the same samples per step. The first micro-batch of step 2 (micro 3) gets a NaN loss on one
    # process, so both runs skip step 2; DeepSpeed's engine must drop what it had accumulated (partly
    # reduced into the ZeRO partitions) for the runs to stay equal.
    steps = {"max_steps": 4, "batch_size": 1, "grad_accum_steps": 2, "on_nan": "skip"}
    zero = launch(tmp_path, stage, "run.name=zero", fault="nan:micro=3:rank=0", **steps)
    assert zero.returncode == 0, launch_errors(zero)
    assert (
        "DeepSpeed: the recipe's train.grad_accum_steps = 2 replaces the accelerate config's" in zero.stdout
    )
    monkeypatch.setenv("LORAPLUG_FAULT", "nan:micro=3")
    single = run_cli("run", recipe_in(tmp_path, **steps), "run.name=one", "train.batch_size=2")
    assert single.exit_code == 0, single.output
    for run in ("zero", "one"):
        rows = [
            json.loads(line) for line in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()
        ]
        assert any(r.get("skipped_nan_steps") == 1 for r in rows), run
    trained = adapter(tmp_path / "runs" / "one")
    assert_same_tensors(trained, adapter(tmp_path / "runs" / "zero"), TOLERANCE)
    assert all(bool(torch.isfinite(v).all()) for v in trained.values())


def test_samples_during_training_are_refused_under_zero3(tmp_path: Path) -> None:
    # They run the model on rank 0 alone; under ZeRO-3 that forward pass would wait for rank 1 forever.
    result = launch(tmp_path, 3, "eval.sample_every_n_steps=2")
    assert result.returncode != 0
    assert "DeepSpeed ZeRO-3 cannot do" in result.stdout + result.stderr
    assert "eval.sample_every_n_steps" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_zero_checkpoint_continues_under_ddp_to_the_same_adapter(
    zero: tuple[int, Path, str], tmp_path: Path
) -> None:
    # The engine can change on resume: a ZeRO checkpoint (optimizer state keyed by parameter name) read
    # by a 2-process DDP run (keyed by position), from step 2 to the end, ends where the ZeRO run ended.
    stage, finished, _ = zero
    run_dir = tmp_path / "runs" / finished.name
    shutil.copytree(finished, run_dir)
    for later in ("step-00000004", "step-00000006"):
        shutil.rmtree(run_dir / "checkpoints" / later)
    resumed = torchrun(recipe_in(tmp_path), f"run.name={finished.name}", "--resume", "--force", cwd=tmp_path)
    assert resumed.returncode == 0, launch_errors(resumed)
    assert (
        f"was written by a run under DeepSpeed ZeRO-{stage}; this run is neither"
        in resumed.stdout + resumed.stderr
    )
    assert_same_tensors(adapter(finished), adapter(run_dir), TOLERANCE)


def test_a_one_process_checkpoint_continues_under_zero3_on_two(one: Path, tmp_path: Path) -> None:
    # The other way, and onto more processes: one process's checkpoint at step 2 (keyed by position,
    # micro-batch 4) continues under ZeRO-3 on 2 processes of micro-batch 2 and ends where it ended.
    run_dir = tmp_path / "runs" / "one"
    shutil.copytree(one, run_dir)
    for later in ("step-00000004", "step-00000006"):
        shutil.rmtree(run_dir / "checkpoints" / later)
    resumed = launch(tmp_path, 3, "run.name=one", "--resume", "--force")
    assert resumed.returncode == 0, launch_errors(resumed)
    assert "on 2 process(es) instead of 1, train.batch_size 2" in resumed.stdout
    assert_same_tensors(adapter(one), adapter(run_dir), TOLERANCE)


def test_zero3_in_bf16_trains_like_one_process_in_bf16(tmp_path: Path) -> None:
    # DeepSpeed runs the model in bf16 with fp32 master weights; one process autocasts fp32 weights to
    # bf16: the same training, not the same rounding (measured 2.7e-3 on the adapter, values ~0.09).
    zero = launch(tmp_path, 3, "run.name=zero", "train.mixed_precision=bf16", precision="bf16")
    assert zero.returncode == 0, launch_errors(zero)
    one = run_cli(
        "run", recipe_in(tmp_path), "run.name=one", "train.batch_size=4", "train.mixed_precision=bf16"
    )
    assert one.exit_code == 0, one.output
    trained, theirs = adapter(tmp_path / "runs" / "zero"), adapter(tmp_path / "runs" / "one")
    assert all(v.dtype == torch.float32 for v in trained.values())  # the master weights, not bf16 copies
    assert_same_tensors(theirs, trained, 1e-2)
    val_zero, val_one = (
        logged_losses(tmp_path / "runs" / "zero")[-1],
        logged_losses(tmp_path / "runs" / "one")[-1],
    )
    assert val_zero[1] == "val_loss" and abs(val_zero[2] - val_one[2]) < 1e-3 * val_one[2]
    status = json.loads((tmp_path / "runs" / "zero" / "run.json").read_text())
    assert all(e["ok"] for e in status["exports"])


def test_deepspeed_asked_for_but_not_installed_is_one_clear_error(
    tmp_path: Path, toy_recipe_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `accelerate launch` sets for distributed_type: DEEPSPEED, on a machine without DeepSpeed
    # (None in sys.modules makes `import deepspeed` fail as if it were not installed).
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    result = run_cli("run", toy_recipe_file(train={"max_steps": 1}))
    assert result.exit_code != 0
    assert 'pip install "loraplug[deepspeed]"' in result.output and "Traceback" not in result.output
    assert "unexpected error" not in result.output
    assert not (tmp_path / "runs").exists()


def test_an_automatic_batch_size_is_measured_before_zero3_splits_the_model(tmp_path: Path) -> None:
    # batch_size = "auto" measures a worst-case micro-batch on the whole model (before prepare), so under
    # ZeRO-3 it chooses conservatively; the engine then gets the chosen size as its micro-batch.
    zero = launch(tmp_path, 3, "run.name=zero", 'train.batch_size="auto"')
    assert zero.returncode == 0, launch_errors(zero)
    assert "batch_size auto: 8 × 1 accumulation" in zero.stdout and "DeepSpeed ZeRO-3:" in zero.stdout
    status = json.loads((tmp_path / "runs" / "zero" / "run.json").read_text())
    assert status["status"] == "finished" and status["auto_batch"]["batch_size"] == 8
