"""What a quantized export costs in accuracy: output drift and the model's own scores on the run's data.

Both models see the same batches — the run's validation split as the model's plugin encoded it
(``ctx.prepared_data()``) — and are compared through the model kind's deployable view: its
``batch_outputs`` (a causal LM's logits at real positions) and its ``score`` (its perplexity). Nothing
here knows the modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch

from loraplug import Batch, Deployable, LoraplugError, RunContext

BATCH_SIZE = 8


@dataclass
class EvalSet:
    """Batches of the run's prepared data to measure on (none: the deployable's example inputs), and a
    phrase saying what they are, for the manifest."""

    batches: list[Batch] = field(default_factory=list)
    measured_on: str = "the model's example inputs"


def evaluation_set(ctx: RunContext, max_samples: int) -> tuple[EvalSet, list[str]]:
    """The first ``max_samples`` validation samples (training samples without a validation split)."""
    notes: list[str] = []
    try:
        prepared = ctx.prepared_data()
    except LoraplugError as exc:
        notes.append(
            f"the run's data could not be read again ({exc.what}): drift measured on example inputs, no scores"
        )
        return EvalSet(), notes
    if prepared.val:
        samples, split = list(prepared.val[:max_samples]), "validation split"
    else:
        train = prepared.train
        samples = (
            list(train[:max_samples]) if isinstance(train, Sequence) else list(islice(train, max_samples))
        )
        split = "training data (the run has no validation split)"
        notes.append("the run has no validation split: drift and scores are measured on training samples")
    batches = [prepared.collate(samples[i : i + BATCH_SIZE]) for i in range(0, len(samples), BATCH_SIZE)]
    # With packing the items are rows of several samples: say how many samples they hold.
    held = sum(len(getattr(item, "samples", [item])) for item in samples)
    what = f"{len(samples)} packed rows holding {held} samples" if held != len(samples) else f"{held} samples"
    return EvalSet(batches, f"{split}, first {what}"), notes


def _on_device_of(module: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    device = next(module.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@torch.no_grad()
def outputs(deployable: Deployable, module: Any, evalset: EvalSet) -> list[Any]:
    """``module``'s comparable outputs on each batch (or on the example inputs), float32 on the CPU."""
    if evalset.batches and deployable.batch_outputs is not None:
        return [deployable.batch_outputs(module, batch).float().cpu() for batch in evalset.batches]
    return [deployable.probe(module, _on_device_of(module, deployable.check_inputs)).float().cpu()]


def drift(deployable: Deployable, reference: Any, quantized: Any, evalset: EvalSet) -> dict[str, float]:
    """Max and mean |quantized − unquantized| over every output value (padding excluded)."""
    worst, total, count = 0.0, 0.0, 0
    for want, got in zip(
        outputs(deployable, reference, evalset), outputs(deployable, quantized, evalset), strict=True
    ):
        diff = (got - want).abs()
        worst = max(worst, float(diff.max()))
        total += float(diff.sum())
        count += diff.numel()
    return {
        deployable.figure("max_abs", "drift"): worst,
        deployable.figure("mean_abs", "drift"): total / max(count, 1),
    }


@torch.no_grad()
def scores(deployable: Deployable, reference: Any, quantized: Any, evalset: EvalSet) -> dict[str, float]:
    """The model's own scores of both models (``perplexity_unquantized``, ``perplexity_quantized``) and the
    change in percent; nothing when the model has no score or the data could not be read."""
    if deployable.score is None or not evalset.batches:
        return {}
    before, after = deployable.score(reference, evalset.batches), deployable.score(quantized, evalset.batches)
    figures: dict[str, float] = {}
    for name, value in before.items():
        figures |= {
            f"{name}_unquantized": value,
            f"{name}_quantized": after[name],
            f"{name}_change_pct": 100 * (after[name] / value - 1) if value else float("nan"),
        }
    return figures
