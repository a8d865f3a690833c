"""Packing: the loss of packed rows equals the loss of the same samples padded, no sample sees
another, and gradient accumulation stays exact with packed rows."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from loraplug.testing import run_cli
from loraplug_causal_lm.testing import adapter_for_exactness


def _model_and_encoder(attention: str):
    from loraplug_causal_lm.encode import Encoder
    from loraplug_causal_lm.model import load_causal_lm
    from loraplug_causal_lm.options import CausalLMOptions

    options = CausalLMOptions(pretrained="tiny-llama", dtype="float32", attn_implementation=attention)
    model, tokenizer = load_causal_lm(options, Path(os.environ["LORAPLUG_CACHE"]))
    return model, tokenizer, Encoder(tokenizer, max_length=256, train_on_prompt=False)


def _samples(encoder, rows):
    return [
        encoder.encode(
            {"id": f"s{i}", "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        )
        for i, (p, r) in enumerate(rows)
    ]


ROWS = [
    ("rain?", "yes, rain all day long"),
    ("wind", "calm"),
    ("fog over the harbour tonight?", "thick fog, 200 m"),
    ("sun", "sunny and 24 degrees"),
]


# flex_attention runs forward-only here (PyTorch has no FlexAttention backward on the CPU); its first
# call compiles the kernel (~15 s).
@pytest.mark.parametrize(
    "attention", ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.slow)]
)
def test_packed_loss_equals_padded_loss(attention: str) -> None:
    from loraplug_causal_lm.compute import loss_sum
    from loraplug_causal_lm.encode import PadCollator
    from loraplug_causal_lm.pack import PackedCollator, pack

    model, tokenizer, encoder = _model_and_encoder(attention)
    samples = _samples(encoder, ROWS)
    rows = pack(samples, 64)
    assert len(rows) < len(samples)  # several samples do share a row
    with torch.no_grad():
        padded = loss_sum(model, PadCollator(tokenizer.pad_token_id)(samples))
        packed = loss_sum(model, PackedCollator(tokenizer.pad_token_id)(rows))
    assert packed.num_targets == padded.num_targets
    assert float(packed.loss_sum) > 1.0
    assert abs(float(packed.loss_sum) - float(padded.loss_sum)) / padded.num_targets <= 1e-5


def test_a_sample_does_not_see_the_sample_before_it_in_its_row() -> None:
    from loraplug_causal_lm.compute import loss_sum
    from loraplug_causal_lm.encode import IGNORE
    from loraplug_causal_lm.pack import PackedCollator, PackedRow

    model, tokenizer, encoder = _model_and_encoder("sdpa")
    first, other_first, second = _samples(encoder, [ROWS[0], ROWS[2], ROWS[3]])
    collate = PackedCollator(tokenizer.pad_token_id)

    def second_only(row_first):
        # the loss of the second sample alone: the first sample's labels are masked out
        masked = type(row_first)(
            row_first.id, row_first.input_ids, [IGNORE] * len(row_first.labels), False, 0
        )
        with torch.no_grad():
            return float(loss_sum(model, collate([PackedRow([masked, second])])).loss_sum)

    assert second_only(first) == pytest.approx(second_only(other_first), abs=1e-5)


def test_packing_is_on_by_default_and_reported(lm_recipe) -> None:
    result = run_cli(
        "run",
        lm_recipe(model={"max_length": 256}, train={"max_steps": 1}, export=[], eval={"sample_prompts": []}),
    )
    assert result.exit_code == 0, result.output
    match = re.search(r"packing: (\d+) samples in (\d+) rows", result.stdout)
    assert match and int(match[2]) < int(match[1]), result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="FlexAttention trains on CUDA")
def test_flex_attention_on_the_cpu_is_refused_before_training(lm_recipe) -> None:
    recipe = lm_recipe(model={"attn_implementation": "flex_attention"}, train={"max_steps": 1}, export=[])
    result = run_cli("run", recipe)
    assert result.exit_code == 2, result.output
    assert 'model.attn_implementation = "flex_attention" cannot train on this machine' in result.stderr
    assert "no FlexAttention backward on the CPU" in result.stderr
    assert "Traceback" not in result.output


def test_packing_true_with_balancing_is_an_error(lm_recipe, jsonl_file, chat_rows) -> None:
    rows = [{**r, "label": "a" if i % 4 else "b"} for i, r in enumerate(chat_rows(16))]
    recipe = lm_recipe(
        data={"path": str(jsonl_file("l.jsonl", rows)), "balance_by": "label"},
        model={"packing": True},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 2
    assert "model.packing = true, but data.balance_by" in result.stderr


def _packed_adapter(
    tmp_path: Path, lm_recipe, data: Path, name: str, batch_size: int, accumulation: int
) -> dict[str, torch.Tensor]:
    # 16 rows: two steps of 8 rows, exactly one epoch
    weights, status = adapter_for_exactness(
        tmp_path,
        lm_recipe,
        data,
        name,
        batch_size=batch_size,
        accumulation=accumulation,
        max_steps=2,
        packing=True,
    )
    assert status["data"]["packed rows"] == 16
    return weights


def test_accumulation_stays_exact_with_packing(tmp_path: Path, lm_recipe, jsonl_file) -> None:
    # 16 long and 16 short samples of different lengths: best-fit packs one long and one short per
    # 256-token row, so the rows' target counts differ and a per-micro-batch mean would show.
    rows = []
    for i in range(16):
        rows.append({"prompt": f"long {i} " + "x" * (30 + i), "response": "y" * (90 + 3 * i)})
        rows.append({"prompt": f"short {i}", "response": "z" * (20 + 2 * i)})
    data = jsonl_file("packing.jsonl", rows)
    big = _packed_adapter(tmp_path, lm_recipe, data, "rows8", 8, 1)
    accumulated = _packed_adapter(tmp_path, lm_recipe, data, "rows2x4", 2, 4)
    assert max(float(big[k].abs().max()) for k in big if "lora_B" in k) > 1e-3
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-4, atol=1e-6, msg=key)
