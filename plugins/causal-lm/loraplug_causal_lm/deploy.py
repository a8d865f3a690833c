"""The causal LM as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

Built once per run by ``loraplug_deployable`` (``ctx.deployable(model)``): ``merged`` here and the
exporters of other plugins (``onnx``, the quantized kinds) all use it, so the adapter is merged and
checked against the trained model once. Imported by hook bodies only (it imports torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from loraplug import Batch, Deployable, ModelBundle, RunContext
from loraplug_causal_lm.export import _probe_logits
from loraplug_causal_lm.merge import measure_merge, merged_model
from loraplug_causal_lm.options import CausalLMOptions
from loraplug_causal_lm.quiet import quiet_libraries

#: transformers model types whose traced export bench/onnx_families.py verifies (tiny configs, parity
#: below 1e-6; docs/formats.md has the table). Others are exported only when the exporter is told to try.
VERIFIED_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
    "gpt_neox",
    "opt",
)
EXPORT_SHAPE = (2, 8)
#: Another batch size and length than the export's, and one right-padded row, so a check on them proves
#: a graph's axes are dynamic and the attention mask is honoured.
PARITY_SHAPE = (3, 13)
PADDED = 4


def probe(module: Any, inputs: dict[str, Any]) -> Any:
    """The logits alone, without the KV cache: one graph for every length."""
    return module(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
    ).logits.float()


def token_inputs(
    vocab: int, shape: tuple[int, int], generator: torch.Generator, padded: int = 0
) -> dict[str, Any]:
    """Random token ids of ``shape`` with an attention mask; the first row's last ``padded`` positions masked."""
    input_ids = torch.randint(0, vocab, shape, generator=generator)
    attention_mask = torch.ones(shape, dtype=torch.long)
    if padded:
        attention_mask[0, -padded:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def graph_inputs(
    vocab: int, generator: torch.Generator
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[int, Any]]]:
    """``(inputs, check_inputs, dynamic_shapes)``: traced at EXPORT_SHAPE, checked at PARITY_SHAPE, batch and
    sequence dynamic."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    inputs = token_inputs(vocab, EXPORT_SHAPE, generator)
    check_inputs = token_inputs(vocab, PARITY_SHAPE, generator, padded=PADDED)
    return (
        inputs,
        check_inputs,
        {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
    )


def _on(module: Any, batch: Batch) -> Batch:
    device = next(module.parameters()).device
    return replace(
        batch, inputs={k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.inputs.items()}
    )


@torch.no_grad()
def batch_logits(module: Any, batch: Batch) -> Any:
    """The logits at every real (unpadded) position of a batch of the run's prepared data, on the CPU."""
    from loraplug_causal_lm.compute import forward

    logits, _, real = forward(module, _on(module, batch))
    return logits.float().cpu()[real.cpu()]


@torch.no_grad()
def perplexity(module: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """exp(mean cross-entropy) over the target tokens, as the run's validation loss counts them."""
    from loraplug_causal_lm.compute import loss_sum

    total, targets = 0.0, 0
    for batch in batches:
        result = loss_sum(module, _on(module, batch))
        total += float(result.loss_sum)
        targets += result.num_targets
    return {"perplexity": math.exp(total / max(targets, 1))}


def from_pretrained(path: Path | str, **kwargs: Any) -> Any:
    quiet_libraries()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def _unverified(base: Any) -> str | None:
    family = getattr(base.config, "model_type", "?")
    if family in VERIFIED_FAMILIES:
        return None
    return f"the model family {family!r} ({type(base).__name__}); the families it verifies are {', '.join(VERIFIED_FAMILIES)}"


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """The trained model merged into a freshly loaded float32 base, checked against the trained model."""
    from loraplug_causal_lm.quantized import compute_dtype

    options = ctx.recipe.model.options
    assert isinstance(options, CausalLMOptions)  # noqa: S101
    merged = merged_model(model, ctx)
    tokenizer = merged.tokenizer
    check = measure_merge(merged, model.module, lambda m: _probe_logits(m, tokenizer))
    module = merged.module
    base = model.module.get_base_model() if hasattr(model.module, "get_base_model") else model.module
    inputs, check_inputs, dynamic_shapes = graph_inputs(
        int(module.config.vocab_size), torch.Generator().manual_seed(ctx.seed)
    )

    def save_beside(directory: Path) -> None:
        module.config.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))

    return Deployable(
        module=module,
        inputs=inputs,
        check_inputs=check_inputs,
        probe=probe,
        output="logits",
        what=f"the merged {getattr(base.config, 'model_type', '?')} model",
        dynamic_shapes=dynamic_shapes,
        value_name="logit",
        dtype=merged.trained_dtype,
        compute_dtype=compute_dtype(options),
        save_beside=save_beside,
        from_pretrained=from_pretrained,
        loads_with="AutoModelForCausalLM.from_pretrained(path)",
        batch_outputs=batch_logits,
        score=perplexity,
        merge_check=check,
        export_unverified=_unverified(base),
        notes=list(merged.notes),
    )
