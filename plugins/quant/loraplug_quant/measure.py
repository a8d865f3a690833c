"""What a quantized export costs in accuracy: logit drift and perplexity on the run's validation split.

Both models see the same batches, built by the causal-LM plugin's own collate function, so the
numbers are over exactly the tokens training was validated on (response tokens, padding excluded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from loraplug import Batch, LoraplugError, RunContext
from loraplug.training.batches import move_to
from loraplug_causal_lm.export import PROBE_TEXT  # also the probe of the merged export's parity check

BATCH_SIZE = 8


@dataclass
class EvalSet:
    """Batches to measure on, and a phrase saying what they are, for the manifest."""

    batches: list[Batch]
    measured_on: str
    has_labels: bool = True


def evaluation_set(ctx: RunContext, tokenizer: Any, max_samples: int) -> tuple[EvalSet, list[str]]:
    """The first ``max_samples`` validation samples (training samples without a validation split)."""
    notes: list[str] = []
    try:
        prepared = ctx.prepared_data()
    except LoraplugError as exc:
        ids = tokenizer(PROBE_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"]
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, -100)}
        batch = Batch(inputs=inputs, num_targets=0, num_tokens=ids.numel())
        notes.append(f"the run's data could not be read again ({exc.what}): drift measured on a probe sentence, no perplexity")
        return EvalSet([batch], "a probe sentence", has_labels=False), notes
    if prepared.val:
        samples, split = list(prepared.val[:max_samples]), "validation split"
    else:
        train = prepared.train
        samples = list(train[:max_samples]) if isinstance(train, Sequence) else list(islice(train, max_samples))
        split = "training data (the run has no validation split)"
        notes.append("the run has no validation split: drift and perplexity are measured on training samples")
    batches = [prepared.collate(samples[i : i + BATCH_SIZE]) for i in range(0, len(samples), BATCH_SIZE)]
    # With packing the items are rows of several samples: say how many samples they hold.
    held = sum(len(getattr(item, "samples", [item])) for item in samples)
    what = f"{len(samples)} packed rows holding {held} samples" if held != len(samples) else f"{held} samples"
    return EvalSet(batches, f"{split}, first {what}"), notes


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def logit_drift(reference: torch.nn.Module, quantized: torch.nn.Module, evalset: EvalSet) -> dict[str, float]:
    """Max and mean |quantized − unquantized| logit over every real (unpadded) position."""
    from loraplug_causal_lm.compute import forward

    worst, total, count = 0.0, 0.0, 0
    for batch in evalset.batches:
        want, _, real = forward(reference, move_to(batch, _device(reference)))
        got, _, _ = forward(quantized, move_to(batch, _device(quantized)))
        diff = (got.float().cpu() - want.float().cpu()).abs()[real.cpu()]
        worst = max(worst, float(diff.max()))
        total += float(diff.sum())
        count += diff.numel()
    return {"max_abs_logit_drift": worst, "mean_abs_logit_drift": total / max(count, 1)}


@torch.no_grad()
def perplexity(module: torch.nn.Module, evalset: EvalSet) -> float:
    """exp(mean cross-entropy) over the target tokens, as the run's validation loss counts them."""
    from loraplug_causal_lm.compute import loss_sum

    total, targets = 0.0, 0
    for batch in evalset.batches:
        result = loss_sum(module, move_to(batch, _device(module)))
        total += float(result.loss_sum)
        targets += result.num_targets
    return math.exp(total / max(targets, 1))
