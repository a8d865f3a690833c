"""Evaluation during training: validation loss, plugin metrics, the best model, early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from loraplug.bundles import DataBundle, ModelBundle, PreparedData
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.recipe.model import Recipe
from loraplug.recipe.sections import EvalSection
from loraplug.toolkit import StepFn
from loraplug.training.batches import eval_batches, move_to
from loraplug.training.checkpoint import Progress


def reduce_sum(accelerator: Any, value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op for one)."""
    if accelerator.num_processes == 1:
        return value
    total: torch.Tensor = accelerator.reduce(value.clone(), reduction="sum")
    return total


def validation_loss(
    accelerator: Any,
    step_fn: StepFn,
    model: ModelBundle,
    module: Any,
    prepared: PreparedData,
    recipe: Recipe,
    ctx: RunContext,
) -> float | None:
    """Mean loss per target over the validation set, identical on every process."""
    if not prepared.val:
        return None
    was_training = module.training
    module.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for batch in eval_batches(
            prepared,
            batch_size=recipe.train.micro_batch_size,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
            limit=recipe.eval.max_batches,
        ):
            result = step_fn(model=model, module=module, batch=move_to(batch, accelerator.device), ctx=ctx)
            if batch.num_targets:  # not a stand-in (eval_batches)
                totals[0] += result.loss_sum.detach().double()
                totals[1] += result.num_targets
    module.train(was_training)
    totals = reduce_sum(accelerator, totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


class Evaluator:
    """Computes every score of one evaluation, the same on every process."""

    def __init__(
        self,
        *,
        accelerator: Any,
        step_fn: StepFn,
        metric_calls: list[tuple[Callable[..., Any], list[str]]],
        model: ModelBundle,
        prepared: PreparedData,
        data: DataBundle,
        recipe: Recipe,
        ctx: RunContext,
    ) -> None:
        self.accelerator = accelerator
        self.step_fn = step_fn
        self.metric_calls = metric_calls
        self.model = model
        self.prepared = prepared
        self.data = data
        self.recipe = recipe
        self.ctx = ctx

    def __call__(self, module: Any) -> dict[str, float]:
        scores: dict[str, float] = {}
        val = validation_loss(
            self.accelerator, self.step_fn, self.model, module, self.prepared, self.recipe, self.ctx
        )
        if val is not None:
            scores["val_loss"] = val
        if self.metric_calls:
            extra: dict[str, float] = {}
            if self.accelerator.is_main_process:
                was_training = module.training
                self.model.module.eval()
                with torch.no_grad():
                    for call, names in self.metric_calls:
                        extra.update(call(metrics=names, model=self.model, options=self.recipe.model.options,
                                          data=self.data, scores=dict(scores), ctx=self.ctx))  # fmt: skip
                self.model.module.train(was_training)
            scores.update(broadcast(self.accelerator, extra))
        return scores


def broadcast(accelerator: Any, value: dict[str, float]) -> dict[str, float]:
    """The main process's dict, on every process."""
    if accelerator.num_processes == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class BestTracker:
    """Tracks the monitored score: is this evaluation the best so far, and is it time to stop?

    :param lower_is_better: the monitored metric's direction (:meth:`Recipe.monitor_lower_is_better`:
        ``eval.monitor_mode``, or as the metric declared it).
    """

    def __init__(self, section: EvalSection, *, lower_is_better: bool) -> None:
        self.section = section
        self.mode = "min" if lower_is_better else "max"

    def update(self, progress: Progress, scores: dict[str, float]) -> tuple[bool, bool]:
        """Return ``(improved, stop)`` and record the outcome in ``progress``."""
        name = self.section.monitor
        if name not in scores:
            available = ", ".join(scores) or "none (the data has no validation split)"
            raise LoraplugError(
                f"Evaluation produced no {name!r} to monitor; it produced: {available}",
                where="eval.monitor",
                fix="Monitor one of those, add the metric to eval.metrics, or give the data a validation split (data.val_fraction)",
            )
        value = scores[name]
        best = progress.best
        delta = self.section.early_stopping_min_delta
        if best is None:
            improved = math.isfinite(value)
        elif self.mode == "min":
            improved = value < best["value"] - delta
        else:
            improved = value > best["value"] + delta
        if improved:
            progress.best = {"metric": name, "value": value, "step": progress.step}
            progress.stale_evals = 0
        else:
            progress.stale_evals += 1
        patience = self.section.early_stopping_patience
        return improved, patience is not None and progress.stale_evals >= patience
