"""The chunked loss (model.loss_chunk_tokens): the same loss and gradients as the full logits, with the
output head never applied to more than one chunk of tokens.

Tolerance: float32 rounding. Both paths run the same head on the same hidden states and the same
float32 cross-entropy per token; only the order of the sums differs (per chunk, then across chunks;
the head's weight gradient is a sum over chunks instead of one matmul over all positions). Reordering
a float32 sum of n terms moves it by up to about n·2⁻²⁴ of its magnitude; with tens of target tokens
that is ~1e-6 relative, measured ~1e-7 for the loss and ~1e-6 for the gradients, hence rtol 1e-5
(and atol 1e-6 of the gradient's own scale, for entries that are nearly zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug import Batch, LoraplugError
from loraplug.testing import run_cli
from loraplug_causal_lm.testing import adapter_for_exactness

VOCAB = 300
CHUNK = 7  # does not divide the target count: the last chunk is short
#: Each family's own names for a 2-layer, 32-wide model (bench/onnx_families.py's pattern).
DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "opt": {
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "word_embed_proj_dim": 32,
    },
    "gpt_neox": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4},
    "falcon": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
    "mixtral": {
        **DECODER,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
    },  # top-2: the router has a gradient
    # Small caps and scales, so a transform left out would change the loss far beyond rounding.
    "gemma2": {**DECODER, "head_dim": 8, "final_logit_softcapping": 0.5},
    "gemma3_text": {**DECODER, "head_dim": 8, "final_logit_softcapping": 0.5},
    "cohere": {**DECODER, "logit_scale": 3.0},
    "granite": {**DECODER, "logits_scaling": 0.25},
}
FAMILIES = [
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "opt",
    "falcon",
    "bloom",
    "cohere",
    "granite",
]


def tiny_model(family: str = "llama", *, modules_to_save: bool = False, tie: bool = False) -> Any:
    """A 2-layer model of ``family`` with random weights and a LoRA whose B is not zero (so every
    adapter weight has a gradient), optionally training the output head in full."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {"max_position_embeddings": 64, **CONFIGS.get(family, DECODER)}
    config = AutoConfig.for_model(
        family, vocab_size=VOCAB, pad_token_id=0, tie_word_embeddings=tie, **settings
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    head = model.get_output_embeddings()
    name = next(n for n, m in model.named_modules() if m is head)
    adapter = LoraConfig(
        r=4,
        target_modules="all-linear",
        init_lora_weights=False,
        modules_to_save=[name] if modules_to_save else None,
    )
    # Eval mode: dropout (gpt2 and opt have it by default) would draw differently in the two paths.
    return get_peft_model(model, adapter).eval()


def padded_batch() -> Batch:
    """Three rows of 20 tokens: prompts masked, the last row padded — 38 targets."""
    from loraplug_causal_lm.encode import IGNORE

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 20), generator=generator)
    labels = torch.randint(1, VOCAB, (3, 20), generator=generator)
    labels[:, :6] = IGNORE
    labels[2, 15:] = IGNORE
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[2, 15:] = 0
    targets = int((labels != IGNORE).sum())
    return Batch(
        inputs={"input_ids": ids, "attention_mask": mask, "labels": labels},
        num_targets=targets,
        num_tokens=55,
    )


def packed_batch() -> Batch:
    from loraplug_causal_lm.encode import IGNORE, Encoded
    from loraplug_causal_lm.pack import PackedCollator, PackedRow

    def sample(n: int, prompt: int, seed: int) -> Encoded:
        ids = torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
        return Encoded(f"s{seed}", ids, [IGNORE] * prompt + ids[prompt + 1 :] + [IGNORE], False, n)

    rows = [PackedRow([sample(9, 3, 1), sample(11, 4, 2)]), PackedRow([sample(14, 5, 3)])]
    return PackedCollator(0)(rows)


def loss_and_gradients(model: Any, batch: Batch, chunk: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from loraplug_causal_lm.compute import loss_sum

    model.zero_grad(set_to_none=True)
    result = loss_sum(model, batch, chunk)
    assert result.num_targets == batch.num_targets
    result.loss_sum.backward()
    return result.loss_sum.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
    }


def head_rows(model: Any) -> list[int]:
    """Records how many positions each call of the output head projects (after the one-time check)."""
    from loraplug_causal_lm.chunked_loss import head_of

    head_of(model)  # the check on a few tokens, before the first chunked step
    rows: list[int] = []
    model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].shape[:-1].numel())
    )
    return rows


def assert_same(
    plain: tuple[torch.Tensor, dict[str, torch.Tensor]], chunked: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-5, atol=0)
    assert plain[1].keys() == chunked[1].keys()
    for name, gradient in plain[1].items():
        assert float(gradient.abs().max()) > 0, name  # every trainable weight does learn here
        scale = float(gradient.abs().max())
        torch.testing.assert_close(chunked[1][name], gradient, rtol=1e-5, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("modules_to_save", [False, True], ids=["lora", "lm_head-trained-in-full"])
@pytest.mark.parametrize("batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_chunked_loss_and_gradients_equal_the_full_logits(modules_to_save: bool, batch: Any) -> None:
    model = tiny_model(modules_to_save=modules_to_save)
    data = batch()
    plain = loss_and_gradients(model, data, 0)
    rows = head_rows(model)
    chunked = loss_and_gradients(model, data, CHUNK)
    assert_same(plain, chunked)
    # The head never projected more than one chunk, and projected every target twice: in the forward and
    # again in the backward (its logits were not kept); the model's own call projects one position per row.
    assert rows and max(rows) <= CHUNK
    assert sum(rows) == 2 * data.num_targets + data.inputs["input_ids"].shape[0]
    if modules_to_save:
        assert any("modules_to_save" in name for name in plain[1])


def test_tied_embeddings_get_the_same_gradient() -> None:
    model = tiny_model(tie=True)
    model.get_input_embeddings().weight.requires_grad_(True)  # the one matrix is both embedding and head
    data = padded_batch()
    assert_same(loss_and_gradients(model, data, 0), loss_and_gradients(model, data, CHUNK))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_chunks_exactly(family: str) -> None:
    # A number of tokens is an error where the chunked loss would not be exact, so this fails for a
    # family whose logits are not its head's output as chunked_loss transforms it.
    model = tiny_model(family)
    data = padded_batch()
    rows = head_rows(model)
    chunked = loss_and_gradients(model, data, CHUNK)
    assert max(rows) <= CHUNK
    assert_same(loss_and_gradients(model, data, 0), chunked)


def test_mixed_precision_rounds_as_the_full_logits() -> None:
    # accelerate's bf16 wraps the model's forward in autocast (as the training loop prepares it): the head
    # runs in bf16 inside the forward, and outside it the chunks must replay that state. Computed in
    # float32 instead, the loss would differ by ~1e-5 relative; here only by the order of the sums.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # as loraplug.pipeline does before each run
    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(tiny_model())
        data = padded_batch()
        plain = loss_and_gradients(model, data, 0)
        chunked = loss_and_gradients(model, data, CHUNK)
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-6, atol=0)


def test_no_gradient_no_checkpoint() -> None:
    from loraplug_causal_lm.compute import loss_sum

    model = tiny_model()
    data = padded_batch()
    with torch.no_grad():
        plain, chunked = loss_sum(model, data, 0), loss_sum(model, data, CHUNK)
    torch.testing.assert_close(chunked.loss_sum, plain.loss_sum, rtol=1e-5, atol=0)


def test_a_batch_without_targets_still_has_a_loss_to_backpropagate() -> None:
    from loraplug_causal_lm.encode import IGNORE

    model = tiny_model()
    data = padded_batch()
    data.inputs["labels"] = torch.full_like(data.inputs["labels"], IGNORE)
    data.num_targets = 0
    loss, _ = loss_and_gradients(model, data, CHUNK)
    assert float(loss) == 0.0


def _logits_doubled(model: Any) -> Any:
    """A model whose forward changes its logits after the head in a way chunked_loss does not know."""

    def double(_module: Any, _args: Any, output: Any) -> Any:
        output.logits = output.logits * 2
        return output

    model.get_base_model().register_forward_hook(double)
    return model


def test_unknown_logit_transform_with_a_chunk_size_is_an_error() -> None:
    from loraplug_causal_lm.compute import loss_sum

    model = _logits_doubled(tiny_model())
    with pytest.raises(LoraplugError) as error:
        loss_sum(model, padded_batch(), CHUNK)
    assert error.value.where == "model.loss_chunk_tokens"
    assert "changes the logits after its output head" in error.value.what


def test_auto_chunks_large_logits_only_and_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraplug_causal_lm import chunked_loss
    from loraplug_causal_lm.compute import loss_sum

    data = padded_batch()  # 60 positions × 300 words = 18,000 logits
    model = tiny_model()
    rows = head_rows(model)
    loss_sum(model, data, "auto")
    assert max(rows) == 60  # small logits: the plain path
    monkeypatch.setattr(chunked_loss, "AUTO_ABOVE", 17_999)
    monkeypatch.setattr(chunked_loss, "CHUNK_NUMBERS", 10 * VOCAB)
    rows.clear()
    loss_sum(model, data, "auto")
    assert max(rows) == 10  # chunks of CHUNK_NUMBERS ÷ vocabulary tokens

    odd = _logits_doubled(tiny_model())
    warnings: list[str] = []
    plain = loss_sum(odd, data, 0).loss_sum
    for _ in range(2):
        auto = loss_sum(odd, data, "auto", warn=warnings.append).loss_sum
        assert float(auto) == float(plain)
    assert len(warnings) == 1 and "computed on the full logits" in warnings[0], warnings


@pytest.mark.parametrize("value", ['"512"', "-1", "true", "16.0", '"off"'])
def test_loss_chunk_tokens_is_checked_strictly(lm_recipe: Any, value: str) -> None:
    recipe = lm_recipe()
    text = recipe.read_text().replace(
        'kind = "causal-lm"', f'kind = "causal-lm"\nloss_chunk_tokens = {value}'
    )
    recipe.write_text(text)
    result = run_cli("recipe", "check", recipe)
    assert result.exit_code != 0
    assert "loss_chunk_tokens" in result.output + result.stderr


def test_accumulation_stays_exact_with_a_chunked_loss(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole loop: one micro-batch of 8 on the full logits against 4 micro-batches of 2 in chunks of
    # 7 tokens, the output head trained in full as the quickstart does. Samples of different lengths, so
    # a per-micro-batch mean would show.
    from loraplug_causal_lm import compute

    chunk_sizes: list[int] = []  # of every chunked loss the runs compute
    chunked_loss = compute.target_cross_entropy

    def recorded(*args: Any, **kwargs: Any) -> Any:
        chunk_sizes.append(args[3])
        return chunked_loss(*args, **kwargs)

    monkeypatch.setattr(compute, "target_cross_entropy", recorded)
    rows = [{"prompt": f"q{i} " + "x" * (3 + 5 * i), "response": "y" * (4 + 9 * (i % 5))} for i in range(16)]
    data = jsonl_file("chunked.jsonl", rows)

    def recipe(chunk: int) -> Any:
        def write(**changes: Any) -> Any:
            changes["model"] = {**changes.get("model", {}), "loss_chunk_tokens": chunk}
            changes["adapter"] = {**changes.get("adapter", {}), "modules_to_save": ["lm_head"]}
            return lm_recipe(**changes)

        return write

    plain, _ = adapter_for_exactness(
        tmp_path, recipe(0), data, "plain8", batch_size=8, accumulation=1, max_steps=2, packing=False
    )
    assert chunk_sizes == []  # 0: the full logits
    chunked, _ = adapter_for_exactness(
        tmp_path, recipe(7), data, "chunked2x4", batch_size=2, accumulation=4, max_steps=2, packing=False
    )
    assert len(chunk_sizes) >= 8 and set(chunk_sizes) == {7}  # the recipe's setting reached every micro-batch
    assert any("lm_head" in key for key in plain)
    assert max(float(plain[k].abs().max()) for k in plain if "lora_B" in k) > 1e-3
    for key in plain:
        torch.testing.assert_close(chunked[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


# --- the fused kernels ("auto" where the head is a plain weight matrix) --------------------------------


def auto_chunks(monkeypatch: pytest.MonkeyPatch, tokens: int = CHUNK) -> None:
    """``"auto"`` chunks even the tiny test batches, ``tokens`` at a time."""
    from loraplug_causal_lm import chunked_loss

    monkeypatch.setattr(chunked_loss, "AUTO_ABOVE", 0)
    monkeypatch.setattr(chunked_loss, "CHUNK_NUMBERS", tokens * VOCAB)


def kernel_of(model: Any, batch: Batch) -> tuple[str, str | None]:
    from loraplug_causal_lm.chunked_loss import fused_kernel, head_of, last_hidden_state
    from loraplug_causal_lm.compute import model_inputs

    head = head_of(model)
    hidden, autocast = last_hidden_state(model, head, model_inputs(model, batch)[0])
    return fused_kernel(head, hidden, autocast)


@pytest.mark.parametrize("batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_auto_uses_torchs_fused_kernel_with_the_same_loss_and_gradients(
    batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LoRA on every linear layer but the head: the head is a plain Linear, so "auto" hands the loss to
    # torch.nn.functional.linear_cross_entropy (gradients computed in its forward), in chunks of 7 rows.
    import torch.nn.functional as F

    auto_chunks(monkeypatch)
    model = tiny_model()
    data = batch()
    plain = loss_and_gradients(model, data, 0)
    chunk_sizes: list[int] = []
    fused = F.linear_cross_entropy

    def recorded(*args: Any, **kwargs: Any) -> Any:
        chunk_sizes.append(kwargs["options"].batch_chunk_size)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "linear_cross_entropy", recorded)
    assert kernel_of(model, data) == ("torch", None)
    assert_same(plain, loss_and_gradients(model, data, "auto"))
    assert chunk_sizes == [CHUNK]


def test_torchs_fused_kernel_with_a_bias_and_a_trained_tied_head(monkeypatch: pytest.MonkeyPatch) -> None:
    # The head's bias and weight get their gradients from the kernel too (tied: the embedding's as well).
    auto_chunks(monkeypatch)
    model = tiny_model(tie=True)
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.linspace(-1, 1, VOCAB))
    head.weight.requires_grad_(True)
    data = padded_batch()
    assert kernel_of(model, data) == ("torch", None)
    plain = loss_and_gradients(model, data, 0)
    fused = loss_and_gradients(model, data, "auto")
    assert any(name.endswith("lm_head.bias") for name in plain[1])
    assert_same(plain, fused)


def test_auto_keeps_the_checkpointed_chunks_where_no_fused_kernel_applies() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    data = padded_batch()
    kernel, why = kernel_of(tiny_model(modules_to_save=True), data)
    assert kernel == "chunks" and "ModulesToSaveWrapper" in str(why)
    kernel, why = kernel_of(tiny_model("gemma2"), data)
    assert kernel == "chunks" and "soft-capping" in str(why)
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(tiny_model())
        kernel, why = kernel_of(model, data)
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)
    assert kernel == "chunks" and "autocast" in str(why)


def test_liger_is_chosen_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether or not liger-kernel is installed, a CPU tensor gets torch's kernel (Liger needs Triton on CUDA).
    from loraplug_causal_lm import chunked_loss

    class Importable:  # stands for LigerFusedLinearCrossEntropyLoss having imported
        pass

    monkeypatch.setattr(chunked_loss, "_liger_loss", lambda: Importable)
    assert kernel_of(tiny_model(), padded_batch()) == ("torch", None)


def test_the_run_log_names_the_loss_kernel(lm_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    auto_chunks(monkeypatch, 16)
    result = run_cli("run", lm_recipe(train={"max_steps": 1}), "--overwrite")
    assert result.exit_code == 0, result.output + result.stderr
    lines = [line for line in result.output.splitlines() if line.startswith("loss: ")]
    assert len(lines) == 1, result.output  # said once, not every step
    assert "torch.nn.functional.linear_cross_entropy" in lines[0] and "no fused kernel" not in lines[0]
