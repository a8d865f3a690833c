"""loraplug-csv: CSV files as data, and a text-classifier model kind to train on labelled rows.

    [data]                          [data]
    kind = "csv"                    kind = "csv-labels"
    path = "pairs.csv"              path = "reviews.csv"
    prompt_column = "question"      val_fraction = 0.2
    response_column = "answer"      [model]
                                    kind = "text-classifier"
                                    pretrained = "tiny-classifier"
                                    labels = ["negative", "positive"]
                                    [adapter]
                                    kind = "lora"

Written the way any third-party plugin is: it imports only ``loraplug`` (its public names,
``loraplug.data.token_limit`` and :mod:`loraplug.toolkit`), never another plugin. Options are declared
by import path and the heavy work lives in modules the hooks import when called, so ``loraplug --help``
never imports torch because this plugin is installed.

Its ``loraplug_deployable`` (deploy.py) hands the merged classifier to exporters, so ``onnx``, ``int8``
and the bitsandbytes kinds export it though none of them knows this plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug import (
    Batch,
    DataBundle,
    Deployable,
    KindSpec,
    ModelBundle,
    PreparedData,
    RunContext,
    Sample,
    StepResult,
    hookimpl,
)

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_csv.options import ClassifierOptions, CsvOptions, LabelledCsvOptions, LoraOptions

MODEL_KIND = "text-classifier"


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    # What each data kind's records are, and what the model trains on: recipe check refuses a mismatch
    # (csv for an image model, csv-labels for a causal LM) before anything loads.
    register(
        KindSpec(
            "data", "csv", "loraplug_csv.options:CsvOptions", "CSV of prompt/response pairs", produces="chat"
        )
    )
    register(
        KindSpec(
            "data",
            "csv-labels",
            "loraplug_csv.options:LabelledCsvOptions",
            "CSV of texts and labels",
            produces="labelled-text",
        )
    )
    register(
        KindSpec(
            "model",
            MODEL_KIND,
            "loraplug_csv.options:ClassifierOptions",
            "transformers AutoModelForSequenceClassification (hub id, directory or tiny-classifier)",
            smoke={"pretrained": "tiny-classifier", "dtype": "float32"},
            accepts="labelled-text",
            # Its deployable view (loraplug_deployable below) reloads with from_pretrained: the bnb-* exports
            # need that, and recipe check knows it from here.
            provides="from_pretrained",
        )
    )
    register(
        KindSpec(
            "adapter",
            "lora",
            "loraplug_csv.options:LoraOptions",
            "peft LoRA, the head trained in full",
            models=(MODEL_KIND,),
        )
    )
    register(
        KindSpec(
            "metric",
            "accuracy",
            "loraplug.options:NoOptions",
            "fraction of validation rows labelled right",
            models=(MODEL_KIND,),
            higher_is_better=True,
        )
    )


@hookimpl
def loraplug_load_data(kind: str, options: CsvOptions | LabelledCsvOptions, ctx: RunContext) -> DataBundle:
    from loraplug_csv.data import chat_record, labelled_record, load
    from loraplug_csv.options import CsvOptions

    if isinstance(options, CsvOptions):
        columns = (options.prompt_column, options.response_column)
        return load(options.path, columns, chat_record, options.val_fraction, ctx.seed)
    return load(
        options.path,
        (options.text_column, options.label_column),
        labelled_record,
        options.val_fraction,
        ctx.seed,
    )


@hookimpl
def loraplug_build_model(kind: str, options: ClassifierOptions, ctx: RunContext) -> ModelBundle:
    from loraplug_csv.classifier import build

    return build(options, ctx)


@hookimpl
def loraplug_wrap_adapter(
    kind: str, options: LoraOptions, model: ModelBundle, ctx: RunContext
) -> ModelBundle:
    from loraplug_csv.classifier import wrap

    return wrap(options, model)


@hookimpl
def loraplug_prepare_data(
    model: ModelBundle, options: ClassifierOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    from loraplug_csv.classifier import prepare

    return prepare(model, options, data, ctx)


@hookimpl
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    from loraplug_csv.classifier import loss_sum

    return loss_sum(module, batch)


@hookimpl
def loraplug_generate(
    model: ModelBundle, options: ClassifierOptions, prompts: Sequence[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    from loraplug_csv.classifier import generate

    return generate(model, options, prompts)


@hookimpl
def loraplug_deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    # The merged classifier, its inputs and logits: onnx and int8 export it with no line of theirs naming it.
    from loraplug_csv.deploy import deployable

    return deployable(model, ctx)


@hookimpl
def loraplug_evaluate(
    metrics: list[str],
    model: ModelBundle,
    options: ClassifierOptions,
    data: DataBundle,
    scores: dict[str, float],
    ctx: RunContext,
) -> dict[str, float]:
    from loraplug_csv.classifier import accuracy

    return {"accuracy": accuracy(model, options, data)} if "accuracy" in metrics else {}
