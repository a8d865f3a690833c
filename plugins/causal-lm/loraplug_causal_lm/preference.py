"""The preference objectives ``dpo`` and ``orpo``: a loss over batches of chosen and rejected rows.

A batch (:class:`loraplug_causal_lm.pairs.PairCollator`) holds the chosen sides of ``n`` pairs in rows
``0..n-1`` and the rejected in ``n..2n-1``, padded alike; one forward gives each row's log-probability
of its completion (the sum over its target tokens), computed through the chunked loss when the
logits would be large (``model.loss_chunk_tokens``), so the full logits never exist here either.

The loss is *summed* over pairs and ``num_targets`` is the number of pairs: the loop divides by the
pairs of the whole accumulated batch, so accumulation equals one larger batch exactly, and one batch's
mean equals TRL's (plugins/causal-lm/tests/test_preference_trl.py checks it to 1e-5).

DPO's reference is the same weights with the adapter switched off (peft's ``disable_adapter``: no second
copy of the model), or the reference log-probabilities computed once before training
(``precompute_reference``), which a run that starts from an earlier adapter (``adapter.init_from``)
always does: the reference is then that adapter, as it was before training.

Imported by hook bodies only (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from loraplug import Batch, LoraplugError, ModelBundle, RunContext, StepResult
from loraplug_causal_lm.chunked_loss import ChunkSetting, head_of, last_hidden_state, target_cross_entropy
from loraplug_causal_lm.compute import loss_chunk
from loraplug_causal_lm.encode import IGNORE

if TYPE_CHECKING:
    from loraplug_causal_lm.preference_options import DpoOptions, OrpoOptions

#: The batch inputs the model is called with (the others are the loss's own).
MODEL_INPUTS = ("input_ids", "attention_mask")


@dataclass
class Sides:
    """Per-row figures of a pair batch, split into the chosen and rejected halves."""

    chosen: torch.Tensor
    rejected: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor) -> Sides:
        chosen, rejected = rows.chunk(2, dim=0)
        return cls(chosen, rejected)


@dataclass
class PairLoss:
    """One micro-batch's loss per pair, and what is logged and evaluated about it."""

    losses: torch.Tensor
    #: the implicit rewards of each side, detached (DPO: β·(log π − log π_ref); ORPO: λ·mean log π)
    rewards: Sides
    #: the policy's summed log-probabilities of each side's completion, detached
    logps: Sides

    def result(self) -> StepResult:
        """The loop's answer: the loss summed over pairs, and the figures logged beside it."""
        figures = {name: value for name, value in self.sums().items() if name != "loss"}
        return StepResult(loss_sum=self.losses.sum(), num_targets=len(self.losses), metrics=figures)

    def sums(self) -> dict[str, float]:
        """Per-pair figures summed over the batch (divide by the pairs for the means)."""
        margin = self.rewards.chosen - self.rewards.rejected
        return {
            "loss": float(self.losses.detach().sum()),
            "reward_accuracy": float((margin > 0).float().sum()),
            "reward_margin": float(margin.sum()),
            "chosen_logps": float(self.logps.chosen.sum()),
            "rejected_logps": float(self.logps.rejected.sum()),
        }


def sequence_logps(
    module: Any,
    inputs: dict[str, Any],
    chunk_setting: ChunkSetting = 0,
    warn: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log-probability of each row's targets, summed; target tokens per row)`` in float32.

    Labels are pre-shifted (``labels[t]`` is what position ``t`` predicts), as for SFT.
    """
    labels = inputs["labels"]
    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    targets = labels != IGNORE
    chunk = loss_chunk(module, chunk_setting, labels.numel(), warn)
    if chunk:
        head = head_of(module)
        hidden, autocast = last_hidden_state(module, head, kwargs)
        token_logps = -target_cross_entropy(head, hidden, labels, chunk, autocast, reduction="none")
    else:
        logits = module(**kwargs, use_cache=False).logits
        token_logps = -F.cross_entropy(logits[targets].float(), labels[targets], reduction="none")
    rows = targets.nonzero()[:, 0]
    logps = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device).index_add(
        0, rows, token_logps
    )
    return logps, targets.sum(dim=1)


def peft_model_of(module: Any) -> Any:
    """The peft model inside DDP (or accelerate's wrappers), or ``None``."""
    while not hasattr(module, "disable_adapter") and hasattr(module, "module"):
        module = module.module
    return module if hasattr(module, "disable_adapter") else None


@contextmanager
def adapter_disabled(module: Any) -> Iterator[None]:
    """The base model's forward: peft's ``disable_adapter`` (the same weights, the adapter skipped)."""
    peft_model = peft_model_of(module)
    if peft_model is None:
        raise LoraplugError(
            f"DPO's reference is the base model with the adapter switched off, but {type(module).__name__} carries no "
            "peft adapter",
            fix='Train a peft adapter (adapter.kind = "lora", "loha" or "lokr"), or set objective.precompute_reference = true',
        )
    with peft_model.disable_adapter():
        yield


def reference_logps(
    module: Any, batch: Batch, chunk_setting: ChunkSetting = 0, warn: Callable[[str], None] | None = None
) -> torch.Tensor:
    """The reference model's log-probability of each row: cached in the batch, or the adapter switched off."""
    cached = batch.inputs.get("reference_logps")
    if cached is not None:
        return cached.to(torch.float32)
    with torch.no_grad(), adapter_disabled(module):
        logps, _ = sequence_logps(module, batch.inputs, chunk_setting, warn)
    return logps


def dpo_loss(
    options: DpoOptions, logps: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor
) -> PairLoss:
    """DPO (Rafailov et al. 2023) per pair, with conservative label smoothing or IPO's squared loss.

    ``sigmoid``: −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ), Δ = (log π_c − log π_ref,c) − (log π_r − log π_ref,r).
    ``ipo``: (Δ' − 1/(2β))², Δ' the same with each log-ratio divided by its completion's token count,
    as TRL normalises it.
    """
    ratios = Sides.of(logps - reference)
    delta = ratios.chosen - ratios.rejected
    if options.loss_type == "ipo":
        tokens = Sides.of(counts.clamp(min=1).to(logps.dtype))
        normalised = ratios.chosen / tokens.chosen - ratios.rejected / tokens.rejected
        losses = (normalised - 1 / (2 * options.beta)) ** 2
    else:
        smoothing = options.label_smoothing
        losses = -(1 - smoothing) * F.logsigmoid(options.beta * delta) - smoothing * F.logsigmoid(
            -options.beta * delta
        )
    rewards = Sides(options.beta * ratios.chosen.detach(), options.beta * ratios.rejected.detach())
    return PairLoss(losses, rewards, Sides.of(logps.detach()))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, without cancellation (branching at −ln 2)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(options: OrpoOptions, logps: torch.Tensor, counts: torch.Tensor) -> PairLoss:
    """ORPO (Hong et al. 2024) per pair: the chosen side's NLL per token − λ·log σ(log odds ratio).

    The odds of a side are p/(1−p) with p its mean per-token probability, exp(mean log-prob); the log
    odds ratio is (ā_c − ā_r) − (log(1−e^ā_c) − log(1−e^ā_r)). No reference model.
    """
    mean = Sides.of(logps / counts.clamp(min=1).to(logps.dtype))
    log_odds = (mean.chosen - mean.rejected) - (log1mexp(mean.chosen) - log1mexp(mean.rejected))
    losses = -mean.chosen - options.odds_ratio_weight * F.logsigmoid(log_odds)
    weight = options.odds_ratio_weight
    rewards = Sides(weight * mean.chosen.detach(), weight * mean.rejected.detach())
    return PairLoss(losses, rewards, Sides.of(logps.detach()))


def pair_loss(
    kind: str,
    options: Any,
    module: Any,
    batch: Batch,
    chunk_setting: ChunkSetting = 0,
    warn: Callable[[str], None] | None = None,
) -> PairLoss:
    """The ``kind`` objective's loss of one pair batch (``dpo`` or ``orpo``)."""
    logps, counts = sequence_logps(module, batch.inputs, chunk_setting, warn)
    if kind == "orpo":
        return orpo_loss(options, logps, counts)
    reference = reference_logps(module, batch, chunk_setting, warn)
    return dpo_loss(options, logps, reference.to(logps.device), counts)


def precompute_reference(
    module: Any,
    pairs: list[Any],
    collate: Callable[[list[Any]], Batch],
    batch_size: int,
    chunk_setting: ChunkSetting = 0,
    warn: Callable[[str], None] | None = None,
) -> float:
    """Set each pair's ``reference`` to the model's log-probabilities of its two sides as the weights
    are now (before training: the base, or the adapter training starts from); the seconds it took."""
    import time

    started = time.perf_counter()
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()  # the reference is a fixed function: no dropout in it
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                group = pairs[start : start + batch_size]
                batch = collate(group)
                inputs = {k: v.to(device) for k, v in batch.inputs.items() if k != "reference_logps"}
                logps, _ = sequence_logps(module, inputs, chunk_setting, warn)
                sides = Sides.of(logps.cpu())
                for pair, chosen, rejected in zip(
                    group, sides.chosen.tolist(), sides.rejected.tolist(), strict=True
                ):
                    pair.reference = (chosen, rejected)
    finally:
        module.train(was_training)
    return time.perf_counter() - started


def evaluate_pairs(model: ModelBundle, ctx: RunContext) -> dict[str, float]:
    """The preference metrics over the validation pairs: reward accuracy and margin, and each side's
    mean log-probability, with the model as it is now (called in eval mode, without gradients)."""
    from loraplug_causal_lm.pairs import preference_objective

    objective = preference_objective(ctx)
    prepared = ctx.prepared_data()
    if objective is None or not prepared.val:
        raise LoraplugError(
            "The preference metrics (reward_accuracy, reward_margin, chosen_logps, rejected_logps) need preference "
            "pairs to validate on and a preference objective",
            where="eval.metrics",
            fix='Set train.objective = "dpo" or "orpo" with data.kind = "pairs" and data.val_fraction or data.val_path',
        )
    assert ctx.recipe.objective is not None  # noqa: S101 — a preference objective was found above
    module, options = model.module, ctx.recipe.objective.options
    device = next(module.parameters()).device
    chunk = ctx.recipe.model.options.loss_chunk_tokens
    val = list(prepared.val)
    size = ctx.recipe.train.batch_size if isinstance(ctx.recipe.train.batch_size, int) else 4
    totals: dict[str, float] = {}
    for start in range(0, len(val), size):
        batch = prepared.collate(val[start : start + size])
        batch = Batch({k: v.to(device) for k, v in batch.inputs.items()}, batch.num_targets, batch.num_tokens)
        for name, value in pair_loss(objective, options, module, batch, chunk, ctx.warn).sums().items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: value / len(val) for name, value in totals.items()}
