"""The hook implementations of loraplug-text-classification.

Option models are declared by import path (built when a recipe is checked); each hook imports its heavy
implementation when called, so ``loraplug --help`` never pays for torch or transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug import (
    Batch,
    DataBundle,
    Deployable,
    ExportResult,
    KindSpec,
    ModelBundle,
    PreparedData,
    RunContext,
    Sample,
    StepResult,
    hookimpl,
)

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_text_classification.options import (
        LabelledDataOptions,
        LoraOptions,
        SequenceClassifierOptions,
    )

MODEL_KIND = "sequence-classifier"
#: The records the data kinds produce and the classifier trains on (loraplug.kinds.RECORD_SHAPES).
RECORD_SHAPE = "labelled-text"
OPTIONS = "loraplug_text_classification.options"
#: The metric kinds, all higher-is-better (evaluation.py computes them).
METRICS = {
    "accuracy": "fraction of validation texts classified right",
    "macro_f1": "mean of every label's F1 on the validation texts (rare classes count as much as common ones)",
    "per_class": "precision/<label>, recall/<label> and f1/<label> of every label on the validation texts",
}


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "data",
            "labelled-jsonl",
            f"{OPTIONS}:LabelledJsonlOptions",
            'JSONL of {"text", "label"} objects, one per line',
            produces=RECORD_SHAPE,
        )
    )
    register(
        KindSpec(
            "data",
            "labelled-csv",
            f"{OPTIONS}:LabelledCsvOptions",
            "CSV of a text column and a label column",
            produces=RECORD_SHAPE,
        )
    )
    register(
        KindSpec(
            "model",
            MODEL_KIND,
            f"{OPTIONS}:SequenceClassifierOptions",
            "transformers AutoModelForSequenceClassification on a causal-LM base (llama, mistral, qwen2, gemma, gpt2…)",
            smoke={"pretrained": "tiny-llama-classifier", "dtype": "float32"},
            accepts=RECORD_SHAPE,
            provides="from_pretrained",  # its deployable view reloads with from_pretrained (bnb-* exports)
        )
    )
    register(
        KindSpec(
            "adapter",
            "lora",
            f"{OPTIONS}:LoraOptions",
            "peft LoRA; the classification head trained in full and saved with it",
            models=(MODEL_KIND,),
        )
    )
    register(
        KindSpec(
            "export",
            "peft",
            f"{OPTIONS}:PeftExportOptions",
            "adapter + trained head (peft), config.json with the label names, tokenizer",
            models=(MODEL_KIND,),
            adapters=("lora",),
        )
    )
    register(
        KindSpec(
            "export",
            "merged",
            f"{OPTIONS}:MergedExportOptions",
            "LoRA merged: AutoModelForSequenceClassification.from_pretrained loads it",
            models=(MODEL_KIND,),
            adapters=("lora",),
        )
    )
    for name, summary in METRICS.items():
        register(
            KindSpec(
                "metric", name, f"{OPTIONS}:NoOptions", summary, models=(MODEL_KIND,), higher_is_better=True
            )
        )


@hookimpl
def loraplug_load_data(kind: str, options: LabelledDataOptions, ctx: RunContext) -> DataBundle:
    from loraplug_text_classification.data import load

    return load(options, ctx.seed)


@hookimpl
def loraplug_build_model(kind: str, options: SequenceClassifierOptions, ctx: RunContext) -> ModelBundle:
    from loraplug_text_classification.model import build

    return build(options, ctx)


@hookimpl
def loraplug_wrap_adapter(
    kind: str, options: LoraOptions, model: ModelBundle, ctx: RunContext
) -> ModelBundle:
    from loraplug_text_classification.model import wrap

    return wrap(options, model)


@hookimpl
def loraplug_prepare_data(
    model: ModelBundle, options: SequenceClassifierOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    from loraplug_text_classification.model import prepare

    return prepare(model, options, data, ctx)


@hookimpl
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    from loraplug_text_classification.model import loss_sum

    return loss_sum(module, batch)


@hookimpl
def loraplug_generate(
    model: ModelBundle,
    options: SequenceClassifierOptions,
    prompts: Sequence[str],
    out_dir: Path,
    ctx: RunContext,
) -> list[Sample]:
    """``eval.sample_prompts`` are texts to classify: each sample is the label given and its probability."""
    from loraplug_text_classification.model import labels_of, logits

    labels = labels_of(model)
    probabilities = logits(model, prompts, options.max_length).softmax(dim=-1)
    return [
        Sample(prompt=p, text=f"{labels[int(row.argmax())]} ({float(row.max()):.2f})")
        for p, row in zip(prompts, probabilities, strict=True)
    ]


@hookimpl
def loraplug_evaluate(
    metrics: list[str],
    model: ModelBundle,
    options: SequenceClassifierOptions,
    data: DataBundle,
    scores: dict[str, float],
    ctx: RunContext,
) -> dict[str, float]:
    from loraplug_text_classification.evaluation import evaluate

    return evaluate(metrics, model, options, data, ctx)


@hookimpl
def loraplug_deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    from loraplug_text_classification.deploy import deployable

    return deployable(model, ctx)


@hookimpl
def loraplug_export(
    kind: str, options: Any, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    from loraplug_text_classification.export import export_merged, export_peft

    if kind == "peft":
        return export_peft(options, model, out_dir, ctx)
    return export_merged(options, model, out_dir, ctx)
