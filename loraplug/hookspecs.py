"""The hook contract between the loraplug core and its plugins.

A plugin is a module (or object) with functions marked ``@loraplug.hookimpl`` whose names match the
specs below; it reaches loraplug through an entry point in the group ``loraplug``.

Each spec's docstring is the reference for its hook — what it gets, what it returns, when it is
called — and its ``Dispatch:`` line says which plugins a call reaches, in one of four ways:

* *by kind*: the one plugin that declared, in :func:`loraplug_register_kinds`, the kind the recipe
  names (``data.kind``, ``train.optimizer``, an ``[[export]]`` table's ``kind``…);
* *by model kind*: the one plugin that declared the recipe's ``model.kind``;
* *broadcast*: every plugin that implements the hook;
* *each plugin*: every plugin on its own, once, as it is loaded.

A call dispatched by kind or by model kind reaches one plugin only, so an implementation never has
to check whether a call is meant for it, and two plugins can never both answer: two plugins serving
the same kind (for the same model kind) is an error naming both. docs/hooks.md renders these
docstrings (``make docs`` runs tools/update_hooks_doc.py) beside an example per hook; a test fails
when the page and this module differ.

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
    from loraplug.captioning import CaptionContext, Captioner
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
    """Declare the kinds this plugin serves, one :class:`loraplug.KindSpec` each.

    Dispatch: each plugin — once per plugin, as it is loaded.

    Called for every command, ``loraplug --help`` included, so it must be cheap: option models are
    pydantic classes, and nothing heavy (torch, transformers, diffusers) is imported at module level.
    Give an options model by its import path (``"my_plugin.options:CsvOptions"``) and it is imported
    only when a recipe is checked: a pydantic model costs milliseconds to define, and every command
    loads every plugin. A malformed declaration (an unknown stage, a metric without
    ``higher_is_better``) is refused when the plugin loads, and the plugin is skipped.

    :param register: call it once per kind with a :class:`loraplug.KindSpec`: where the kind is chosen
        (its stage), its name, its options model, and what it works with.
    """


@hookspec
def loraplug_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``loraplug`` CLI.

    Dispatch: broadcast — every plugin that implements it, when the CLI starts (for every command,
    ``--help`` included).

    Import heavy libraries inside the command's body, not here.

    :param cli: the root click group; add a command with ``@cli.command()`` or ``cli.add_command``, or
        use ``cli.group("name")`` for a new group. An existing group is found with ``cli.commands[name]``.
    """


@hookspec
def loraplug_metric_sinks(ctx: RunContext) -> MetricSink | None:
    """Return a sink for the run's metrics and generated samples, or ``None`` to stay out of this run.

    Dispatch: broadcast — every plugin that implements it, when a run starts, on the main process only;
    each answer that is not ``None`` is a sink of the run.

    ``metrics.jsonl`` and TensorBoard are the core's own sinks; wandb, mlflow… are plugins. A sink
    (:class:`loraplug.MetricSink`) has three methods:

    * ``log(step, metrics, *, split)`` — ``split`` is ``"train"`` (loss, lr, tokens_per_s) or ``"eval"``;
    * ``log_sample(step, name, prompt, artifact)`` — each output of a generated sample as a typed
      :class:`loraplug.Artifact`: ``artifact.type`` is ``"text"`` (``value`` a string), ``"image"`` or
      ``"audio"`` (``value`` the path of a PNG/JPEG or WAV file) or ``"table"`` (``value`` a list of row
      dicts). Render each type as your tracker shows it and ignore the rest (a sink that keeps scalars
      only does nothing here), so a new modality's samples need no change in any sink;
    * ``close(status)`` — ``"finished"``, ``"failed"`` or ``"interrupted"``.

    A sink written before samples were typed may have ``log_text(step, name, text)`` and
    ``log_image(step, name, path)`` instead of ``log_sample``: it gets images through ``log_image`` and
    everything else as Markdown through ``log_text``, each only if it has it.

    :param ctx: the run context (the resolved recipe is ``ctx.recipe``).
    :returns: a sink, or ``None``.
    """


# --- the stages of a run, each dispatched by the recipe's `kind` --------------------------------


@hookspec
def loraplug_load_data(kind: str, options: BaseModel, ctx: RunContext) -> DataBundle:
    """Read and check the training data: the ``[data]`` section.

    Dispatch: by kind — the one plugin that declared the recipe's ``data.kind``.

    Called first in a run, before any model loads, so a malformed file costs a second. Report a bad
    sample by raising :class:`loraplug.LoraplugError` naming its file and line, or skip and count it
    in ``DataBundle.summary`` when the options ask for that.

    Records are plain dicts with an ``"id"``: chat records carry ``"messages"``, plain text records
    ``"text"``, image records ``"image"`` and ``"caption"``. A record's text is what
    :func:`loraplug.record_text` returns — ``text``, else the ``messages``' contents, else ``caption`` —
    and every cleaning filter reads it that way: put a record's text in one of those fields, or the text
    filters refuse the record. Extra fields (a ``label``, a ``weight``) are what ``data.balance_by`` and
    ``data.weight_by`` read.

    The core cleans what this hook returns (``[data.clean]``, see recipes.md) before any model loads,
    and takes the keys ``clean``, ``balance_by`` and ``weight_by`` out of ``[data]`` before the options
    are checked: declare no options with those names.

    A stream (``train`` an iterable, read while training; declare the kind with ``streams=True``) learns
    some counts only as it is read — corrupt samples skipped, in DataLoader workers as often as not.
    Return them from ``DataBundle.final_summary``, a callable the core calls once training ends; its
    result is added to the data summary in ``run.json`` and printed.

    :param kind: the ``data.kind`` this plugin declared.
    :param options: the validated ``[data]`` table, an instance of the kind's options model.
    :param ctx: the run context: run directory, cache directory, seed, process rank, ``info``/``warn``.
    :returns: a :class:`loraplug.DataBundle` of records.
    """


@hookspec
def loraplug_build_filter(kind: str, options: BaseModel, ctx: RunContext) -> Filter:
    """Build one cleaning filter: a built-in ``[data.clean]`` key or a ``[[data.clean.filters]]`` table.

    Dispatch: by kind — the one plugin that declared the filter's kind (``KindSpec("filter", ...)``),
    once per filter the recipe asks for.

    Called after :func:`loraplug_load_data`, before any model loads — and again for every pass over a
    streamed data set, so deduplication starts afresh. The core's own filters (``exclude``,
    ``exact_dedup``…, set by the ``[data.clean]`` keys) are built through this hook too, by the core's
    built-in plugin.

    :param kind: the filter kind this plugin declared.
    :param options: the validated table (its ``kind`` removed), an instance of the kind's options model.
    :param ctx: the run context.
    :returns: an object with ``description`` (a phrase for the cleaning report: what it removes) and
        ``reason(record)``: ``None`` to keep the record, or a short reason to drop it, which the report
        shows. Read a record's text with :func:`loraplug.record_text` (or
        ``loraplug.toolkit.require_text(record, name)``, which raises the standard error); a record the
        filter cannot read (no text, no image) must raise :class:`loraplug.LoraplugError` naming the
        sample, never be kept silently — the core adds the recipe key that asked for the filter.
    """


@hookspec
def loraplug_build_model(kind: str, options: BaseModel, ctx: RunContext) -> ModelBundle:
    """Load the base model: the ``[model]`` section.

    Dispatch: by kind — the one plugin that declared the recipe's ``model.kind``.

    Freeze every base parameter: the adapter decides what trains.

    :param kind: the ``model.kind`` this plugin declared.
    :param options: the validated ``[model]`` table.
    :param ctx: the run context.
    :returns: a :class:`loraplug.ModelBundle`: ``module`` (the ``torch.nn.Module`` to train),
        ``components`` (tokenizer, VAE, scheduler…) and ``base`` (where it came from).
    """


@hookspec
def loraplug_wrap_adapter(kind: str, options: BaseModel, model: ModelBundle, ctx: RunContext) -> ModelBundle:
    """Attach the adapter: the ``[adapter]`` section.

    Dispatch: by kind — the one plugin that declared the recipe's ``adapter.kind`` for its
    ``model.kind``.

    Called right after the run's seed is set, so adapter initialisation is reproducible. Afterwards
    exactly the adapter's parameters require gradients: the loop trains, saves and restores exactly
    those. ``ModelBundle.lr_scales`` sets per-prefix learning-rate multipliers (a text encoder at a tenth
    of the UNet's rate).

    :param kind: the ``adapter.kind`` this plugin declared (for ``model.kind``).
    :param options: the validated ``[adapter]`` table.
    :param model: the bundle from :func:`loraplug_build_model`.
    :param ctx: the run context.
    :returns: the bundle, with ``module`` now carrying the adapter.
    """


@hookspec
def loraplug_build_optimizer(
    kind: str, options: BaseModel, param_groups: list[dict[str, Any]], ctx: RunContext
) -> Any:
    """Build the optimizer: ``train.optimizer`` names the kind, ``[optimizer]`` holds its options.

    Dispatch: by kind — the one plugin that declared the recipe's ``train.optimizer``
    (``KindSpec("optimizer", ...)``; the core's own ``adamw``, the default, is built through this hook
    too).

    Called once per run (and again on ``--resume``) after the adapter is attached and before accelerate
    prepares the model. The optimizer's ``state_dict`` is saved in every checkpoint and loaded back on
    ``--resume``, so keep everything the next step depends on in it: a resumed run ends with the weights
    of an uninterrupted one.

    :param kind: the optimizer kind this plugin declared.
    :param options: the validated ``[optimizer]`` table.
    :param param_groups: torch parameter groups of exactly the trainable parameters, each with
        ``params``, ``lr`` (``train.lr`` times the model's ``lr_scales``) and ``weight_decay``
        (``train.weight_decay``; 0 for biases and norm weights). Pass them on as they are: the groups'
        values override the optimizer's defaults, and the core's schedule scales each group's ``lr``
        every step.
    :param ctx: the run context; ``ctx.device`` is where training runs (decide fused kernels from it:
        the parameters are still on the CPU when this hook runs).
    :returns: a ``torch.optim.Optimizer``.
    """


@hookspec
def loraplug_prepare_data(
    model: ModelBundle, options: BaseModel, data: DataBundle, ctx: RunContext
) -> PreparedData:
    """Turn records into model inputs: tokenize and mask, pack, encode latents, cache.

    Dispatch: by model kind — the one plugin that declared the recipe's ``model.kind``, because only it
    knows its tokenizer or VAE.

    Called once per run, after :func:`loraplug_wrap_adapter` (and by ``loraplug data inspect``, and by a
    re-export that measures on the run's data).

    ``Batch.num_targets`` is what makes gradient accumulation exact: the loop sums it over every
    micro-batch of an optimizer step, across processes, and divides the summed loss by that total.
    ``Batch.num_tokens`` feeds the throughput on the progress line and in ``metrics.jsonl``
    (``tokens_per_s``); set ``PreparedData.unit`` to what it counts when that is not tokens (the
    diffusion plugin counts images: ``unit="images"``, ``img/s``).
    ``PreparedData.plan_batches`` groups samples into micro-batches of your own (aspect-ratio buckets).

    ``data`` arrives cleaned. Two of its fields are the core's, for you to honour:

    * ``data.report`` — pass ``data`` to ``loraplug.toolkit.token_limit(data, "train")`` (and ``"val"``)
      before encoding; when the recipe sets ``data.clean.min_tokens`` / ``max_tokens`` it returns a
      limit whose ``keep(record, token_count)`` drops a sample and records it in the cleaning report.
      Count the tokens the model will see, before truncation.
    * ``data.weights`` — one sampling weight per training record when the recipe balances classes. If
      you drop samples, return ``PreparedData(sample_weights=[...])`` with one weight per encoded
      sample; if you return one sample per record in order, the core hands the weights on itself. Do
      not pack samples together while weights are given: a packed row cannot carry several weights.

    ``loraplug data inspect`` shows the first ``collate([sample])`` results token by token when the
    batch has ``input_ids`` and ``labels`` of the same shape (one label per token, -100 = not learned;
    shifted by one or aligned, either is recognised; a classifier's one label per row gets no token
    view) and the model bundle has a ``tokenizer`` component; with ``segment_ids`` (packed rows, -1 on
    padding) each sample of a row is shown on its own.

    :param model: the adapted model bundle.
    :param options: the validated ``[model]`` table.
    :param data: the bundle from :func:`loraplug_load_data`, cleaned.
    :param ctx: the run context.
    :returns: a :class:`loraplug.PreparedData`: the encoded samples (a list, or an iterable for
        streams), a ``collate`` function returning a :class:`loraplug.Batch`, and optionally validation
        samples.
    """


@hookspec
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    """Compute the loss of one micro-batch (forward only; the loop does backward and the optimizer).

    Dispatch: by kind — the one plugin that declared the recipe's ``train.objective`` for its
    ``model.kind`` (``KindSpec("objective", ...)``); for the default objective ``sft``, the model's own
    loss, the one plugin that declared the recipe's ``model.kind``.

    Called for every micro-batch of training; the loop does the backward pass, the scaling, clipping
    and the optimizer step. Also called under ``torch.no_grad()`` for the validation loss.

    An objective kind (DPO, ORPO, KTO, SimPO…) is a loss over the batches the model's plugin prepares:
    declare it with ``KindSpec("objective", name, options, models=(model_kind,))`` and implement this
    hook; it is called instead of the model plugin's own. Its options, the ``[objective]`` table, are
    ``ctx.recipe.objective.options``. The causal LM's preference batches (the chosen sides' rows, then
    the rejected sides'; ``num_targets`` = pairs) are described in docs/plugins.md ("An objective").

    :param model: the adapted model bundle (for components such as a noise scheduler).
    :param module: the module to call: ``model.module`` as accelerate prepared it (it may be wrapped
        for several processes), already in train or eval mode. Call it, not ``model.module``.
    :param batch: a :class:`loraplug.Batch` whose inputs are on the device.
    :param ctx: the run context.
    :returns: a :class:`loraplug.StepResult` ``(loss_sum, num_targets)`` with the loss *summed* over the
        batch's targets.
    """


@hookspec
def loraplug_generate(
    model: ModelBundle, options: BaseModel, prompts: Sequence[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    """Generate one sample per prompt with the model as it is now.

    Dispatch: by model kind — the one plugin that declared the recipe's ``model.kind``.

    Called for the samples before and after training, every ``eval.sample_every_n_steps``, and by
    ``loraplug generate RUN_DIR``. Must be deterministic for a given model and ``ctx.seed``. A sample is
    ``Sample(prompt, text=...)``, ``Sample(prompt, image_path=...)`` for an image written under
    ``out_dir``, or any typed outputs in ``Sample(prompt, artifacts=[...])``
    (:class:`loraplug.Artifact`: text, image, audio, table): every sink and the run report render them
    by type.

    :param model: the model bundle (with or without a trained adapter).
    :param options: the validated ``[model]`` table (generation settings live there).
    :param prompts: the prompts, in order.
    :param out_dir: a directory the plugin may write files to (images, sounds).
    :param ctx: the run context.
    :returns: one :class:`loraplug.Sample` per prompt.
    """


@hookspec
def loraplug_evaluate(
    metrics: list[str],
    model: ModelBundle,
    options: BaseModel,
    data: DataBundle,
    scores: dict[str, float],
    ctx: RunContext,
) -> dict[str, float]:
    """Compute the evaluation metrics the recipe asks for in ``eval.metrics``.

    Dispatch: by kind — the recipe's ``eval.metrics`` are grouped by the plugin that declared each
    (``KindSpec("metric", name, ...)``), and each of those plugins is called once per evaluation with its
    own names; a plugin that declared none of them is not called.

    Called at every evaluation (the baseline before training, every ``eval.every_n_steps``, the final
    one), on the main process, with the model in eval mode and gradients off; the scores are then
    broadcast to every process. A model plugin computes its modality's own metrics here (generation
    metrics on the validation samples); any plugin can add a metric. Declaring each metric lets
    ``loraplug recipe check`` reject an unknown name in a second, ``plugins list`` and ``recipe keys``
    show who computes what, and ``eval.monitor`` rank it the way its ``higher_is_better`` says (nothing
    is guessed from its name).

    The core's own score is ``val_loss`` (mean loss per target over the validation split, computed with
    :func:`loraplug_train_step`; lower is better). ``eval.monitor`` picks the score that selects the best
    weights and drives early stopping; ``eval.monitor_mode = "auto"`` ranks it as its kind declares.

    :param metrics: the names to compute, all declared by this plugin.
    :param model: the model bundle being trained.
    :param options: the validated ``[model]`` table.
    :param data: the data bundle; ``data.val`` holds the validation records.
    :param scores: what this evaluation has computed so far (``val_loss``).
    :param ctx: the run context.
    :returns: ``{name: value}`` for each requested metric.
    """


@hookspec
def loraplug_deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """Hand exporters the trained model as one deployable module, with what they need to drive it.

    Dispatch: by model kind — the one plugin that declared ``model.kind``, when an export first asks for
    it (``ctx.deployable(model)``).

    The answer is kept for the rest of the run, so the adapter is merged once however many exports use
    it (``onnx``, ``int8``, the model kind's own ``merged``…). Exporters use only this, never the model's
    plugin: implement it and every such export works for your model kind. It is shared: an exporter
    never modifies its ``module`` (it copies it to quantize, cast or move it). A model kind whose plugin
    does not implement this hook still trains and exports with its own kinds; an exporter that needs a
    deployable model stops with an error naming it.

    Merge the adapter into a float32 copy on the CPU (leave ``model`` as it is: later exports use it),
    compare the copy with the trained model once on the probe (``Deployable.merge_check``, its default
    tolerance by the dtype the trained model computes in: :func:`loraplug.toolkit.parity_tolerance`),
    and raise :class:`loraplug.LoraplugError` for a model you cannot hand over as one module.

    :param model: the trained model bundle.
    :param ctx: the run context (``ctx.seed`` for example inputs; ``ctx.recipe`` may be read).
    :returns: a :class:`loraplug.Deployable`.
    """


@hookspec
def loraplug_export(
    kind: str, options: BaseModel, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    """Write one ``[[export]]`` of the trained model.

    Dispatch: by kind — for each ``[[export]]`` table, the one plugin that declared its ``kind`` for the
    recipe's ``model.kind``.

    Called after training, once per ``[[export]]``; also by ``loraplug export RUN_DIR --kind KIND``,
    which rebuilds a finished run's model with its trained weights. ``out_dir`` is an empty temporary
    directory that the core renames to ``exports/<name>/`` when the hook returns; the core also writes
    ``export.json`` there (every file with its sha256 and size, the base model, the recipe's hash,
    library versions, and the figures returned here). Raise :class:`loraplug.LoraplugError` to fail this
    export alone: the adapter and the other exports are kept. Do not modify ``model``: later exports use
    it too — merge into a copy, or into a freshly loaded base.

    An exporter that is not the model's own (``onnx``, ``int8``) gets the merged model through
    ``ctx.deployable(model)`` (:func:`loraplug_deployable`) and imports no model plugin, so it works for
    every model kind that implements that hook. An export that measures something on the run's data (a
    quantized export's drift and perplexity) calls ``ctx.prepared_data()``: the ``PreparedData`` the run
    trained on or, when re-exporting, the data loaded and encoded again on that first call (a
    :class:`loraplug.LoraplugError` if its files are gone: fall back, or fail with a clear message).

    :param kind: the export kind this plugin declared (for ``model.kind``).
    :param options: the validated ``[[export]]`` table.
    :param model: the trained model bundle.
    :param out_dir: where to write the files.
    :param ctx: the run context.
    :returns: an :class:`loraplug.ExportResult` (``figures``, ``notes``, ``loads_with``).
    """


# --- outside a run: tools over a data set, dispatched by kind -------------------------------------


@hookspec
def loraplug_build_captioner(kind: str, options: BaseModel, ctx: CaptionContext) -> Captioner:
    """Load a captioning model: ``loraplug data caption DIR --kind KIND`` and the studio's auto-captioning.

    Dispatch: by kind — the one plugin that declared the caption kind (``KindSpec("caption", ...)``), once
    per folder captioned.

    Not part of a run: called when a person captions an image folder, after the options (the
    ``--option KEY=VALUE`` pairs, or the studio's form) are checked against the kind's options model and
    only when some image still needs a caption. The core walks the folder, opens each image with PIL,
    hands the captioner batches, joins tags with ``", "`` (adding ``--prefix`` / ``--append`` tags), and
    writes each caption to a same-stem ``.txt`` file atomically — never over an existing one unless the
    user asked for ``--overwrite``. The captioner writes nothing itself.

    Load the model here (a Hub id or a local directory in the options; import onnxruntime or
    transformers in this hook's body), and raise :class:`loraplug.LoraplugError` when it cannot be
    found — offline (``HF_HUB_OFFLINE=1``) with nothing cached is the common case: say which files to
    download and which option takes their directory.

    :param kind: the caption kind this plugin declared.
    :param options: the validated options, an instance of the kind's options model.
    :param ctx: a :class:`loraplug.CaptionContext` (there is no recipe): ``cache_dir``,
        ``device`` (``None``: pick one), ``info``/``warn``.
    :returns: a :class:`loraplug.Captioner`: an object whose ``caption(images)`` takes a batch
        of PIL images (any mode; convert as the model needs) and returns one caption per image, in order:
        a string (a sentence) or a list of tags, most important first.
    """
