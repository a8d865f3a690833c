"""A run from recipe to exports: each stage dispatched to the plugin serving the recipe's kind.

    load_data ─► build_model ─► wrap_adapter ─► prepare_data ─► training loop ─► export × N
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from loraplug import __version__
from loraplug.bundles import DataBundle, ExportResult, ModelBundle, PreparedData, Sample
from loraplug.context import RunContext
from loraplug.errors import LoraplugError, PluginError
from loraplug.plugins import PluginHost
from loraplug.recipe import ExportSection, Recipe, load_recipe
from loraplug.recipe.validate import SMOKE_SAMPLES
from loraplug.report import write_report_or_warn
from loraplug.rundir import (
    ADAPTER_DIR,
    ADAPTER_FILE,
    EXPORTS_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    SAMPLES_DIR,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    claim_run_dir,
    sha256_file,
)
from loraplug.safety import confine
from loraplug.status import RunStatus

#: Libraries whose versions go into every export manifest, when installed.
MANIFEST_LIBRARIES = (
    "torch", "accelerate", "safetensors", "transformers", "peft", "diffusers",
    "onnx", "onnxruntime", "bitsandbytes", "torchao",
)  # fmt: skip


@dataclass
class ExportOutcome:
    name: str
    kind: str
    path: Path
    ok: bool
    loads_with: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)


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


def cache_dir() -> Path:
    return Path(os.environ.get("LORAPLUG_CACHE", Path.home() / ".cache" / "loraplug")).expanduser()


def run_dir_of(recipe: Recipe) -> Path:
    """``output_dir/name``, resolved and confined to ``output_dir`` (a name never writes elsewhere)."""
    return confine(recipe.run.output_dir, recipe.run.name, key="run.name")


def make_accelerator(recipe: Recipe, console: Console) -> Any:
    import torch
    from accelerate import Accelerator

    precision = recipe.train.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        console.print("[yellow]warning:[/] fp16 needs a GPU; training in full precision on the CPU instead (bf16 works on CPUs)")
        precision = "no"
    # accelerate keeps its settings in a process-wide singleton; a second run in the same process
    # (the Python API, tests) may ask for another precision. The distributed state is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a machine without CUDA is what makes accelerate use gloo under torchrun.
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def _check(value: Any, expected: type, distribution: str, hook: str) -> Any:
    if not isinstance(value, expected):
        raise PluginError(
            f"{distribution} returned {type(value).__name__} from {hook}, expected {expected.__name__}",
            fix=f"This is a bug in {distribution}",
        )
    return value


def build_stages(host: PluginHost, recipe: Recipe, ctx: RunContext) -> ModelBundle:
    """Build the base model and attach the adapter, with the seed set before the adapter's init."""
    from accelerate.utils import set_seed

    model = _check(
        host.call_stage("model", recipe.model.kind, options=recipe.model.options, ctx=ctx),
        ModelBundle, recipe.model.served.distribution, "loraplug_build_model",
    )  # fmt: skip
    set_seed(ctx.seed)
    return _check(
        host.call_stage("adapter", recipe.adapter.kind, recipe.model.kind, options=recipe.adapter.options, model=model, ctx=ctx),
        ModelBundle, recipe.adapter.served.distribution, "loraplug_wrap_adapter",
    )  # fmt: skip


def load_data(host: PluginHost, recipe: Recipe, ctx: RunContext) -> DataBundle:
    """The ``[data]`` section's records: capped under ``--smoke``, then cleaned and weighted."""
    from loraplug.data.stage import clean_and_weigh

    data = _check(
        host.call_stage("data", recipe.data.kind, recipe.model.kind, options=recipe.data.options, ctx=ctx),
        DataBundle, recipe.data.served.distribution, "loraplug_load_data",
    )  # fmt: skip
    return clean_and_weigh(_cap(data, SMOKE_SAMPLES) if ctx.smoke else data, recipe)


def prepare_data(host: PluginHost, recipe: Recipe, model: ModelBundle, data: DataBundle, ctx: RunContext) -> PreparedData:
    """Records → encoded samples, by the plugin serving the model's kind (sample weights attached)."""
    from loraplug.data.stage import finish_prepared

    prepared = _check(
        host.call_model_hook("loraplug_prepare_data", recipe.model.kind, model=model, options=recipe.model.options, data=data, ctx=ctx),
        PreparedData, recipe.model.served.distribution, "loraplug_prepare_data",
    )  # fmt: skip
    return finish_prepared(data, prepared, recipe, recipe.model.served.distribution)


def generate(host: PluginHost, model: ModelBundle, recipe: Recipe, prompts: list[str], out_dir: Path, ctx: RunContext) -> list[Sample]:
    import torch

    if not prompts:
        return []
    module = model.module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            samples = host.call_model_hook(
                "loraplug_generate", model.kind, model=model, options=recipe.model.options, prompts=prompts, out_dir=out_dir, ctx=ctx
            )
    finally:
        module.train(was_training)
    return list(samples)


def _write_samples(run_dir: Path, step: int, samples: list[Sample], sinks: Any) -> None:
    for index, sample in enumerate(samples):
        if sample.text is not None:
            sinks.log_text(step, f"samples/{index}", f"**{sample.prompt}**\n\n{sample.text}")
        if sample.image_path is not None:
            sinks.log_image(step, f"samples/{index}", sample.image_path)
    records = [
        {"prompt": s.prompt, "text": s.text, "image": str(s.image_path.relative_to(run_dir)) if s.image_path else None}
        for s in samples
    ]
    atomic_write_json(run_dir / SAMPLES_DIR / f"step-{step:06d}.json", records)


def file_manifest(directory: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    files = []
    paths = sorted(p for p in directory.rglob("*") if p.is_file()) if names is None else [directory / n for n in names]
    for path in paths:
        files.append({"path": str(path.relative_to(directory)), "sha256": sha256_file(path), "size": path.stat().st_size})
    return files


def library_versions(*extra: str) -> dict[str, str]:
    versions = {"loraplug": __version__, "python": platform.python_version()}
    for name in (*MANIFEST_LIBRARIES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_export(
    host: PluginHost,
    export: ExportSection,
    model: ModelBundle,
    recipe: Recipe,
    ctx: RunContext,
    *,
    replace: bool,
    adapter_path: Path | None = None,
) -> ExportOutcome:
    """Write one export to ``exports/<name>/`` atomically, with its ``export.json`` manifest.

    :param adapter_path: the trained weights the model holds (the run's adapter or a checkpoint's),
        recorded in the manifest with their sha256.
    """
    final = ctx.run_dir / EXPORTS_DIR / export.name
    try:
        final = confine(final.parent, export.name, key="the export name")  # never outside exports/
        with atomic_dir(final, replace=replace) as tmp:
            result = _check(
                host.call_stage("export", export.kind, recipe.model.kind, options=export.options, model=model, out_dir=tmp, ctx=ctx),
                ExportResult, export.served.distribution, "loraplug_export",
            )  # fmt: skip
            manifest = {
                "kind": export.kind,
                "name": export.name,
                "plugin": {"distribution": export.served.distribution, "version": _dist_version(export.served.distribution)},
                "base_model": model.base,
                "recipe_hash": recipe.hash(),
                "adapter": _adapter_record(adapter_path, ctx.run_dir),
                "options": json.loads(json.dumps(export.options.model_dump(mode="json"))),
                "files": file_manifest(tmp, result.files),
                "figures": result.figures,
                "notes": result.notes,
                "loads_with": result.loads_with,
                "versions": library_versions(export.served.distribution),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_json(tmp / "export.json", manifest)
    except LoraplugError as exc:
        return ExportOutcome(export.name, export.kind, final, ok=False, error=exc.paragraph())
    return ExportOutcome(export.name, export.kind, final, ok=True, loads_with=result.loads_with, notes=result.notes)


def _adapter_record(adapter_path: Path | None, run_dir: Path) -> dict[str, Any] | None:
    if adapter_path is None or not adapter_path.exists():
        return None
    entry = file_manifest(adapter_path.parent, [adapter_path.name])[0]
    return {**entry, "path": os.path.relpath(adapter_path, run_dir)}


def _dist_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


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
    from accelerate.utils import set_seed

    from loraplug.data.stage import show_report
    from loraplug.resume import logged_evaluations, resume_point, truncate_metrics
    from loraplug.training.autobatch import resolve_batch_size
    from loraplug.training.evaluation import Evaluator
    from loraplug.training.loop import Interrupted, train
    from loraplug.training.progress import ProgressDisplay
    from loraplug.training.sinks import JsonlSink, Sinks, TensorBoardSink
    from loraplug.training.weights import save_trainable

    accelerator = make_accelerator(recipe, console)
    main = accelerator.is_main_process
    run_dir = run_dir_of(recipe)

    def info(message: str) -> None:
        if main:
            console.print(message, highlight=False)

    def warn(message: str) -> None:
        if main:
            console.print(f"[yellow]warning:[/] {message}", highlight=False)

    aside = None
    checkpoint = None
    if resume:
        checkpoint = resume_point(run_dir, recipe, host, accelerator, force=force, warn=warn)
        info(f"resuming from {checkpoint}")
    elif main:
        aside = claim_run_dir(run_dir, overwrite=overwrite, smoke=smoke)
    accelerator.wait_for_everyone()

    ctx = RunContext(
        recipe=recipe,
        run_dir=run_dir,
        cache_dir=cache_dir(),
        smoke=smoke,
        seed=recipe.run.seed,
        is_main_process=main,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        device=accelerator.device,
        info=info,
        warn=warn,
    )
    resumed_step = int(checkpoint.name.removeprefix("step-")) if checkpoint else 0
    if main:
        if checkpoint is None:
            atomic_write_text(run_dir / RECIPE_FILE, recipe.to_toml())
        else:
            truncate_metrics(run_dir / METRICS_FILE, resumed_step)
        RunStatus.update(
            run_dir,
            status="running",
            recipe_hash=recipe.hash(),
            **({} if checkpoint else {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}),
            **({"resumed_at_step": resumed_step} if checkpoint else {}),
            loraplug_version=__version__,
            smoke=smoke,
            processes=accelerator.num_processes,
            step=resumed_step,
            error=None,
            # Who runs it: `runs list` tells a killed run (process gone) from a running one.
            pid=os.getpid(),
            host=socket.gethostname(),
        )
    sinks = Sinks([])
    status = "failed"
    steps_done = {"step": resumed_step}  # updated after every optimizer step, for the failure record
    try:
        if main:
            extra = [s for s in host.broadcast("loraplug_metric_sinks", ctx=ctx) if s is not None]
            board = TensorBoardSink(run_dir / "tb", purge_step=resumed_step + 1 if checkpoint else None)
            sinks = Sinks([JsonlSink(run_dir / METRICS_FILE), board, *extra])
        set_seed(ctx.seed)
        data = load_data(host, recipe, ctx)
        model = build_stages(host, recipe, ctx)
        prepared = prepare_data(host, recipe, model, data, ctx)
        ctx.load_prepared_data = lambda: prepared
        if main:
            show_report(data.report, console, run_dir)
        summary = {**data.summary, **prepared.summary}
        info("data: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        if main:
            RunStatus.update(run_dir, data=summary)

        prompts = list(recipe.eval.sample_prompts)
        before = generate(host, model, recipe, prompts, run_dir / SAMPLES_DIR, ctx) if main and not checkpoint else []
        if before:
            _write_samples(run_dir, 0, before, sinks)

        # The periodic samples of the last step, so the final ones are not generated and written twice
        # when sample_every_n_steps divides the step count.
        sampled: dict[int, list[Any]] = {}

        def on_step_end(step: int) -> None:
            steps_done["step"] = step
            every = recipe.eval.sample_every_n_steps
            if main and every and step % every == 0:
                sampled.clear()
                sampled[step] = generate(host, model, recipe, prompts, run_dir / SAMPLES_DIR, ctx)
                _write_samples(run_dir, step, sampled[step], sinks)
            if main and step % recipe.train.log_every_n_steps == 0:
                RunStatus.update(run_dir, step=step)

        step_fn = host.bound_model_hook("loraplug_train_step", recipe.model.kind)
        previous = (RunStatus.load(run_dir) or RunStatus()).auto_batch if checkpoint else None
        recipe = resolve_batch_size(recipe, model, prepared, step_fn, accelerator, ctx, previous=previous)
        ctx.recipe = recipe
        by_plugin: dict[int, tuple[Any, list[str]]] = {}
        for name, served in recipe.metrics.items():
            by_plugin.setdefault(id(served.plugin), (served, []))[1].append(name)
        evaluator = Evaluator(
            accelerator=accelerator,
            step_fn=step_fn,
            metric_calls=[(host.bind(served, "loraplug_evaluate"), names) for served, names in by_plugin.values()],
            model=model,
            prepared=prepared,
            data=data,
            recipe=recipe,
            ctx=ctx,
        )
        result = train(
            accelerator=accelerator,
            step_fn=step_fn,
            model=model,
            prepared=prepared,
            recipe=recipe,
            ctx=ctx,
            sinks=sinks,
            evaluate=evaluator,
            display=lambda total, start: ProgressDisplay(console, total, enabled=main, start_step=start, unit=prepared.unit),
            on_step_end=on_step_end,
            resume_from=checkpoint,
        )
        if checkpoint is not None and main:  # what was evaluated before the resume, from the step-0 baseline on
            result.evaluations[:0] = logged_evaluations(run_dir / METRICS_FILE, up_to=resumed_step)
        adapter_path = run_dir / ADAPTER_DIR / ADAPTER_FILE
        if main:
            save_trainable(model.module, adapter_path, metadata={"loraplug.recipe_hash": recipe.hash()})
        # Best weights restored at the end change the model after the last periodic sample.
        after = sampled.get(result.steps) if not result.restored_best else None
        if after is None:
            after = generate(host, model, recipe, prompts, run_dir / SAMPLES_DIR, ctx) if main else []
            if after:
                _write_samples(run_dir, result.steps, after, sinks)
        if data.final_summary is not None:  # streams: what reading them found (corrupt samples skipped)
            as_read = data.final_summary()
            summary.update(as_read)
            info("data, as read: " + ", ".join(f"{k} {v}" for k, v in as_read.items()))
            if main:
                RunStatus.update(run_dir, data=summary)
        ctx.final_metrics = final_metrics(result.train_loss, result.evaluations, result.best if result.restored_best else None)
        if main:
            RunStatus.update(run_dir, status="exporting", step=result.steps)
        exports = [run_export(host, e, model, recipe, ctx, replace=False, adapter_path=adapter_path) for e in recipe.exports] if main else []
        accelerator.wait_for_everyone()
        status = "finished"
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "failed"
        if main and aside is not None and steps_done["step"] == 0:
            # Nothing was trained (bad data, a model that would not load): the replaced run goes back in
            # place, so a typo with --overwrite costs nothing.
            sinks.close(status)
            shutil.rmtree(run_dir)
            os.replace(aside, run_dir)
            warn(f"this run failed before its first step: the previous run is back in {run_dir}")
        elif main:
            error = exc.paragraph() if isinstance(exc, LoraplugError) else f"{type(exc).__name__}: {exc}"
            RunStatus.update(run_dir, status=status, error=error, step=steps_done["step"])
            write_report_or_warn(run_dir, warn)
            if aside is not None:
                warn(f"the run you asked to overwrite is kept at {aside}")
        raise
    finally:
        sinks.close(status)

    if main:
        RunStatus.update(
            run_dir,
            status="finished",
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            step=result.steps,
            train_loss=result.train_loss,
            val_losses=result.val_losses,
            evaluations=[{"step": step, **scores} for step, scores in result.evaluations],
            best=result.best,
            stopped_early=result.stopped_early,
            tokens_per_second=round(result.tokens_per_second, 1),
            exports=[{"name": e.name, "kind": e.kind, "ok": e.ok, "error": e.error} for e in exports],
        )
        write_report_or_warn(run_dir, warn)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return RunOutcome(
        run_dir=run_dir,
        steps=result.steps,
        seconds=result.seconds,
        tokens_per_second=result.tokens_per_second,
        val_losses=result.val_losses,
        train_loss=result.train_loss,
        adapter_path=adapter_path,
        exports=exports,
        before=before,
        after=after,
        data_summary=summary,
        best=result.best,
        stopped_early=result.stopped_early,
        resumed_from=result.resumed_from,
        unit=prepared.unit,
    )


def final_metrics(
    train_loss: float | None, evaluations: list[tuple[int, dict[str, float]]], best: dict[str, Any] | None
) -> dict[str, float]:
    """The figures a model card shows: the last training loss, and the scores of the evaluation whose
    weights are exported — the best one when ``eval.use_best`` restored it, otherwise the last."""
    figures = {} if train_loss is None else {"train_loss": round(train_loss, 4)}
    chosen = [e for e in evaluations if best and e[0] == best.get("step")] or evaluations[-1:]
    for step, scores in chosen:
        figures.update({name: round(value, 4) for name, value in scores.items()})
        figures["evaluated_at_step"] = step
    return figures


def _cap(data: DataBundle, limit: int) -> DataBundle:
    from collections.abc import Sequence
    from dataclasses import replace
    from itertools import islice

    train = list(data.train[:limit]) if isinstance(data.train, Sequence) else list(islice(data.train, limit))
    val = list(data.val[: max(2, limit // 4)]) if data.val else data.val
    return replace(data, train=train, val=val, summary={**data.summary, "smoke cap": limit})


def load_run(
    run_dir: Path, host: PluginHost, console: Console, *, with_adapter: bool = True, adapter_path: Path | None = None
) -> tuple[Recipe, RunContext, ModelBundle]:
    """Rebuild a finished run's model with its trained adapter (for ``generate`` and re-exports).

    :param with_adapter: load the trained weights; without, the adapter keeps its initialisation,
        which leaves the base model's behaviour unchanged.
    :param adapter_path: the weights to load (a checkpoint's); default: the run's final adapter.
    """
    from functools import cache

    from loraplug.training.weights import load_trainable

    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.exists():
        raise LoraplugError(
            f"{run_dir} is not a loraplug run directory (no {RECIPE_FILE})",
            fix="Pass the directory `loraplug run` printed, e.g. runs/quickstart",
        )
    recipe = load_recipe(recipe_path, host, check_files=False)
    status = RunStatus.load(run_dir) or RunStatus()
    ctx = RunContext(
        recipe=recipe,
        run_dir=run_dir,
        cache_dir=cache_dir(),
        smoke=status.smoke,
        seed=recipe.run.seed,
        info=lambda m: console.print(m, highlight=False),
        warn=lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False),
        # A checkpoint's weights are not the finished run's: its card gets no final figures.
        final_metrics=final_metrics(status.train_loss, status.evaluation_scores(), status.best if recipe.eval.use_best else None)
        if adapter_path is None
        else {},
    )
    model = build_stages(host, recipe, ctx)
    if with_adapter:
        load_trainable(model.module, adapter_path or run_dir / ADAPTER_DIR / ADAPTER_FILE)
    # Read and encoded only if an export asks for it (quantization drift on the validation split).
    ctx.load_prepared_data = cache(lambda: prepare_data(host, recipe, model, load_data(host, recipe, ctx), ctx))
    return recipe, ctx, model
