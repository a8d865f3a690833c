"""The hook contract between the loraplug core and its plugins.

A plugin is a module (or object) with functions marked ``@loraplug.hookimpl`` whose names match the
specs below; it reaches loraplug through an entry point in the group ``loraplug``. docs/hooks.md
documents each hook with an example; a test keeps that page and this module in step.

Dispatch: the stage hooks (``load_data``, ``build_filter``, ``build_model``, ``wrap_adapter``,
``build_optimizer``, ``export``) and the model hooks (``prepare_data``, ``train_step``, ``generate``,
``deployable``)
are called on *one* plugin only — the one that declared the recipe's kind in
:func:`loraplug_register_kinds` — so an implementation never has to check whether a call is meant for
it, and two plugins can never both answer. The remaining hooks are broadcast to every plugin.

Heavy imports (torch, transformers, diffusers…) belong inside hook bodies, never at module level:
loraplug imports every plugin to answer ``loraplug --help``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from pydantic import BaseModel

    from loraplug.bundles import (
        Batch,
        DataBundle,
        ExportResult,
        ModelBundle,
        PreparedData,
        Sample,
        StepResult,
    )
    from loraplug.context import RunContext
    from loraplug.data.filters import Filter
    from loraplug.deploy import Deployable
    from loraplug.kinds import KindSpec
    from loraplug.training.sinks import MetricSink

PROJECT = "loraplug"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- declaration (called when plugins load; must be cheap) -------------------------------------


@hookspec
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    """Declare the kinds this plugin serves.

    Called once when the plugin is loaded — for every command, ``loraplug --help`` included — so it
    must import nothing heavy: option models are pydantic classes, nothing more.

    :param register: call it once per kind with a :class:`loraplug.KindSpec`.
    """


@hookspec
def loraplug_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``loraplug`` CLI.

    Called when the CLI starts. Import heavy libraries inside the command's body, not here.

    :param cli: the root click group; add a command with ``cli.add_command`` or use
        ``cli.group("name")`` for a new group. An existing group is found with ``cli.commands[name]``.
    """


@hookspec
def loraplug_metric_sinks(ctx: RunContext) -> MetricSink | None:
    """Return a sink for the run's metrics, samples and images, or ``None`` to stay out.

    Broadcast to every plugin when a run starts, on the main process only. A sink has
    ``log(step, metrics, split=...)``, ``log_text(step, name, text)``,
    ``log_image(step, name, path)`` and ``close(status)`` (see :class:`loraplug.MetricSink`), and
    may have ``log_sample(step, name, prompt, artifact)`` to render each typed sample output
    (:class:`loraplug.Artifact`: text, image, audio, table) itself.
    ``metrics.jsonl`` and TensorBoard are the core's own sinks; wandb, mlflow… are plugins.

    :param ctx: the run context (the resolved recipe is ``ctx.recipe``).
    :returns: a sink, or ``None``.
    """


# --- the stages of a run, each dispatched by the recipe's `kind` --------------------------------


@hookspec
def loraplug_load_data(kind: str, options: BaseModel, ctx: RunContext) -> DataBundle:
    """Read and check the training data: the ``[data]`` section.

    Called first in a run, before any model loads, so a malformed file costs a second. Report a bad
    sample by raising :class:`loraplug.LoraplugError` naming its file and line, or skip and count it
    in ``DataBundle.summary`` when the options ask for that.

    :param kind: the ``data.kind`` this plugin declared.
    :param options: the validated ``[data]`` table, an instance of the kind's options model.
    :param ctx: the run context.
    :returns: a :class:`loraplug.DataBundle` of records.
    """


@hookspec
def loraplug_build_filter(kind: str, options: BaseModel, ctx: RunContext) -> Filter:
    """Build one cleaning filter: a built-in ``[data.clean]`` key or a ``[[data.clean.filters]]`` table.

    Called after :func:`loraplug_load_data`, before any model loads — again for every pass over a
    streamed data set, so deduplication starts afresh. The core's own filters (``exclude``,
    ``exact_dedup``…) are built through this hook too.

    :param kind: the filter kind this plugin declared (``KindSpec("filter", ...)``).
    :param options: the validated table (its ``kind`` removed), an instance of the kind's options model.
    :param ctx: the run context.
    :returns: an object with ``description`` (a phrase for the report: what it removes) and
        ``reason(record)``: ``None`` to keep the record, or a short reason to drop it. Read a record's
        text with :func:`loraplug.record_text`; a record the filter cannot read (no text, no image)
        must raise :class:`loraplug.LoraplugError` naming the sample, never be kept silently.
    """


@hookspec
def loraplug_build_model(kind: str, options: BaseModel, ctx: RunContext) -> ModelBundle:
    """Load the base model: the ``[model]`` section.

    Freeze every base parameter; the adapter decides what trains.

    :param kind: the ``model.kind`` this plugin declared.
    :param options: the validated ``[model]`` table.
    :param ctx: the run context.
    :returns: a :class:`loraplug.ModelBundle`.
    """


@hookspec
def loraplug_wrap_adapter(kind: str, options: BaseModel, model: ModelBundle, ctx: RunContext) -> ModelBundle:
    """Attach the adapter: the ``[adapter]`` section.

    Called after the run's seed is set, so adapter initialisation is reproducible. Only the adapter's
    parameters may require gradients afterwards; the loop trains exactly those.

    :param kind: the ``adapter.kind`` this plugin declared (for ``model.kind``).
    :param options: the validated ``[adapter]`` table.
    :param model: the bundle from :func:`loraplug_build_model`.
    :param ctx: the run context.
    :returns: the bundle, with ``module`` now carrying the adapter.
    """


@hookspec
def loraplug_build_optimizer(kind: str, options: BaseModel, param_groups: list[dict[str, Any]], ctx: RunContext) -> Any:
    """Build the optimizer: ``train.optimizer`` names the kind, ``[optimizer]`` holds its options.

    Called once per run (and per resume) after the adapter is attached and before accelerate
    prepares the model; the optimizer's ``state_dict`` is saved in every checkpoint and loaded back on
    ``--resume``, so keep everything the next step depends on in it. The core's own ``adamw`` is
    built through this hook too.

    :param kind: the optimizer kind this plugin declared (``KindSpec("optimizer", ...)``).
    :param options: the validated ``[optimizer]`` table.
    :param param_groups: torch parameter groups of exactly the trainable parameters, each with
        ``params``, ``lr`` (``train.lr`` times the model's ``lr_scales``) and ``weight_decay``
        (``train.weight_decay``; 0 for biases and norm weights). Pass them on as they are; the
        core's schedule scales each group's ``lr`` every step.
    :param ctx: the run context; ``ctx.device`` is where training runs (for fused kernels).
    :returns: a ``torch.optim.Optimizer``.
    """


@hookspec
def loraplug_prepare_data(model: ModelBundle, options: BaseModel, data: DataBundle, ctx: RunContext) -> PreparedData:
    """Turn records into model inputs: tokenize, mask, pack, encode latents, cache.

    Dispatched to the plugin serving ``model.kind``, because only it knows its tokenizer or VAE.

    :param model: the adapted model bundle.
    :param options: the validated ``[model]`` table.
    :param data: the bundle from :func:`loraplug_load_data`.
    :param ctx: the run context.
    :returns: a :class:`loraplug.PreparedData`.
    """


@hookspec
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    """Compute the loss of one micro-batch (forward only; the loop does backward and the optimizer).

    Dispatched to the plugin serving ``model.kind``. Also called under ``torch.no_grad()`` for
    validation loss.

    :param model: the adapted model bundle (for components such as a noise scheduler).
    :param module: the module to call: ``model.module`` as accelerate prepared it (it may be wrapped
        for several processes), already in train or eval mode.
    :param batch: a :class:`loraplug.Batch` whose inputs are on the device.
    :param ctx: the run context.
    :returns: a :class:`loraplug.StepResult` with the loss *summed* over the batch's targets.
    """


@hookspec
def loraplug_generate(
    model: ModelBundle, options: BaseModel, prompts: Sequence[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    """Generate one sample per prompt with the model as it is now.

    Dispatched to the plugin serving ``model.kind``. Used for the before/after samples of a run,
    periodic samples (``eval.sample_every_n_steps``) and ``loraplug generate``. Must be deterministic
    for a given model and ``ctx.seed``.

    :param model: the model bundle (with or without a trained adapter).
    :param options: the validated ``[model]`` table (generation settings live there).
    :param prompts: the prompts, in order.
    :param out_dir: a directory the plugin may write files to (images).
    :param ctx: the run context.
    :returns: one :class:`loraplug.Sample` per prompt.
    """


@hookspec
def loraplug_evaluate(
    metrics: list[str], model: ModelBundle, options: BaseModel, data: DataBundle, scores: dict[str, float], ctx: RunContext
) -> dict[str, float]:
    """Compute evaluation metrics the recipe asked for in ``eval.metrics``.

    Called at every evaluation, on the main process, with the model in eval mode and gradients off,
    once per plugin with the metric names it declared (``KindSpec("metric", name, ...)``) that the
    recipe asks for. A model plugin computes its modality's own metrics here (generation metrics on
    the validation samples); any plugin can add a metric.

    :param metrics: the names to compute, all declared by this plugin.
    :param model: the model bundle being trained.
    :param options: the validated ``[model]`` table.
    :param data: the data bundle; ``data.val`` holds the validation records.
    :param scores: what the evaluation has computed so far (``val_loss``).
    :param ctx: the run context.
    :returns: ``{name: value}`` for each requested metric.
    """


@hookspec
def loraplug_deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """Hand exporters the trained model as one deployable module, with what they need to drive it.

    Dispatched to the plugin serving ``model.kind`` when an export first asks for it
    (``ctx.deployable(model)``); the answer is kept for the rest of the run, so the adapter is merged
    once however many exports use it (``onnx``, ``int8``, the model kind's own ``merged``…).
    Exporters use only this, never the model's plugin: implement it and every such export works for
    your model kind.

    Merge the adapter into a float32 copy on the CPU (leave ``model`` as it is: later exports use it),
    compare the copy with the trained model once on the probe (``Deployable.merge_check``, its default
    tolerance by the dtype the trained model computes in: :func:`loraplug.toolkit.parity_tolerance`),
    and raise :class:`loraplug.LoraplugError` for a model you cannot hand over as one module.

    :param model: the trained model bundle.
    :param ctx: the run context (``ctx.seed`` for example inputs; ``ctx.recipe`` may be read).
    :returns: a :class:`loraplug.Deployable`.
    """


@hookspec
def loraplug_export(kind: str, options: BaseModel, model: ModelBundle, out_dir: Path, ctx: RunContext) -> ExportResult:
    """Write one ``[[export]]`` of the trained model.

    ``out_dir`` is an empty temporary directory; the core renames it into place when the hook returns
    and writes ``export.json`` (files with sha256 and size, the figures returned here, versions)
    beside the files. Raise :class:`loraplug.LoraplugError` to fail this export: the adapter and the
    other exports are kept. Do not modify ``model``: later exports use it too. Also called by
    ``loraplug export RUN_DIR --kind KIND`` on a finished run's rebuilt model; ``ctx.prepared_data()``
    gives the run's data to measure on, in both cases.

    :param kind: the export kind this plugin declared (for ``model.kind``).
    :param options: the validated ``[[export]]`` table.
    :param model: the trained model bundle.
    :param out_dir: where to write the files.
    :param ctx: the run context.
    :returns: an :class:`loraplug.ExportResult`.
    """
