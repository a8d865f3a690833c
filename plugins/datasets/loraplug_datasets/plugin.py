"""The hook implementations of loraplug-datasets; module level imports loraplug only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from loraplug import DataBundle, KindSpec, RunContext, hookimpl

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_datasets.options import HfDatasetOptions

KIND = "hf-dataset"


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "data",
            KIND,
            "loraplug_datasets.options:HfDatasetOptions",
            "Hugging Face datasets: parquet/arrow/json/csv files or hub ids, alpaca/sharegpt/messages/text-label columns",
            # which one: the option `format`, or the columns a local dataset has (`recipe check` reads them)
            produces=("chat", "labelled-text"),
        )
    )


@hookimpl
def loraplug_load_data(kind: str, options: HfDatasetOptions, ctx: RunContext) -> DataBundle:
    from loraplug_datasets.read import load

    return load(options, ctx)
