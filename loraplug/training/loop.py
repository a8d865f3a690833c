"""The training loop.

Read it top to bottom: build the optimiser and schedule (restoring them from a checkpoint when
resuming), then for each optimizer step take ``grad_accum_steps`` micro-batches, count their targets
across all processes, and back-propagate each micro-batch's *summed* loss divided by that total. The
gradient is then exactly that of one large batch — however the samples are split into micro-batches
and processes, and whatever their lengths. (Averaging per micro-batch instead is the accumulation bug
that hit HF Trainer.) After the step: log, evaluate, checkpoint, and stop early or on a signal.

accelerate owns devices, mixed precision and processes, so the same code runs under
``accelerate launch`` and ``torchrun``.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loraplug.bundles import Batch, ModelBundle, PreparedData
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.recipe.model import Recipe
from loraplug.rundir import ADAPTER_FILE
from loraplug.toolkit import StepFn
from loraplug.training import faults
from loraplug.training.batches import MicroBatches, move_to
from loraplug.training.checkpoint import BEST, Checkpoints, Progress, step_name
from loraplug.training.evaluation import BestTracker, reduce_sum
from loraplug.training.optim import OptimizerMaker, build_optimizer, build_scheduler
from loraplug.training.progress import ProgressDisplay
from loraplug.training.sinks import Sinks
from loraplug.training.weights import load_trainable, load_trainable_state, trainable_state

MAX_SKIPPED_IN_A_ROW = 10


class Interrupted(LoraplugError):
    """SIGINT or SIGTERM: a checkpoint was saved and the run stopped."""

    exit_code = 130


@dataclass
class TrainResult:
    """What a finished training loop reports."""

    steps: int
    seconds: float
    tokens: int
    train_loss: float | None = None
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    # True when the best evaluation's weights replaced the last step's at the end.
    restored_best: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def val_losses(self) -> list[tuple[int, float]]:
        return [(step, s["val_loss"]) for step, s in self.evaluations if "val_loss" in s]


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


@contextmanager
def stop_signals() -> Iterator[list[str]]:
    """Turn the first SIGINT/SIGTERM into a request to checkpoint and stop; a second one is immediate."""
    requested: list[str] = []
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        requested.append(signal.Signals(signum).name)
        for sig, old in previous.items():  # a second signal gets the default behaviour
            signal.signal(sig, old)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (notebooks, tests in threads): no handlers
        previous.clear()
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(
    *,
    accelerator: Any,
    step_fn: StepFn,
    model: ModelBundle,
    prepared: PreparedData,
    recipe: Recipe,
    ctx: RunContext,
    sinks: Sinks,
    evaluate: Callable[[Any], dict[str, float]],
    display: Callable[[int, int], ProgressDisplay],
    on_step_end: Callable[[int], None] | None = None,
    resume_from: Path | None = None,
    make_optimizer: OptimizerMaker | None = None,
) -> TrainResult:
    """Train ``model.module`` on ``prepared`` as ``recipe.train`` says; return the figures.

    :param make_optimizer: builds the recipe's optimizer kind from the parameter groups (the pipeline
        passes the ``loraplug_build_optimizer`` hook); default: the core's AdamW.
    """
    cfg = recipe.train
    world, rank = accelerator.num_processes, accelerator.process_index
    batches = MicroBatches(prepared, batch_size=cfg.batch_size, seed=ctx.seed, rank=rank, world=world, num_workers=cfg.num_workers)
    steps = total_steps(recipe, batches.per_epoch(), recipe.data.kind)
    optimizer = build_optimizer(model.module, cfg, model.lr_scales, device=accelerator.device, make=make_optimizer)
    scheduler = build_scheduler(optimizer, cfg, steps)
    module, optimizer = accelerator.prepare(model.module, optimizer)
    trainable = [p for p in module.parameters() if p.requires_grad]
    checkpoints = Checkpoints(ctx.run_dir, accelerator, keep_last=cfg.keep_last)
    tracker = BestTracker(recipe.eval, lower_is_better=recipe.monitor_lower_is_better())

    # Resuming restores weights, optimizer, schedule, random generators and the data position.
    progress = Progress()
    if resume_from is not None:
        progress = checkpoints.restore(resume_from, module=model.module, optimizer=optimizer, scheduler=scheduler)
    result = TrainResult(steps=progress.step, seconds=0.0, tokens=0, resumed_from=progress.step if resume_from else None)

    def save(name: str) -> None:
        checkpoints.save(name, module=model.module, optimizer=optimizer, scheduler=scheduler, progress=progress, recipe_hash=recipe.hash())

    best_weights: dict[str, torch.Tensor] | None = None

    def evaluation(step: int) -> bool:
        """Evaluate, keep the best weights, and say whether to stop early."""
        nonlocal best_weights
        scores = evaluate(module)
        if not scores:
            return False
        result.evaluations.append((step, scores))
        sinks.log(step, scores, split="eval")
        improved = stop = False
        # The baseline is logged but never "best": an untrained adapter is not what anyone exports.
        if step > 0 and (recipe.eval.monitor in scores or recipe.eval.early_stopping_patience):
            improved, stop = tracker.update(progress, scores)
        if improved and recipe.eval.use_best:
            best_weights = trainable_state(model.module)  # a LoRA is small: keep the best in memory
            if cfg.save_every_n_steps:
                save(BEST)
        line = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        live.note(f"step {step}: {line}{'  (best so far)' if improved else ''}")
        return stop

    micro_count = 0
    stream = batches.iterate(progress.position)
    window_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    window_targets = window_tokens = 0
    window_start = started = time.monotonic()
    module.train()

    with stop_signals() as signals, display(steps, progress.step) as live:
        if resume_from is None:
            evaluation(0)  # the baseline every later evaluation is compared with
        while progress.step < steps:
            step = progress.step + 1

            # 1. Take one optimizer step's micro-batches and count their targets on every process.
            group: list[Batch] = []
            for _ in range(cfg.grad_accum_steps):
                try:
                    position, batch = next(stream)
                except StopIteration:
                    raise LoraplugError("The training data yielded no batches", fix="Check the data source") from None
                group.append(batch)
            counts = torch.tensor([sum(b.num_targets for b in group), sum(b.num_tokens for b in group)], dtype=torch.float64, device=accelerator.device)
            targets, tokens = (int(x) for x in reduce_sum(accelerator, counts).tolist())
            if targets == 0:
                raise LoraplugError(
                    f"Step {step} has no targets to learn from (samples {', '.join(_ids(group, 5))})",
                    fix="Every sample's target was masked or truncated; raise max_length or check the data",
                )

            # 2. Forward and backward each micro-batch, scaled by the whole step's target count.
            #    DDP averages gradients over processes, hence the factor `world`.
            step_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for index, batch in enumerate(group):
                last = index == len(group) - 1
                with nullcontext() if last else accelerator.no_sync(module):
                    out = step_fn(model=model, module=module, batch=move_to(batch, accelerator.device), ctx=ctx)
                    if faults.poisoned("micro", micro_count + 1, rank):
                        out.loss_sum = out.loss_sum * float("nan")
                    accelerator.backward(out.loss_sum * (world / targets))
                step_loss += out.loss_sum.detach().double()
                micro_count += 1
                faults.inject("micro", micro_count, rank)

            # 3. A NaN or infinite loss never reaches the weights.
            step_loss = reduce_sum(accelerator, step_loss)
            loss = float(step_loss) / targets
            progress.position = position
            progress.step = step
            if not math.isfinite(loss):
                message = f"The loss became {loss} at step {step}"
                if cfg.on_nan == "stop" or progress.skipped_steps >= MAX_SKIPPED_IN_A_ROW:
                    kept = checkpoints.newest()
                    raise LoraplugError(
                        message + (f" ({progress.skipped_steps} steps skipped before)" if progress.skipped_steps else ""),
                        where=f"samples {', '.join(_ids(group, 8))}",
                        fix="Lower train.lr, use bf16 instead of fp16, or inspect those samples"
                        + (f"; the last good checkpoint is {kept}" if kept else ""),
                    )
                progress.skipped_steps += 1
                optimizer.zero_grad(set_to_none=True)
                live.note(f"warning: {message}; skipped the update (samples {', '.join(_ids(group, 4))})")
                sinks.log(step, {"skipped_nan_steps": progress.skipped_steps}, split="train")
                continue

            # 4. Clip, step, schedule.
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            faults.inject("step", step, rank)

            # 5. Report.
            window_loss += step_loss
            window_targets += targets
            window_tokens += tokens
            result.tokens += tokens
            result.steps = step
            log_now = step % cfg.log_every_n_steps == 0 or step == steps
            elapsed = time.monotonic() - window_start
            rate = window_tokens / elapsed if elapsed > 0 else 0.0
            lr = scheduler.get_last_lr()[0]
            live.update(step, loss=float(window_loss) / max(1, window_targets), lr=lr, tokens_per_s=rate, log=log_now)
            if log_now:
                result.train_loss = float(window_loss) / max(1, window_targets)
                sinks.log(step, {"loss": result.train_loss, "lr": lr, "tokens_per_s": rate}, split="train")
                window_loss.zero_()
                window_targets = window_tokens = 0
                window_start = time.monotonic()

            # 6. Evaluate, checkpoint, stop early or on a signal.
            stop = False
            if recipe.eval.every_n_steps and step % recipe.eval.every_n_steps == 0 and step != steps:
                stop = evaluation(step)
            if on_step_end is not None:
                on_step_end(step)
            interrupted = _agreed(accelerator, bool(signals))
            # A signal always saves, checkpointing on or off: Ctrl-C must never cost the steps done.
            if interrupted or (cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0):
                save(step_name(step))
            if interrupted:
                raise Interrupted(
                    f"Stopped by {signals[0] if signals else 'a signal'} at step {step}; a checkpoint was saved",
                    fix="Continue with `loraplug run RECIPE --resume`",
                )
            if stop:
                result.stopped_early = True
                live.note(f"early stopping at step {step}: no improvement of {recipe.eval.monitor} in "
                          f"{recipe.eval.early_stopping_patience} evaluations")  # fmt: skip
                break

    if not result.stopped_early or not result.evaluations or result.evaluations[-1][0] != result.steps:
        evaluation(result.steps)
    if cfg.save_every_n_steps and not (checkpoints.root / step_name(result.steps)).exists():
        save(step_name(result.steps))
    result.best = progress.best
    if recipe.eval.use_best and progress.best and progress.best["step"] != result.steps:
        if best_weights is None:  # resumed after the best evaluation: it is on disk
            load_trainable(model.module, checkpoints.root / BEST / ADAPTER_FILE)
        else:
            load_trainable_state(model.module, best_weights)
        result.restored_best = True
        live.note(f"using the best weights, from step {progress.best['step']} ({progress.best['metric']} {progress.best['value']:.4f})")
    result.seconds = time.monotonic() - started
    # accelerate wrapped the module's forward in autocast; exports and samples after training must see
    # the model as it is, in its own precision.
    accelerator.unwrap_model(module, keep_fp32_wrapper=False)
    return result


def _ids(group: list[Batch], limit: int) -> list[str]:
    return [i for b in group for i in b.sample_ids][:limit]


def _agreed(accelerator: Any, flag: bool) -> bool:
    """Whether any process was asked to stop (every process must stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(reduce_sum(accelerator, value).item() > 0)
