"""What every sequence classifier built on a transformers decoder shares, for its training batches and its
deployable view (:class:`loraplug.Deployable`): right-padded rows, the logits every export is compared by,
example token inputs, the merged float32 copy, and the figures a quantized copy is compared with.

Imports torch (import this module from hook bodies, not at a plugin's start-up); never transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from loraplug import Batch

__all__ = [
    "batch_logits",
    "classification_scores",
    "classifier_logits",
    "logit_difference",
    "merged_classifier",
    "pad_right",
    "token_inputs",
]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded on the right with ``pad_id`` to the longest."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def classifier_logits(module: Any, inputs: dict[str, Any]) -> Any:
    """The class logits in float32, one row per text: a classifier's ``Deployable.probe``."""
    return module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()


def token_inputs(
    vocab: int, pad_id: int, shape: tuple[int, int], generator: torch.Generator, padded: int = 0
) -> dict[str, Any]:
    """Random ids that are never the pad id (a decoder classifier finds a text's end by it), with their
    attention mask; the first row's last ``padded`` positions padded as :func:`pad_right` pads them."""
    input_ids = torch.randint(0, vocab, shape, generator=generator)
    input_ids[input_ids == pad_id] = (pad_id + 1) % vocab
    attention_mask = torch.ones(shape, dtype=torch.long)
    if padded:
        input_ids[0, -padded:] = pad_id
        attention_mask[0, -padded:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def batch_logits(module: Any, batch: Batch) -> Any:
    """The logits of a batch of the run's prepared data, on the CPU: a classifier's ``Deployable.batch_outputs``."""
    device = next(module.parameters()).device
    inputs = {name: batch.inputs[name].to(device) for name in ("input_ids", "attention_mask")}
    return classifier_logits(module, inputs).cpu()


@torch.no_grad()
def classification_scores(module: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Accuracy and mean cross-entropy over labelled batches (``labels``): a classifier's ``Deployable.score``."""
    right, loss, rows = 0, 0.0, 0
    for batch in batches:
        logits = batch_logits(module, batch)
        labels = batch.inputs["labels"].cpu()
        right += int((logits.argmax(dim=-1) == labels).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        rows += len(labels)
    return {"accuracy": right / max(rows, 1), "cross_entropy": loss / max(rows, 1)}


def merged_classifier(trained: Any) -> Any:
    """The trained classifier with its LoRA merged, in float32 on the CPU, in eval mode; ``trained`` is untouched.

    peft's ``merge_and_unload`` also puts the trained head (its ``modules_to_save`` copy) in place of the
    wrapper around the original one, so the copy is a plain transformers model.
    """
    module = copy.deepcopy(trained).to("cpu", torch.float32)
    if hasattr(module, "merge_and_unload"):
        module = module.merge_and_unload()
    return module.eval()


def logit_difference(trained: Any, other: Any, inputs: dict[str, Any]) -> float:
    """The largest logit difference of ``other`` (on the CPU) from ``trained`` on ``inputs``; ``trained``'s
    train/eval mode is left as it was."""
    was_training = trained.training
    trained.eval()
    try:
        device = next(trained.parameters()).device
        with torch.no_grad():
            expected = classifier_logits(trained, {k: v.to(device) for k, v in inputs.items()}).cpu()
            return float((classifier_logits(other, inputs) - expected).abs().max())
    finally:
        trained.train(was_training)
