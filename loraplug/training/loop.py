"""The training loop.

Read :meth:`TrainingLoop.run` top to bottom: the optimizer and schedule are built (restored from a
checkpoint when resuming), then each optimizer step is a few named steps —
:meth:`~TrainingLoop.take_micro_batches` (``grad_accum_steps`` of them, their targets counted across
all processes), :meth:`~TrainingLoop.forward_backward` (each micro-batch's *summed* loss divided by that
total, so the gradient is exactly that of one large batch however the samples are split into
micro-batches and processes, and whatever their lengths — averaging per micro-batch instead is the
accumulation bug that hit HF Trainer), :meth:`~TrainingLoop.optimizer_step` (or
:meth:`~TrainingLoop.skip_update` for a NaN loss), :meth:`~TrainingLoop.report`,
:meth:`~TrainingLoop.maybe_evaluate`, :meth:`~TrainingLoop.maybe_checkpoint` — and it stops early or on
a signal. What changes from step to step is one :class:`TrainState`; everything else is fixed when the
loop is built. Its ``progress.step`` is the one step counter: a step counts once its update is applied
or skipped, and checkpoints, the final evaluation and the result all read it. Test-only fault injection
is not in here: it is a :class:`LoopEvents` the tests install.

accelerate owns devices, mixed precision and processes, so the same code runs under
``accelerate launch`` and ``torchrun``.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from loraplug.training import zero
from loraplug.training.batches import MicroBatches, Position, move_to
from loraplug.training.checkpoint import BEST, Checkpoints, Progress, step_name
from loraplug.training.evaluation import BestTracker, reduce_sum
from loraplug.training.events import LoopEvents
from loraplug.training.optim import OptimizerMaker, build_optimizer, build_scheduler
from loraplug.training.progress import ProgressDisplay
from loraplug.training.sinks import Sinks
from loraplug.training.stepping import AccelerateStepper, DeepSpeedStepper, Stepper
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
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclass
class Window:
    """What the loop has trained since its last log line: the loss over the targets, and the tokens."""

    loss: torch.Tensor
    targets: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.monotonic)
    #: ``StepResult.metrics`` summed over the window's targets, on every process.
    metrics: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.loss.zero_()
        self.targets = self.tokens = 0
        self.start = time.monotonic()
        self.metrics = {}


@dataclass
class TrainState:
    """Everything that changes from one optimizer step to the next (a checkpoint saves ``progress``)."""

    progress: Progress
    result: TrainResult
    stream: Iterator[tuple[Position, Batch]]
    window: Window
    #: Micro-batches trained in this process's run so far (fault points count them from 1).
    micro_count: int = 0
    #: The best evaluation's trained weights, kept in memory for ``eval.use_best`` (a LoRA is small).
    best_weights: dict[str, torch.Tensor] | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class StepBatches:
    """One optimizer step's micro-batches, their targets and tokens counted over every process."""

    group: list[Batch]
    #: Where the data stands after them (saved in a checkpoint).
    position: Position
    targets: int
    tokens: int


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
    events: LoopEvents | None = None,
) -> TrainResult:
    """Train ``model.module`` on ``prepared`` as ``recipe.train`` says; return the figures.

    :param on_step_end: called after each optimizer step that updated the weights, once it is logged
        and evaluated (the run writes periodic samples and its step to run.json there).
    :param make_optimizer: builds the recipe's optimizer kind from the parameter groups (the pipeline
        passes the ``loraplug_build_optimizer`` hook); default: the core's AdamW.
    :param events: told at each point of the loop (:class:`LoopEvents`); the failure tests' faults.
    """
    loop = TrainingLoop(
        accelerator=accelerator, step_fn=step_fn, model=model, prepared=prepared, recipe=recipe, ctx=ctx,
        sinks=sinks, evaluate=evaluate, make_optimizer=make_optimizer, events=events or LoopEvents(),
        resume_from=resume_from,
    )  # fmt: skip
    return loop.run(display=display, on_step_end=on_step_end)


class TrainingLoop:
    """One training run's fixed parts (the prepared module, optimizer, schedule, checkpoints…), and the
    named steps of the loop over them. The state that changes is :attr:`state`."""

    #: What changes from step to step: fresh, or restored from ``resume_from`` when the loop is built.
    state: TrainState

    def __init__(
        self,
        *,
        accelerator: Any,
        step_fn: StepFn,
        model: ModelBundle,
        prepared: PreparedData,
        recipe: Recipe,
        ctx: RunContext,
        sinks: Sinks,
        evaluate: Callable[[Any], dict[str, float]],
        make_optimizer: OptimizerMaker | None,
        events: LoopEvents,
        resume_from: Path | None = None,
    ) -> None:
        cfg = self.cfg = recipe.train
        self.accelerator, self.step_fn, self.model, self.recipe, self.ctx = (
            accelerator,
            step_fn,
            model,
            recipe,
            ctx,
        )
        self.sinks, self.evaluate, self.events = sinks, evaluate, events
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        #: The last step's ``StepResult.metrics``, summed over its micro-batches and processes.
        self.step_metrics: dict[str, float] = {}
        self.batches = MicroBatches(
            prepared,
            batch_size=cfg.micro_batch_size,
            seed=ctx.seed,
            rank=self.rank,
            world=self.world,
            num_workers=cfg.num_workers,
        )
        self.steps = total_steps(recipe, self.batches.per_epoch(), recipe.data.kind)
        optimizer = build_optimizer(
            model.module, cfg, model.lr_scales, device=accelerator.device, make=make_optimizer
        )
        self.scheduler = build_scheduler(optimizer, cfg, self.steps)
        #: What the accelerate config said that the recipe overrode (shown by the run).
        self.notes: list[str] = []
        if zero.is_deepspeed(accelerator):
            self.notes = zero.fit_engine_to_recipe(
                accelerator,
                micro_batch_size=cfg.micro_batch_size,
                grad_accum_steps=cfg.grad_accum_steps,
                max_grad_norm=cfg.max_grad_norm,
            )
        self.module, self.optimizer = accelerator.prepare(model.module, optimizer)
        self.stepper: Stepper = (
            DeepSpeedStepper(self.module)
            if zero.is_deepspeed(accelerator)
            else AccelerateStepper(accelerator, self.module, self.optimizer, cfg.max_grad_norm)
        )
        self.checkpoints = Checkpoints(
            ctx.run_dir, accelerator, keep_last=cfg.keep_last, events=events,
            global_micro_batch=cfg.micro_batch_size * self.world, seed=ctx.seed, streamed=not self.batches.sized,
        )  # fmt: skip
        self.tracker = BestTracker(recipe.eval, lower_is_better=recipe.monitor_lower_is_better())
        self.live: ProgressDisplay | None = None  # the progress display, while the loop runs
        self.state = self.start(resume_from)
        self.notes += self.checkpoints.notes

    @property
    def step(self) -> int:
        """The last step done, its update applied or skipped (the resumed step before the first)."""
        return self.state.progress.step

    # -- the loop, top to bottom -------------------------------------------------------------------

    def run(
        self,
        *,
        display: Callable[[int, int], ProgressDisplay],
        on_step_end: Callable[[int], None] | None,
    ) -> TrainResult:
        state = self.state
        self.module.train()
        with stop_signals() as signals, display(self.steps, self.step) as self.live:
            if state.result.resumed_from is None:
                self.evaluate_now(0)  # the baseline every later evaluation is compared with
            while self.step < self.steps:
                step = self.step + 1
                batches = self.take_micro_batches(step)
                step_loss = self.forward_backward(batches)
                loss = float(step_loss) / batches.targets
                updated = math.isfinite(loss)
                if updated:
                    self.optimizer_step(step)
                else:
                    self.skip_update(step, batches, loss)
                # The step is done either way: checkpoints, evaluations and the result count it.
                state.progress.position, state.progress.step = batches.position, step
                stop = False
                if updated:
                    self.report(step, batches, step_loss)
                    stop = self.maybe_evaluate(step)
                    if on_step_end is not None:
                        on_step_end(step)
                interrupted = _agreed(self.accelerator, bool(signals))
                self.maybe_checkpoint(step, interrupted=interrupted)
                if interrupted:
                    raise Interrupted(
                        f"Stopped by {signals[0] if signals else 'a signal'} at step {step}; a checkpoint was saved",
                        fix="Continue with `loraplug run RECIPE --resume`",
                    )
                if stop:
                    self.stop_early(step)
                    break
        return self.finish()

    def start(self, resume_from: Path | None) -> TrainState:
        """A fresh state, or the checkpoint's: weights, optimizer, schedule, random generators, data position."""
        progress = Progress()
        if resume_from is not None:
            progress = self.checkpoints.restore(
                resume_from, module=self.model.module, optimizer=self.optimizer, scheduler=self.scheduler
            )
        result = TrainResult(
            steps=progress.step,
            seconds=0.0,
            tokens=0,
            resumed_from=progress.step if resume_from is not None else None,
        )
        window = Window(loss=torch.zeros((), dtype=torch.float64, device=self.accelerator.device))
        return TrainState(
            progress=progress, result=result, stream=self.batches.iterate(progress.position), window=window
        )

    def take_micro_batches(self, step: int) -> StepBatches:
        """``grad_accum_steps`` micro-batches, with their targets and tokens counted on every process."""
        group: list[Batch] = []
        for _ in range(self.cfg.grad_accum_steps):
            try:
                position, batch = next(self.state.stream)
            except StopIteration:
                raise LoraplugError(
                    "The training data yielded no batches", fix="Check the data source"
                ) from None
            group.append(batch)
        device = self.accelerator.device
        counts = torch.tensor(
            [sum(b.num_targets for b in group), sum(b.num_tokens for b in group)],
            dtype=torch.float64,
            device=device,
        )
        targets, tokens = (int(x) for x in reduce_sum(self.accelerator, counts).tolist())
        if targets == 0:
            raise LoraplugError(
                f"Step {step} has no targets to learn from (samples {', '.join(_ids(group, 5))})",
                fix="Every sample's target was masked or truncated; raise max_length or check the data",
            )
        return StepBatches(group=group, position=position, targets=targets, tokens=tokens)

    def forward_backward(self, batches: StepBatches) -> torch.Tensor:
        """Forward and backward each micro-batch, scaled by the whole step's target count; the step's
        summed loss over every process. DDP averages gradients over processes, hence the factor ``world``."""
        accelerator, device = self.accelerator, self.accelerator.device
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        step_metrics: dict[str, float] = {}
        self.step_metrics = {}
        for index, batch in enumerate(batches.group):
            micro = self.state.micro_count + 1
            last = index == len(batches.group) - 1
            # Under DDP gradients are synchronised once per step, on its last micro-batch.
            with self.stepper.accumulating(last):
                out = self.step_fn(
                    model=self.model, module=self.module, batch=move_to(batch, device), ctx=self.ctx
                )
                self.events.after_forward(micro, self.rank, out)
                self.stepper.backward(out.loss_sum * (self.world / batches.targets))
            step_loss += out.loss_sum.detach().double()
            for name, value in out.metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + float(value)
            self.state.micro_count = micro
            self.events.after_backward(micro, self.rank)
        if step_metrics:  # every process's objective returns the same names
            summed = reduce_sum(
                accelerator, torch.tensor(list(step_metrics.values()), dtype=torch.float64, device=device)
            )
            self.step_metrics = dict(zip(step_metrics, summed.tolist(), strict=True))
        return reduce_sum(accelerator, step_loss)

    def skip_update(self, step: int, batches: StepBatches, loss: float) -> None:
        """A NaN or infinite loss never reaches the weights: stop (``train.on_nan = "stop"``, or too many
        in a row), or drop this step's gradients and go on."""
        progress = self.state.progress
        message = f"The loss became {loss} at step {step}"
        if self.cfg.on_nan == "stop" or progress.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            kept = self.checkpoints.newest()
            raise LoraplugError(
                message
                + (
                    f" ({progress.skipped_in_a_row} steps in a row skipped before)"
                    if progress.skipped_in_a_row
                    else ""
                ),
                where=f"samples {', '.join(_ids(batches.group, 8))}",
                fix="Lower train.lr, use bf16 instead of fp16, or inspect those samples"
                + (f"; the last good checkpoint is {kept}" if kept else ""),
            )
        progress.skipped_steps += 1
        progress.skipped_in_a_row += 1
        self.stepper.discard()
        self.note(f"warning: {message}; skipped the update (samples {', '.join(_ids(batches.group, 4))})")
        self.sinks.log(step, {"skipped_nan_steps": progress.skipped_steps}, split="train")

    def optimizer_step(self, step: int) -> None:
        """Clip, step, clear the gradients; then schedule."""
        self.stepper.apply()
        self.scheduler.step()
        self.state.progress.skipped_in_a_row = 0  # an update went in: the next NaN starts a new count
        self.events.after_step(step, self.rank)

    def report(self, step: int, batches: StepBatches, step_loss: torch.Tensor) -> None:
        """The progress line every step; the loss, lr and throughput to the sinks every ``log_every_n_steps``."""
        state, window = self.state, self.state.window
        window.loss += step_loss
        window.targets += batches.targets
        window.tokens += batches.tokens
        for name, value in self.step_metrics.items():
            window.metrics[name] = window.metrics.get(name, 0.0) + value
        state.result.tokens += batches.tokens
        log_now = step % self.cfg.log_every_n_steps == 0 or step == self.steps
        elapsed = time.monotonic() - window.start
        rate = window.tokens / elapsed if elapsed > 0 else 0.0
        lr = float(self.scheduler.get_last_lr()[0])
        loss = float(window.loss) / max(1, window.targets)
        if self.live is not None:
            self.live.update(step, loss=loss, lr=lr, tokens_per_s=rate, log=log_now)
        if log_now:
            state.result.train_loss = loss
            means = {name: value / max(1, window.targets) for name, value in window.metrics.items()}
            self.sinks.log(step, {"loss": loss, "lr": lr, "tokens_per_s": rate, **means}, split="train")
            window.reset()

    def maybe_evaluate(self, step: int) -> bool:
        """Evaluate every ``eval.every_n_steps`` (the last step is evaluated by :meth:`finish`); whether to stop early."""
        every = self.recipe.eval.every_n_steps
        return bool(every and step % every == 0 and step != self.steps) and self.evaluate_now(step)

    def evaluate_now(self, step: int) -> bool:
        """Evaluate, keep the best weights, and say whether to stop early."""
        state, evaluation = self.state, self.recipe.eval
        scores = self.evaluate(self.module)
        if not scores:
            return False
        state.result.evaluations.append((step, scores))
        self.sinks.log(step, scores, split="eval")
        improved = stop = False
        # The baseline is logged but never "best": an untrained adapter is not what anyone exports.
        if step > 0 and (evaluation.monitor in scores or evaluation.early_stopping_patience):
            improved, stop = self.tracker.update(state.progress, scores)
        if improved and evaluation.use_best:
            state.best_weights = trainable_state(
                self.model.module
            )  # a LoRA is small: keep the best in memory
            if self.cfg.save_every_n_steps:
                self.save(BEST)
        line = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        self.note(f"step {step}: {line}{'  (best so far)' if improved else ''}")
        return stop

    def maybe_checkpoint(self, step: int, *, interrupted: bool) -> None:
        """A checkpoint every ``save_every_n_steps`` — and on a signal always, checkpointing on or off:
        Ctrl-C must never cost the steps done."""
        every = self.cfg.save_every_n_steps
        if interrupted or (every and step % every == 0):
            self.save(step_name(step))

    def stop_early(self, step: int) -> None:
        self.state.result.stopped_early = True
        evaluation = self.recipe.eval
        self.note(f"early stopping at step {step}: no improvement of {evaluation.monitor} in "
                  f"{evaluation.early_stopping_patience} evaluations")  # fmt: skip

    def finish(self) -> TrainResult:
        """The last evaluation and checkpoint, the best weights restored (``eval.use_best``), the figures."""
        state, result, progress = self.state, self.state.result, self.state.progress
        result.steps = progress.step
        if not result.stopped_early or not result.evaluations or result.evaluations[-1][0] != result.steps:
            self.evaluate_now(result.steps)
        if self.cfg.save_every_n_steps and not (self.checkpoints.root / step_name(result.steps)).exists():
            self.save(step_name(result.steps))
        result.best = progress.best
        if self.recipe.eval.use_best and progress.best and progress.best["step"] != result.steps:
            if state.best_weights is None:  # resumed after the best evaluation: it is on disk
                load_trainable(self.model.module, self.checkpoints.root / BEST / ADAPTER_FILE)
            else:
                load_trainable_state(self.model.module, state.best_weights)
            result.restored_best = True
            self.note(
                f"using the best weights, from step {progress.best['step']} ({progress.best['metric']} {progress.best['value']:.4f})"
            )
        result.seconds = time.monotonic() - state.started
        # accelerate wrapped the module's forward in autocast; exports and samples after training must see
        # the model as it is, in its own precision.
        self.accelerator.unwrap_model(self.module, keep_fp32_wrapper=False)
        return result

    # -- helpers -----------------------------------------------------------------------------------

    def save(self, name: str) -> None:
        self.checkpoints.save(
            name, module=self.model.module, optimizer=self.optimizer, scheduler=self.scheduler,
            progress=self.state.progress, recipe_hash=self.recipe.hash(),
        )  # fmt: skip

    def note(self, message: str) -> None:
        """A line above the progress bar (the display prints it once the bar is gone, too)."""
        if self.live is not None:
            self.live.note(message)


def _ids(group: list[Batch], limit: int) -> list[str]:
    return [i for b in group for i in b.sample_ids][:limit]


def _agreed(accelerator: Any, flag: bool) -> bool:
    """Whether any process was asked to stop (every process must stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(reduce_sum(accelerator, value).item() > 0)
