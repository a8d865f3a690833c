"""One run of a recipe, read top to bottom (the shape of torchtune's recipes).

::

    Run(recipe, host, console=console).execute()
      claim()          the run directory for a new run, or the checkpoint a --resume continues
      start()          the recipe and run.json written: the run is "running"
      setup()          data, model + adapter, encoded samples, samples before training, the batch size
      training_loop()  the optimizer and schedule built, a checkpoint restored
      train()          the training loop run; the trained adapter saved
      finish()         samples after training, the exports
      close()          run.json says "finished", the report is written, a replaced run is deleted

Each phase returns what it made as a typed value (:class:`Claim`, :class:`Setup`, the
:class:`~loraplug.training.loop.TrainingLoop`, :class:`Trained`, :class:`Finished`) that the next phase
takes; the run's context is never changed in place — set-up derives the training context (batch size
resolved, prepared data attached) and finishing derives the exporters' (final metrics).

A failure after start() is recorded in ``run.json`` — ``failed``, or ``interrupted`` for Ctrl-C and
SIGTERM — with the step the training loop reached and the report; when nothing was trained yet, the
run an ``--overwrite`` replaced is put back instead. Only the main process writes; every process runs
every phase.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from loraplug import __version__
from loraplug.bundles import DataBundle, ModelBundle, PreparedData, Sample
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.pipeline import (
    ExportOutcome,
    build_stages,
    cache_dir,
    final_metrics,
    generate,
    load_data,
    make_accelerator,
    prepare_data,
    run_dir_of,
    run_export,
    write_samples,
)
from loraplug.plugins import PluginHost
from loraplug.recipe import Recipe
from loraplug.report import write_report_or_warn
from loraplug.rundir import (
    ADAPTER_DIR,
    ADAPTER_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    SAMPLES_DIR,
    atomic_write_text,
    claim_run_dir,
)
from loraplug.status import EXPORTING, FAILED, FINISHED, INTERRUPTED, RUNNING, RunStatus

if TYPE_CHECKING:
    from loraplug.kinds import Served
    from loraplug.toolkit import StepFn
    from loraplug.training.evaluation import Evaluator
    from loraplug.training.loop import TrainingLoop, TrainResult
    from loraplug.training.sinks import Sinks


@dataclass
class RunOutcome:
    """What ``loraplug run`` prints at the end."""

    run_dir: Path
    steps: int
    seconds: float
    tokens_per_second: float
    val_losses: list[tuple[int, float]]
    train_loss: float | None
    adapter_path: Path
    exports: list[ExportOutcome]
    before: list[Sample]
    after: list[Sample]
    data_summary: dict[str, Any]
    best: dict[str, Any] | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    # What tokens_per_second counts (PreparedData.unit): "tokens", "images".
    unit: str = "tokens"


@dataclass(frozen=True)
class Claim:
    """Where the run starts: fresh in its directory, or from a checkpoint (``--resume``)."""

    #: The checkpoint a ``--resume`` continues from.
    checkpoint: Path | None = None
    #: The run ``--overwrite`` replaces, moved aside until this one has trained (then deleted).
    aside: Path | None = None

    @property
    def resumed_step(self) -> int:
        return int(self.checkpoint.name.removeprefix("step-")) if self.checkpoint else 0


@dataclass(frozen=True)
class Setup:
    """Everything training needs, made by :meth:`Run.setup`."""

    #: The training context: the recipe with its batch size resolved, the prepared data attached.
    ctx: RunContext
    data: DataBundle
    model: ModelBundle
    prepared: PreparedData
    #: The data summary printed and recorded (the data kind's and the model kind's counts).
    summary: dict[str, Any]
    #: Samples of ``eval.sample_prompts`` before training (none on a resume).
    before: list[Sample]
    step_fn: StepFn
    evaluator: Evaluator


@dataclass(frozen=True)
class Trained:
    """What :meth:`Run.train` made: the loop's figures and the saved adapter."""

    result: TrainResult
    adapter_path: Path
    #: The periodic samples (``eval.sample_every_n_steps``) of the last step, when that step was
    #: sampled: :meth:`Run.finish` does not generate and write them twice.
    last_step_samples: list[Sample] | None = None


@dataclass(frozen=True)
class Finished:
    """What :meth:`Run.finish` made: the samples after training, the exports, the final data summary."""

    after: list[Sample]
    exports: list[ExportOutcome]
    summary: dict[str, Any]


class Run:
    """One ``loraplug run``: build it with the validated recipe, then :meth:`execute` it."""

    def __init__(
        self,
        recipe: Recipe,
        host: PluginHost,
        *,
        console: Console,
        smoke: bool = False,
        overwrite: bool = False,
        resume: bool = False,
        force: bool = False,
    ) -> None:
        from loraplug.training.sinks import Sinks

        self.recipe = recipe
        self.host = host
        self.console = console
        self.smoke, self.overwrite, self.resume, self.force = smoke, overwrite, resume, force
        self.accelerator = make_accelerator(recipe, console)
        self.main: bool = self.accelerator.is_main_process
        self.run_dir = run_dir_of(recipe)
        # Open from set-up on (main process), closed once with the run's final status.
        self.sinks: Sinks = Sinks([])

    # -- the run, top to bottom --------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        """Run the recipe end to end — or continue it from its newest checkpoint — and report."""
        claim = self.claim()
        ctx = self.start(claim)
        status, loop = FAILED, None
        try:
            setup = self.setup(ctx, claim)
            loop = self.training_loop(setup, claim)
            trained = self.train(setup, claim, loop)
            finished = self.finish(setup, trained)
            status = FINISHED
        except BaseException as exc:
            # The failure record's step: the last one the loop did, or where the run started.
            status = self.fail(claim, exc, step=claim.resumed_step if loop is None else loop.step)
            raise
        finally:
            self.sinks.close(status)
        self.close(claim, trained, finished)
        result = trained.result
        return RunOutcome(
            run_dir=self.run_dir,
            steps=result.steps,
            seconds=result.seconds,
            tokens_per_second=result.tokens_per_second,
            val_losses=result.val_losses,
            train_loss=result.train_loss,
            adapter_path=trained.adapter_path,
            exports=finished.exports,
            before=setup.before,
            after=finished.after,
            data_summary=finished.summary,
            best=result.best,
            stopped_early=result.stopped_early,
            resumed_from=result.resumed_from,
            unit=setup.prepared.unit,
        )

    def claim(self) -> Claim:
        """The checkpoint to resume from (every check ``--resume`` needs), or the run directory claimed
        for a new run under loraplug's replace rule (:func:`loraplug.rundir.claim_run_dir`)."""
        from loraplug.resume import resume_point

        claim = Claim()
        if self.resume:
            checkpoint = resume_point(
                self.run_dir, self.recipe, self.host, self.accelerator, force=self.force, warn=self.warn
            )
            self.info(f"resuming from {checkpoint}")
            claim = Claim(checkpoint=checkpoint)
        elif self.main:
            claim = Claim(aside=claim_run_dir(self.run_dir, overwrite=self.overwrite, smoke=self.smoke))
        self.accelerator.wait_for_everyone()
        return claim

    def start(self, claim: Claim) -> RunContext:
        """The context every hook gets; the resolved recipe and ``run.json`` (``running``) written."""
        from loraplug.resume import truncate_metrics

        recipe, accelerator = self.recipe, self.accelerator
        ctx = RunContext(
            recipe=recipe,
            run_dir=self.run_dir,
            cache_dir=cache_dir(),
            smoke=self.smoke,
            seed=recipe.run.seed,
            is_main_process=self.main,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            device=accelerator.device,
            info=self.info,
            warn=self.warn,
        )
        if not self.main:
            return ctx
        if claim.checkpoint is None:
            atomic_write_text(self.run_dir / RECIPE_FILE, recipe.to_toml())
        else:  # what the stopped run logged after its checkpoint is logged again
            truncate_metrics(self.run_dir / METRICS_FILE, claim.resumed_step)
        self.record(
            status=RUNNING,
            recipe_hash=recipe.hash(),
            **({} if claim.checkpoint else {"started_at": _now()}),
            **({"resumed_at_step": claim.resumed_step} if claim.checkpoint else {}),
            loraplug_version=__version__,
            smoke=self.smoke,
            processes=accelerator.num_processes,
            step=claim.resumed_step,
            error=None,
            # Who runs it: `runs list` tells a killed run (process gone) from a running one.
            pid=os.getpid(),
            host=socket.gethostname(),
            # The monitored metric's direction as its plugin declared it: `runs list` ranks without plugins.
            monitor={"metric": recipe.eval.monitor, "lower_is_better": recipe.monitor_lower_is_better()},
        )
        return ctx

    def setup(self, ctx: RunContext, claim: Claim) -> Setup:
        """Sinks, data, model with its adapter, encoded samples, the samples before training, and the
        batch size (``auto`` measured now, or reused from when a resumed run started)."""
        from accelerate.utils import set_seed

        from loraplug.data.stage import show_report
        from loraplug.training.autobatch import resolve_batch_size
        from loraplug.training.evaluation import Evaluator

        recipe, host = ctx.recipe, self.host
        self.sinks = self.open_sinks(ctx, claim)
        set_seed(ctx.seed)
        data = load_data(host, recipe, ctx)
        model = build_stages(host, recipe, ctx)
        prepared = prepare_data(host, recipe, model, data, ctx)
        # From here on, exporters and metrics can ask for the data just prepared (ctx.prepared_data()).
        ctx = replace(ctx, load_prepared_data=lambda: prepared)
        if self.main:
            show_report(data.report, self.console, self.run_dir)
        summary = {**data.summary, **prepared.summary}
        self.info("data: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        self.record(data=summary)

        before = self.samples(ctx, model) if self.main and claim.checkpoint is None else []
        if before:
            write_samples(self.run_dir, 0, before, self.sinks)

        step_fn = host.train_step(recipe.model.kind, recipe.objective.served if recipe.objective else None)
        previous = (RunStatus.load(self.run_dir) or RunStatus()).auto_batch if claim.checkpoint else None
        recipe = resolve_batch_size(
            recipe, model, prepared, step_fn, self.accelerator, ctx, previous=previous
        )
        ctx = replace(ctx, recipe=recipe)
        evaluator = Evaluator(
            accelerator=self.accelerator,
            step_fn=step_fn,
            metric_calls=self.metric_calls(recipe),
            model=model,
            prepared=prepared,
            data=data,
            recipe=recipe,
            ctx=ctx,
        )
        return Setup(
            ctx=ctx,
            data=data,
            model=model,
            prepared=prepared,
            summary=summary,
            before=before,
            step_fn=step_fn,
            evaluator=evaluator,
        )

    def training_loop(self, setup: Setup, claim: Claim) -> TrainingLoop:
        """The training loop (loraplug.training.loop) over the set-up model and data: the recipe's
        optimizer and schedule built, and restored from the checkpoint a ``--resume`` continues."""
        from loraplug.training import faults, sharding, zero
        from loraplug.training.events import LoopEvents
        from loraplug.training.loop import TrainingLoop
        from loraplug.training.optim import optimizer_maker

        ctx = setup.ctx
        loop = TrainingLoop(
            accelerator=self.accelerator,
            step_fn=setup.step_fn,
            model=setup.model,
            prepared=setup.prepared,
            recipe=ctx.recipe,
            ctx=ctx,
            sinks=self.sinks,
            evaluate=setup.evaluator,
            make_optimizer=optimizer_maker(self.host, ctx.recipe, ctx),
            # LORAPLUG_FAULT: the failure tests' faults, told at the loop's points (nothing when unset).
            events=faults.from_env() or LoopEvents(),
            resume_from=claim.checkpoint,
        )
        for line in [
            *loop.notes,
            sharding.describe(loop.module),
            zero.describe(loop.module, self.accelerator),
        ]:
            if line:
                self.info(line)
        return loop

    def train(self, setup: Setup, claim: Claim, loop: TrainingLoop) -> Trained:
        """The training loop run to its end, then the adapter saved."""
        from loraplug.resume import logged_evaluations
        from loraplug.training.progress import ProgressDisplay
        from loraplug.training.weights import trainable_state, write_trainable

        ctx, main, unit = setup.ctx, self.main, setup.prepared.unit
        after_step = AfterEachStep(self, setup)
        result = loop.run(
            display=lambda total, start: ProgressDisplay(
                self.console, total, enabled=main, start_step=start, unit=unit
            ),
            on_step_end=after_step,
        )
        if (
            claim.checkpoint is not None and main
        ):  # what was evaluated before the resume, from the step-0 baseline on
            result.evaluations[:0] = logged_evaluations(self.run_dir / METRICS_FILE, up_to=claim.resumed_step)
        adapter_path = self.run_dir / ADAPTER_DIR / ADAPTER_FILE
        weights = trainable_state(setup.model.module)  # every process: FSDP gathers each parameter's shards
        if main:
            write_trainable(weights, adapter_path, metadata={"loraplug.recipe_hash": ctx.recipe.hash()})
        return Trained(
            result=result, adapter_path=adapter_path, last_step_samples=after_step.samples_of(result.steps)
        )

    def finish(self, setup: Setup, trained: Trained) -> Finished:
        """The samples after training, what reading a stream found, and the exports."""
        from loraplug.training import zero
        from loraplug.training.sharding import is_fsdp
        from loraplug.training.weights import load_trainable

        result, ctx, model = trained.result, setup.ctx, setup.model
        if self.main and (is_fsdp(self.accelerator) or zero.is_deepspeed(self.accelerator)):
            # Each process holds one shard of every weight (FSDP, ZeRO-3), or DeepSpeed converted the model
            # to its training precision; the main process alone samples and exports, so it builds the model
            # again, whole and as loaded, with the trained adapter just written.
            model = build_stages(self.host, ctx.recipe, ctx)
            load_trainable(model.module, trained.adapter_path)
        # Best weights restored at the end change the model after the last periodic sample.
        after = trained.last_step_samples if not result.restored_best else None
        if after is None:
            after = self.samples(ctx, model) if self.main else []
            if after:
                write_samples(self.run_dir, result.steps, after, self.sinks)
        summary = dict(setup.summary)
        if setup.data.final_summary is not None:  # streams: what reading them found (corrupt samples skipped)
            as_read = setup.data.final_summary()
            summary.update(as_read)
            self.info("data, as read: " + ", ".join(f"{k} {v}" for k, v in as_read.items()))
            self.record(data=summary)
        # Model cards show the figures of the weights exported: the best evaluation's when restored.
        ctx = replace(
            ctx,
            final_metrics=final_metrics(
                result.train_loss, result.evaluations, result.best if result.restored_best else None
            ),
        )
        self.record(status=EXPORTING, step=result.steps)
        exports = (
            [
                run_export(
                    self.host,
                    e,
                    model,
                    ctx.recipe,
                    ctx,
                    # A resumed run's earlier exports (a finished run trained further) were made from
                    # weights it has replaced: the new ones take their place, once complete.
                    replace=result.resumed_from is not None,
                    adapter_path=trained.adapter_path,
                )
                for e in ctx.recipe.exports
            ]
            if self.main
            else []
        )
        self.accelerator.wait_for_everyone()
        return Finished(after=after, exports=exports, summary=summary)

    def close(self, claim: Claim, trained: Trained, finished: Finished) -> None:
        """``run.json`` says ``finished`` with the final figures; the report; the replaced run deleted."""
        if not self.main:
            return
        result = trained.result
        self.record(
            status=FINISHED,
            finished_at=_now(),
            step=result.steps,
            train_loss=result.train_loss,
            val_losses=result.val_losses,
            evaluations=[{"step": step, **scores} for step, scores in result.evaluations],
            best=result.best,
            stopped_early=result.stopped_early,
            tokens_per_second=round(result.tokens_per_second, 1),
            exports=[
                {"name": e.name, "kind": e.kind, "ok": e.ok, "error": e.error} for e in finished.exports
            ],
        )
        write_report_or_warn(self.run_dir, self.warn)
        if claim.aside is not None:
            shutil.rmtree(claim.aside, ignore_errors=True)

    def fail(self, claim: Claim, exc: BaseException, *, step: int) -> str:
        """Record why the run stopped, at ``step`` (the last step done); returns the status
        (``interrupted`` for a signal, else ``failed``)."""
        from loraplug.training.loop import Interrupted

        status = INTERRUPTED if isinstance(exc, KeyboardInterrupt | Interrupted) else FAILED
        if not self.main:
            return status
        if claim.aside is not None and step == 0:
            # Nothing was trained (bad data, a model that would not load): the replaced run goes back in
            # place, so a typo with --overwrite costs nothing.
            self.sinks.close(status)
            shutil.rmtree(self.run_dir)
            os.replace(claim.aside, self.run_dir)
            self.warn(f"this run failed before its first step: the previous run is back in {self.run_dir}")
            return status
        error = exc.paragraph() if isinstance(exc, LoraplugError) else f"{type(exc).__name__}: {exc}"
        self.record(status=status, error=error, step=step)
        write_report_or_warn(self.run_dir, self.warn)
        if claim.aside is not None:
            self.warn(f"the run you asked to overwrite is kept at {claim.aside}")
        return status

    # -- helpers -----------------------------------------------------------------------------------

    def open_sinks(self, ctx: RunContext, claim: Claim) -> Sinks:
        """metrics.jsonl, TensorBoard and the plugins' sinks, on the main process."""
        from loraplug.training.sinks import JsonlSink, Sinks, TensorBoardSink

        if not self.main:
            return Sinks([])
        # A resumed run's TensorBoard hides what the stopped one logged after its checkpoint.
        board = TensorBoardSink(
            self.run_dir / "tb", purge_step=claim.resumed_step + 1 if claim.checkpoint else None
        )
        return Sinks([JsonlSink(self.run_dir / METRICS_FILE), board, *self.host.metric_sinks(ctx)])

    def metric_calls(self, recipe: Recipe) -> list[tuple[Callable[..., dict[str, float]], list[str]]]:
        """``eval.metrics`` grouped by the plugin that serves them: one ``loraplug_evaluate`` call each,
        its answer checked by the host's facade (:meth:`PluginHost.evaluate`)."""
        by_plugin: dict[int, tuple[Served, list[str]]] = {}
        for name, served in recipe.metrics.items():
            by_plugin.setdefault(id(served.plugin), (served, []))[1].append(name)
        return [(partial(self.host.evaluate, served), names) for served, names in by_plugin.values()]

    def samples(self, ctx: RunContext, model: ModelBundle) -> list[Sample]:
        """The model's outputs for ``eval.sample_prompts``, written under samples/."""
        return generate(
            self.host,
            model,
            ctx.recipe,
            list(ctx.recipe.eval.sample_prompts),
            self.run_dir / SAMPLES_DIR,
            ctx,
        )

    def record(self, **fields: Any) -> None:
        """Update ``run.json`` (main process only)."""
        if self.main:
            RunStatus.update(self.run_dir, **fields)

    def info(self, message: str) -> None:
        if self.main:
            self.console.print(message, highlight=False)

    def warn(self, message: str) -> None:
        if self.main:
            self.console.print(f"[yellow]warning:[/] {message}", highlight=False)


class AfterEachStep:
    """What a run does after each optimizer step that updated the weights (the loop's ``on_step_end``):
    the periodic samples of ``eval.sample_every_n_steps``, and the step in ``run.json``. It keeps the
    last samples it took, which :meth:`Run.finish` reuses when they are the last step's."""

    def __init__(self, run: Run, setup: Setup) -> None:
        self.run, self.setup = run, setup
        self.last: tuple[int, list[Sample]] | None = None

    def __call__(self, step: int) -> None:
        run, recipe = self.run, self.setup.ctx.recipe
        every = recipe.eval.sample_every_n_steps
        if run.main and every and step % every == 0:
            samples = run.samples(self.setup.ctx, self.setup.model)
            write_samples(run.run_dir, step, samples, run.sinks)
            self.last = (step, samples)
        if step % recipe.train.log_every_n_steps == 0:
            run.record(step=step)

    def samples_of(self, step: int) -> list[Sample] | None:
        """The periodic samples of ``step``, if it was the last step sampled."""
        return self.last[1] if self.last is not None and self.last[0] == step else None


def execute(
    recipe: Recipe,
    host: PluginHost,
    *,
    console: Console,
    smoke: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    force: bool = False,
) -> RunOutcome:
    """Run a validated recipe end to end — or continue it from its newest checkpoint — and report."""
    return Run(
        recipe, host, console=console, smoke=smoke, overwrite=overwrite, resume=resume, force=force
    ).execute()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
