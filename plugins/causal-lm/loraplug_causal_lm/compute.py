"""The causal-LM loss and greedy generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from loraplug import Batch, LoraplugError, ModelBundle, Sample, StepResult
from loraplug_causal_lm.chunked_loss import (
    ChunkSetting,
    chunk_tokens,
    fused_cross_entropy,
    head_of,
    last_hidden_state,
    loss_kernel,
    target_cross_entropy,
)
from loraplug_causal_lm.encode import IGNORE, Encoder
from loraplug_causal_lm.options import CausalLMOptions
from loraplug_causal_lm.pack import attention_implementation, packed_labels, packed_model_inputs


def model_inputs(module: Any, batch: Batch) -> tuple[dict[str, Any], Any, Any]:
    """``(keyword arguments for the model, labels, real)`` of a padded or packed batch, laid out alike.

    ``real`` marks the positions that hold a token (not padding). Packed batches are fed with their
    per-sample position ids and a block-diagonal mask, so no sample attends to another.
    """
    inputs = batch.inputs
    if "segment_ids" in inputs:
        implementation = attention_implementation(module)
        labels = packed_labels(inputs, implementation)
        real = inputs["segment_ids"] >= 0
        return (
            packed_model_inputs(inputs, implementation),
            labels,
            real if labels.shape == real.shape else real[real][None],
        )
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels")}
    return {"input_ids": inputs["input_ids"], **extra}, inputs["labels"], inputs["attention_mask"].bool()


def forward(module: Any, batch: Batch) -> tuple[Any, Any, Any]:
    """``(logits, labels, real)`` of a padded or packed batch, laid out alike (see :func:`model_inputs`)."""
    kwargs, labels, real = model_inputs(module, batch)
    return module(**kwargs, use_cache=False).logits, labels, real


def loss_sum(
    module: Any,
    batch: Batch,
    chunk_setting: ChunkSetting = 0,
    warn: Callable[[str], None] | None = None,
    info: Callable[[str], None] | None = None,
) -> StepResult:
    """Cross-entropy summed over target tokens (labels are pre-shifted, so no shift here).

    ``chunk_setting`` is ``model.loss_chunk_tokens``: with a number of tokens, or ``"auto"`` on a
    micro-batch whose logits would be large, the output head is applied a chunk of target tokens at a
    time and the full logits never exist (:mod:`loraplug_causal_lm.chunked_loss`); 0 computes them.
    ``"auto"`` uses a fused kernel (torch's or Liger's) where one applies; ``info`` hears which, once.
    """
    import torch.nn.functional as F

    kwargs, labels, _ = model_inputs(module, batch)
    targets = labels != IGNORE
    chunk = loss_chunk(module, chunk_setting, labels.numel(), warn)
    if chunk:
        head = head_of(module)
        hidden, autocast = last_hidden_state(module, head, kwargs)
        kernel = loss_kernel(head, hidden, autocast, chunk_setting, chunk, info)
        if kernel == "chunks":
            loss = target_cross_entropy(head, hidden, labels, chunk, autocast)
        else:
            loss = fused_cross_entropy(kernel, head, hidden, labels, chunk, autocast)
        return StepResult(loss_sum=loss, num_targets=int(targets.sum()))
    logits = module(**kwargs, use_cache=False).logits
    # Only target positions are upcast, which keeps float32 logits small for long prompts.
    loss = F.cross_entropy(logits[targets].float(), labels[targets], reduction="sum")
    return StepResult(loss_sum=loss, num_targets=int(targets.sum()))


def loss_chunk(module: Any, setting: ChunkSetting, positions: int, warn: Callable[[str], None] | None) -> int:
    """Target tokens per chunk of this micro-batch's loss, or 0 for the plain path (said once when it must be)."""
    if setting == 0:
        return 0
    chunk = chunk_tokens(setting, positions, head_of(module, checked=False).vocab)
    head = head_of(module) if chunk else None  # checked on the model only when a chunked step is asked for
    if head is None or head.problem is None:
        return chunk
    if setting != "auto":
        raise LoraplugError(
            f"model.loss_chunk_tokens = {setting}, but the loss of this model cannot be chunked exactly: {head.problem}",
            where="model.loss_chunk_tokens",
            fix='Remove model.loss_chunk_tokens (or set it to "auto"): the loss is then computed on the full logits where chunking is not exact',
        )
    if not head.warned and warn is not None:
        warn(
            f"model.loss_chunk_tokens: the loss is computed on the full logits, not in chunks: {head.problem}"
        )
    head.warned = True
    return 0


def complete(
    model: ModelBundle, options: CausalLMOptions, conversations: Sequence[list[dict[str, str]]]
) -> list[str]:
    """Greedy completions of the assistant's next turn, one per conversation."""
    import torch

    tokenizer = model.components["tokenizer"]
    encoder = Encoder(tokenizer, max_length=options.max_length, train_on_prompt=False)
    module = model.module
    device = next(module.parameters()).device
    texts = []
    for messages in conversations:
        ids = tokenizer(encoder.prompt_text(messages), add_special_tokens=False, return_tensors="pt").to(
            device
        )
        with torch.no_grad():
            out = module.generate(
                **ids,
                max_new_tokens=options.sample_max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return texts


def generate(model: ModelBundle, options: CausalLMOptions, prompts: Sequence[str]) -> list[Sample]:
    texts = complete(model, options, [[{"role": "user", "content": p}] for p in prompts])
    return [Sample(prompt=prompt, text=text) for prompt, text in zip(prompts, texts, strict=True)]
