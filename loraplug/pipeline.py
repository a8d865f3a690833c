"""The stages of a run, each dispatched to the plugin serving the recipe's kind.

    load_data ─► build_model ─► wrap_adapter ─► prepare_data ─► training loop ─► export × N

:class:`loraplug.run.Run` calls them in that order for ``loraplug run``; ``loraplug export`` and
``generate`` rebuild a finished run's model with :func:`load_run`. Each hook's answer is typed by the
plugin host's facade (``host.load_data``, ``host.build_model``…), which checks it once.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from loraplug import __version__
from loraplug.bundles import DataBundle, ModelBundle, PreparedData, Sample
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.plugins import PluginHost
from loraplug.recipe import ExportSection, Recipe, load_recipe
from loraplug.recipe.validate import SMOKE_SAMPLES
from loraplug.rundir import (
    ADAPTER_DIR,
    ADAPTER_FILE,
    EXPORTS_DIR,
    RECIPE_FILE,
    SAMPLES_DIR,
    atomic_dir,
    atomic_write_json,
    sha256_file,
)
from loraplug.safety import confine
from loraplug.status import RunStatus
from loraplug.toolkit import cache_dir as cache_dir  # public there; run.py and the CLI get it here

if TYPE_CHECKING:
    from loraplug.training.sinks import Sinks

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


def run_dir_of(recipe: Recipe) -> Path:
    """``output_dir/name``, resolved and confined to ``output_dir`` (a name never writes elsewhere)."""
    return confine(recipe.run.output_dir, recipe.run.name, key="run.name")


def make_accelerator(recipe: Recipe, console: Console) -> Any:
    import torch
    from accelerate import Accelerator

    precision = recipe.train.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        console.print(
            "[yellow]warning:[/] fp16 needs a GPU; training in full precision on the CPU instead (bf16 works on CPUs)"
        )
        precision = "no"
    # accelerate keeps its settings in a process-wide singleton; a second run in the same process
    # (the Python API, tests) may ask for another precision. The distributed state is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    from loraplug.training import zero
    from loraplug.training.sharding import refuse_main_process_model_calls, use_fsdp_on_cpus

    zero.select_cpu_accelerator()
    # cpu=True on a machine without CUDA is what makes accelerate use gloo under torchrun.
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    use_fsdp_on_cpus(accelerator)  # FSDP asked of accelerate on CPUs: sharded, not silently DDP
    zero.use_deepspeed_on_cpus(accelerator, precision)  # and DeepSpeed: its engine, not silently DDP
    zero.build_models_whole(accelerator)
    refuse_main_process_model_calls(accelerator, recipe)
    return accelerator


def build_stages(host: PluginHost, recipe: Recipe, ctx: RunContext) -> ModelBundle:
    """Build the base model and attach the adapter, with the seed set before the adapter's init."""
    from accelerate.utils import set_seed

    model = host.build_model(recipe, ctx)
    set_seed(ctx.seed)
    return host.wrap_adapter(recipe, model, ctx)


def load_data(host: PluginHost, recipe: Recipe, ctx: RunContext) -> DataBundle:
    """The ``[data]`` section's records: capped under ``--smoke``, then cleaned and weighted."""
    from loraplug.data.stage import clean_and_weigh, filter_builder

    data = host.load_data(recipe, ctx)
    return clean_and_weigh(
        _cap(data, SMOKE_SAMPLES) if ctx.smoke else data, recipe, filter_builder(host, recipe, ctx)
    )


def prepare_data(
    host: PluginHost, recipe: Recipe, model: ModelBundle, data: DataBundle, ctx: RunContext
) -> PreparedData:
    """Records → encoded samples, by the plugin serving the model's kind (sample weights attached)."""
    from loraplug.data.stage import finish_prepared

    prepared = host.prepare_data(recipe, model, data, ctx)
    return finish_prepared(data, prepared, recipe, recipe.model.served.distribution)


def generate(
    host: PluginHost, model: ModelBundle, recipe: Recipe, prompts: list[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    """The model's outputs for ``prompts``, in eval mode without gradients (the model's mode is kept)."""
    import torch

    if not prompts:
        return []
    module = model.module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return host.generate(recipe, model, prompts, out_dir, ctx)
    finally:
        module.train(was_training)


def write_samples(run_dir: Path, step: int, samples: list[Sample], sinks: Sinks) -> None:
    """A step's samples into ``samples/step-N.json``, and each output to the sinks as a typed artifact
    (text, image, audio, table) that each renders by its type, as ``samples/<index>``."""
    for index, sample in enumerate(samples):
        for artifact in sample.outputs():
            sinks.log_sample(step, f"samples/{index}", sample.prompt, artifact)
    atomic_write_json(run_dir / SAMPLES_DIR / f"step-{step:06d}.json", [s.as_json(run_dir) for s in samples])


def file_manifest(directory: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    files = []
    paths = (
        sorted(p for p in directory.rglob("*") if p.is_file())
        if names is None
        else [directory / n for n in names]
    )
    for path in paths:
        files.append(
            {
                "path": str(path.relative_to(directory)),
                "sha256": sha256_file(path),
                "size": path.stat().st_size,
            }
        )
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

    :param replace: an earlier export of that name (its ``export.json``) is replaced once the new one is
        complete; anything else there is never replaced.
    :param adapter_path: the trained weights the model holds (the run's adapter or a checkpoint's),
        recorded in the manifest with their sha256.
    """
    final = ctx.run_dir / EXPORTS_DIR / export.name
    try:
        final = confine(final.parent, export.name, key="the export name")  # never outside exports/
        if (
            replace
            and final.exists()
            and not (final / "export.json").is_file()
            and (not final.is_dir() or any(final.iterdir()))
        ):
            raise LoraplugError(
                f"{final} holds files that are not a loraplug export (it has no export.json); they are left as they are",
                fix=f"Move them elsewhere, then write this export again: `loraplug export {ctx.run_dir} --kind {export.kind}`",
            )
        with atomic_dir(final, replace=replace) as tmp:
            result = host.export(export, recipe, model, tmp, ctx)
            manifest = {
                "kind": export.kind,
                "name": export.name,
                "plugin": {
                    "distribution": export.served.distribution,
                    "version": _dist_version(export.served.distribution),
                },
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
    return ExportOutcome(
        export.name, export.kind, final, ok=True, loads_with=result.loads_with, notes=result.notes
    )


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


def run_recipe(run_dir: Path, host: PluginHost) -> Recipe:
    """The recipe a run was trained with (its ``recipe.toml``), checked without its data files."""
    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.exists():
        raise LoraplugError(
            f"{run_dir} is not a loraplug run directory (no {RECIPE_FILE})",
            fix="Pass the directory `loraplug run` printed, e.g. runs/quickstart",
        )
    return load_recipe(recipe_path, host, check_files=False)


def load_run(
    run_dir: Path,
    host: PluginHost,
    console: Console,
    *,
    with_adapter: bool = True,
    adapter_path: Path | None = None,
    recipe: Recipe | None = None,
) -> tuple[Recipe, RunContext, ModelBundle]:
    """Rebuild a finished run's model with its trained adapter (for ``generate`` and re-exports).

    :param with_adapter: load the trained weights; without, the adapter keeps its initialisation,
        which leaves the base model's behaviour unchanged.
    :param adapter_path: the weights to load (a checkpoint's); default: the run's final adapter.
    :param recipe: the run's recipe when the caller has read it already (:func:`run_recipe`).
    """
    from functools import cache

    from loraplug.training.weights import load_trainable

    recipe = recipe or run_recipe(run_dir, host)
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
        final_metrics=final_metrics(
            status.train_loss, status.evaluation_scores(), status.best if recipe.eval.use_best else None
        )
        if adapter_path is None
        else {},
    )
    model = build_stages(host, recipe, ctx)
    if with_adapter:
        load_trainable(model.module, adapter_path or run_dir / ADAPTER_DIR / ADAPTER_FILE)
    # Read and encoded only if an export asks for it (quantization drift on the validation split).
    ctx.load_prepared_data = cache(
        lambda: prepare_data(host, recipe, model, load_data(host, recipe, ctx), ctx)
    )
    return recipe, ctx, model
