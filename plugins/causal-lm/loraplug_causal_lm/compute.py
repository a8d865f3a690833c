"""The causal-LM loss and greedy generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loraplug import Batch, ModelBundle, Sample, StepResult
from loraplug_causal_lm.encode import IGNORE, Encoder
from loraplug_causal_lm.options import CausalLMOptions
from loraplug_causal_lm.pack import attention_implementation, packed_labels, packed_model_inputs


def forward(module: Any, batch: Batch) -> tuple[Any, Any, Any]:
    """``(logits, labels, real)`` of a padded or packed batch, laid out alike.

    ``real`` marks the positions that hold a token (not padding). Packed batches are fed with their
    per-sample position ids and a block-diagonal mask, so no sample attends to another.
    """
    inputs = batch.inputs
    if "segment_ids" in inputs:
        implementation = attention_implementation(module)
        logits = module(**packed_model_inputs(inputs, implementation), use_cache=False).logits
        labels = packed_labels(inputs, implementation)
        real = inputs["segment_ids"] >= 0
        return logits, labels, real if labels.shape == real.shape else real[real][None]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels")}
    logits = module(input_ids=inputs["input_ids"], use_cache=False, **extra).logits
    return logits, inputs["labels"], inputs["attention_mask"].bool()


def loss_sum(module: Any, batch: Batch) -> StepResult:
    """Cross-entropy summed over target tokens (labels are pre-shifted, so no shift here)."""
    import torch.nn.functional as F

    logits, labels, _ = forward(module, batch)
    targets = labels != IGNORE
    # Only target positions are upcast, which keeps float32 logits small for long prompts.
    loss = F.cross_entropy(logits[targets].float(), labels[targets], reduction="sum")
    return StepResult(loss_sum=loss, num_targets=int(targets.sum()))


def complete(model: ModelBundle, options: CausalLMOptions, conversations: Sequence[list[dict[str, str]]]) -> list[str]:
    """Greedy completions of the assistant's next turn, one per conversation."""
    import torch

    tokenizer = model.components["tokenizer"]
    encoder = Encoder(tokenizer, max_length=options.max_length, train_on_prompt=False)
    module = model.module
    device = next(module.parameters()).device
    texts = []
    for messages in conversations:
        ids = tokenizer(encoder.prompt_text(messages), add_special_tokens=False, return_tensors="pt").to(device)
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
