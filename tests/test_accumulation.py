"""Gradient accumulation equals one larger batch exactly, when micro-batches hold different numbers of targets.

The loop divides each micro-batch's summed loss by the target count of the whole accumulated batch.
Averaging per micro-batch instead (HF Trainer's old bug) weights the targets of sparse micro-batches
more, and this test catches it: with Adam's epsilon set large, an update is proportional to the
gradient, so any change in how targets are weighted shows in the weights. The toy regressor's rows
with ``"y": null`` have no target (as a prompt's tokens in a causal LM); the packed causal-LM case is
plugins/causal-lm/tests/test_packing.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from loraplug.testing import run_cli


def adapter_after(
    tmp_path: Path, toy_recipe_file, data: Path, name: str, batch_size: int, accumulation: int
) -> dict[str, torch.Tensor]:
    # 24 rows: three steps of 8, never crossing an epoch's end. No warmup, decay, clipping or dropout
    # blur the comparison.
    recipe = toy_recipe_file(
        run={"name": name},
        data={"path": str(data), "val_path": None},
        adapter={"dropout": 0.0},
        train={
            "max_steps": 3,
            "batch_size": batch_size,
            "grad_accum_steps": accumulation,
            "lr": 0.5,
            "eps": 1.0,
            "schedule": "constant",
            "max_grad_norm": 0,
        },
        eval={"sample_prompts": []},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return load_file(str(tmp_path / "runs" / name / "adapter" / "adapter.safetensors"))


def test_micro_batch_2_times_accumulation_4_equals_batch_8(
    tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of
) -> None:
    # Every third row has no target: a micro-batch of 2 holds 0, 1 or 2 targets.
    rows = [{**row, "y": None} if i % 3 == 0 else row for i, row in enumerate(toy_rows_of(24, seed=3))]
    assert (
        sum(row["y"] is None for row in rows) == 8
    )  # the point: very different target counts per micro-batch
    data = jsonl_file("accumulation.jsonl", rows)
    big = adapter_after(tmp_path, toy_recipe_file, data, "batch8", 8, 1)
    accumulated = adapter_after(tmp_path, toy_recipe_file, data, "micro2x4", 2, 4)
    assert big.keys() == accumulated.keys()
    moved = max(float(big[k].abs().max()) for k in big if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-4, atol=1e-6, msg=key)
