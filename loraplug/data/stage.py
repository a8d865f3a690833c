"""The core's data steps around the plugins' data hooks, called by the pipeline and ``loraplug data inspect``.

load_data ─► clean_and_weigh ─► … prepare_data ─► finish_prepared ─► training
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from loraplug.bundles import DataBundle, PreparedData
from loraplug.data.balance import record_weights
from loraplug.data.clean import TOKEN_FILTER, FilterBuilder, clean, plan_filters
from loraplug.data.filters import Filter
from loraplug.data.report import DataReport
from loraplug.errors import LoraplugError
from loraplug.recipe.model import Recipe

if TYPE_CHECKING:
    from loraplug.context import RunContext
    from loraplug.plugins import PluginHost


def filter_builder(host: PluginHost, recipe: Recipe, ctx: RunContext) -> FilterBuilder:
    """Builds each filter through ``loraplug_build_filter``, on the one plugin serving its kind."""

    def build(kind: str, options: Any) -> Filter:
        return host.build_filter(kind, options, recipe.model.kind, ctx)

    return build


def clean_and_weigh(data: DataBundle, recipe: Recipe, build: FilterBuilder | None = None) -> DataBundle:
    """Apply ``[data.clean]`` and compute the sampling weights of ``data.balance_by`` / ``weight_by``.

    :param build: builds each filter (a run: :func:`filter_builder`; default: the core's own filters).
    """
    core = recipe.data.core
    if isinstance(data.train, Sequence) and not data.train:
        # Said here, not as "cleaning removed all 0": a data kind need not check this itself.
        raise LoraplugError(
            f"No training samples: the data kind {recipe.data.kind!r} loaded none",
            where="[data]",
            fix="Point the [data] table at a file or directory that holds training samples",
        )
    plan = plan_filters(core.clean, [(section.kind, section.options) for section in recipe.data.filters])
    cleaned = clean(data, core.clean, plan, build)
    report = cleaned.report
    assert report is not None  # noqa: S101 — clean() always reports
    if isinstance(cleaned.train, Sequence) and not cleaned.train:
        split = report.splits["train"]
        removed = ", ".join(f"{c.name} {c.removed}" for c in split.filters if c.removed)
        raise LoraplugError(
            f"Cleaning removed all {split.before} training samples ({removed})",
            where="[data.clean]",
            fix="Loosen the filters that removed them; `loraplug data inspect RECIPE` shows examples of what each removed",
        )
    if not core.weighted:
        return cleaned
    key = "data.balance_by" if core.balance_by is not None else "data.weight_by"
    if not isinstance(cleaned.train, Sequence):
        raise LoraplugError(
            f"{key} draws samples by weight, which needs the whole training set in a list, but data kind "
            f"{recipe.data.kind!r} streams its samples",
            where=key,
            fix=f"Remove {key}, or use a data kind that loads a list of samples",
        )
    weighed = record_weights(cleaned.train, core)
    assert weighed is not None  # noqa: S101 — core.weighted
    weights, summary = weighed
    report.sampling = summary
    return replace(cleaned, weights=weights)


def finish_prepared(
    data: DataBundle, prepared: PreparedData, recipe: Recipe, model_distribution: str
) -> PreparedData:
    """After ``prepare_data``: one sampling weight per encoded sample, and a note if token limits were ignored."""
    report = data.report
    options = recipe.data.core.clean
    if report is not None and (options.min_tokens is not None or options.max_tokens is not None):
        if not any(c.name == TOKEN_FILTER for c in report.split("train").filters):
            report.notes.append(
                f"data.clean.min_tokens / max_tokens were not applied: {model_distribution} does not count tokens "
                "(it does not call loraplug.toolkit.token_limit)"
            )
    if data.weights is None:
        return prepared
    if prepared.plan_batches is not None:
        raise LoraplugError(
            f"data.balance_by / data.weight_by cannot be combined with {model_distribution}'s own grouping of samples "
            "into batches (such as aspect-ratio buckets)",
            fix="Remove the balancing key, or switch the plugin's grouping off",
        )
    if prepared.sample_weights is not None:
        return prepared
    if isinstance(prepared.train, Sequence) and len(prepared.train) == len(data.weights):
        return replace(prepared, sample_weights=list(data.weights))  # one sample per record, in order
    raise LoraplugError(
        f"{model_distribution} changed the number of training samples while preparing them and did not say which "
        "record each came from, so data.balance_by / data.weight_by cannot be applied",
        fix=f"Remove the balancing key, or ask the authors of {model_distribution} to set PreparedData.sample_weights",
    )


def show_report(report: DataReport | None, console: Console, run_dir: Path | None) -> None:
    """Print the report (a table when anything was removed) and write ``data_report.json`` into ``run_dir``."""
    if report is None:
        return
    if run_dir is not None:
        report.write(run_dir)
    removed = any(c.removed for split in report.splits.values() for c in split.filters)
    if removed or report.sampling or report.notes:
        report.render(console)
    else:
        names = (
            ", ".join(dict.fromkeys(c.name for split in report.splits.values() for c in split.filters))
            or "none"
        )
        console.print(f"data cleaning: nothing removed (filters: {names})", highlight=False)
