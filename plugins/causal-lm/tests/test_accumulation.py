"""Gradient accumulation equals one larger batch exactly, on sequences of different lengths.

The loop divides each micro-batch's summed loss by the target count of the whole accumulated batch
(the core's side: tests/test_accumulation.py, on the toy regressor). This is the causal LM's side: its
train_step sums the loss over the target tokens and counts them, so short and long sequences are
weighted per token. Averaging per micro-batch instead (HF Trainer's old bug) weights short sequences'
tokens more, and this test catches it: with Adam's epsilon set large, an update is proportional to the
gradient, so any change in how tokens are weighted shows in the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loraplug_causal_lm.testing import adapter_for_exactness


def adapter_after(
    tmp_path: Path, lm_recipe, data: Path, name: str, batch_size: int, accumulation: int
) -> dict[str, torch.Tensor]:
    # 24 samples: three steps of 8, never crossing an epoch's end. Padded micro-batches of single
    # samples; the packed case is plugins/causal-lm/tests/test_packing.py.
    weights, _ = adapter_for_exactness(
        tmp_path,
        lm_recipe,
        data,
        name,
        batch_size=batch_size,
        accumulation=accumulation,
        max_steps=3,
        packing=False,
    )
    return weights


def test_micro_batch_2_times_accumulation_4_equals_batch_8(
    tmp_path: Path, lm_recipe, jsonl_file, chat_rows
) -> None:
    rows = chat_rows(24, seed=3)
    lengths = sorted(len(r["response"]) for r in rows)
    assert lengths[-1] > 3 * lengths[0]  # the point: very different target counts per micro-batch
    data = jsonl_file("accumulation.jsonl", rows)
    big = adapter_after(tmp_path, lm_recipe, data, "batch8", 8, 1)
    accumulated = adapter_after(tmp_path, lm_recipe, data, "micro2x4", 2, 4)
    assert big.keys() == accumulated.keys()
    moved = max(float(big[k].abs().max()) for k in big if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-4, atol=1e-6, msg=key)
