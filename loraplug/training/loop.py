"""The training loop.

Read it top to bottom: build the optimiser and schedule, then for each optimizer step take
``grad_accum_steps`` micro-batches, count their targets across all processes, and back-propagate each
micro-batch's *summed* loss divided by that total. The gradient is then exactly that of one large batch
— however the samples are split into micro-batches and processes, and whatever their lengths.
(Averaging per micro-batch instead is the accumulation bug that hit HF Trainer.)

accelerate owns devices, mixed precision and processes, so the same code runs under
``accelerate launch`` and ``torchrun``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from loraplug.bundles import Batch, ModelBundle, PreparedData, StepResult
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.recipe.model import Recipe
from loraplug.training.batches import MicroBatches, Position, eval_batches, move_to
from loraplug.training.optim import build_optimizer, build_scheduler
from loraplug.training.progress import ProgressDisplay
from loraplug.training.sinks import Sinks

StepFn = Callable[..., StepResult]


@dataclass
class TrainResult:
    """What a finished training loop reports."""

    steps: int
    seconds: float
    tokens: int
    train_loss: float | None = None
    val_losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def total_steps(recipe: Recipe, micro_batches_per_epoch: int | None, data_kind: str) -> int:
    train = recipe.train
    if train.max_steps is not None:
        return train.max_steps
    if micro_batches_per_epoch is None:
        raise LoraplugError(
            f"The data kind {data_kind!r} streams its samples, so the run's length cannot be derived from epochs",
            fix="Set train.max_steps",
        )
    epochs = train.epochs or 1.0
    return max(1, math.ceil(epochs * micro_batches_per_epoch / train.grad_accum_steps))


def reduce_sum(accelerator: Accelerator, value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op for one)."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.clone(), reduction="sum")


def validation_loss(
    accelerator: Accelerator, step_fn: StepFn, model: ModelBundle, module: Any, prepared: PreparedData, recipe: Recipe, ctx: RunContext
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
            batch_size=recipe.train.batch_size,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
            limit=recipe.eval.max_batches,
        ):
            result = step_fn(model=model, module=module, batch=move_to(batch, accelerator.device), ctx=ctx)
            totals[0] += result.loss_sum.detach().double()
            totals[1] += result.num_targets
    module.train(was_training)
    totals = reduce_sum(accelerator, totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


def train(
    *,
    accelerator: Accelerator,
    step_fn: StepFn,
    model: ModelBundle,
    prepared: PreparedData,
    recipe: Recipe,
    ctx: RunContext,
    sinks: Sinks,
    display: Callable[[int], ProgressDisplay],
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model.module`` on ``prepared`` as ``recipe.train`` says; return the figures."""
    cfg = recipe.train
    world = accelerator.num_processes
    batches = MicroBatches(
        prepared,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        rank=accelerator.process_index,
        world=world,
        num_workers=cfg.num_workers,
    )
    steps = total_steps(recipe, batches.per_epoch(), recipe.data.kind)
    optimizer = build_optimizer(model.module, cfg, model.lr_scales)
    scheduler = build_scheduler(optimizer, cfg, steps)
    module, optimizer = accelerator.prepare(model.module, optimizer)
    trainable = [p for p in module.parameters() if p.requires_grad]

    result = TrainResult(steps=0, seconds=0.0, tokens=0)
    stream = batches.iterate(Position())
    window_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    window_targets = 0
    window_tokens = 0
    window_start = time.monotonic()
    started = window_start
    module.train()

    baseline = validation_loss(accelerator, step_fn, model, module, prepared, recipe, ctx)
    if baseline is not None:
        result.val_losses.append((0, baseline))
        sinks.log(0, {"val_loss": baseline}, split="eval")

    with display(steps) as progress:
        for step in range(steps):
            # 1. Take one optimizer step's micro-batches and count their targets on every process.
            group: list[Batch] = []
            for _ in range(cfg.grad_accum_steps):
                try:
                    group.append(next(stream)[1])
                except StopIteration:
                    raise LoraplugError("The training data yielded no batches", fix="Check the data source") from None
            counts = torch.tensor(
                [sum(b.num_targets for b in group), sum(b.num_tokens for b in group)],
                dtype=torch.float64,
                device=accelerator.device,
            )
            targets, tokens = (int(x) for x in reduce_sum(accelerator, counts).tolist())
            if targets == 0:
                ids = [i for b in group for i in b.sample_ids][:5]
                raise LoraplugError(
                    f"Step {step + 1} has no targets to learn from (samples {', '.join(ids)})",
                    fix="Every sample's target was masked or truncated; raise max_length or check the data",
                )

            # 2. Forward and backward each micro-batch, scaled by the whole step's target count.
            #    DDP averages gradients over processes, hence the factor `world`.
            step_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for index, batch in enumerate(group):
                last = index == len(group) - 1
                with nullcontext() if last else accelerator.no_sync(module):
                    out = step_fn(model=model, module=module, batch=move_to(batch, accelerator.device), ctx=ctx)
                    accelerator.backward(out.loss_sum * (world / targets))
                step_loss += out.loss_sum.detach().double()

            # 3. Clip, step, schedule.
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            # 4. Check and report.
            step_loss = reduce_sum(accelerator, step_loss)
            loss = float(step_loss) / targets
            if not math.isfinite(loss):
                ids = [i for b in group for i in b.sample_ids][:8]
                raise LoraplugError(
                    f"The loss became {loss} at step {step + 1}",
                    where=f"samples {', '.join(ids)}",
                    fix="Lower train.lr, use bf16 instead of fp16, or inspect those samples",
                )
            window_loss += step_loss
            window_targets += targets
            window_tokens += tokens
            result.tokens += tokens
            result.steps = step + 1
            done = step + 1
            log_now = done % cfg.log_every_n_steps == 0 or done == steps
            elapsed = time.monotonic() - window_start
            rate = window_tokens / elapsed if elapsed > 0 else 0.0
            lr = scheduler.get_last_lr()[0]
            progress.update(done, loss=float(window_loss) / max(1, window_targets), lr=lr, tokens_per_s=rate, log=log_now)
            if log_now:
                result.train_loss = float(window_loss) / max(1, window_targets)
                sinks.log(done, {"loss": result.train_loss, "lr": lr, "tokens_per_s": rate}, split="train")
                window_loss.zero_()
                window_targets = window_tokens = 0
                window_start = time.monotonic()

            if recipe.eval.every_n_steps and done % recipe.eval.every_n_steps == 0 and done != steps:
                val = validation_loss(accelerator, step_fn, model, module, prepared, recipe, ctx)
                if val is not None:
                    result.val_losses.append((done, val))
                    sinks.log(done, {"val_loss": val}, split="eval")
                    progress.note(f"step {done}: validation loss {val:.4f}")
            if on_step_end is not None:
                on_step_end(done)

    val = validation_loss(accelerator, step_fn, model, module, prepared, recipe, ctx)
    if val is not None:
        result.val_losses.append((result.steps, val))
        sinks.log(result.steps, {"val_loss": val}, split="eval")
    result.seconds = time.monotonic() - started
    # accelerate wrapped the module's forward in autocast; exports and samples after training must see
    # the model as it is, in its own precision.
    accelerator.unwrap_model(module, keep_fp32_wrapper=False)
    return result
