"""The hook implementations of loraplug-causal-lm.

Option models are declared by import path (built when a recipe is checked); each hook imports its heavy implementation when it
is called, so ``loraplug --help`` never pays for torch or transformers.
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
from loraplug_causal_lm.metrics import LOWER_IS_BETTER, METRICS

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_causal_lm.options import CausalLMOptions, JsonlOptions, LoraOptions, LycorisOptions
    from loraplug_causal_lm.preference_options import PairsOptions

MODEL_KIND = "causal-lm"
#: The records jsonl produces and the causal LM trains on (loraplug.kinds.RECORD_SHAPES).
RECORD_SHAPE = "chat"
#: Preference pairs (``pairs``), which the objectives dpo and orpo train on.
PREFERENCE_SHAPE = "preference"
#: The preference objectives: name → (options class in preference_options.py, summary).
OBJECTIVES = {
    "dpo": (
        "DpoOptions",
        "Direct Preference Optimization against the adapter-less base (or an earlier adapter)",
    ),
    "orpo": (
        "OrpoOptions",
        "Odds Ratio Preference Optimization: SFT on chosen + λ·odds-ratio term, no reference",
    ),
}
#: LyCORIS' adapters through peft, beside LoRA: the name is also the options class's (``LohaOptions``).
LYCORIS = {
    "loha": "peft LoHa: low-rank Hadamard product (LyCORIS)",
    "lokr": "peft LoKr: Kronecker product (LyCORIS)",
}
#: The adapter kinds the peft and merged exports handle: all peft tuners, saved and merged by peft itself.
ADAPTERS = ("lora", *LYCORIS)


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "data",
            "jsonl",
            "loraplug_causal_lm.options:JsonlOptions",
            "JSONL of {prompt, response} or {messages} chat samples",
            produces=RECORD_SHAPE,
        )
    )
    register(
        KindSpec(
            "data",
            "pairs",
            "loraplug_causal_lm.preference_options:PairsOptions",
            "JSONL of {prompt, chosen, rejected} preference pairs (or the chat form), for dpo and orpo",
            produces=PREFERENCE_SHAPE,
        )
    )
    for name, (options, summary) in OBJECTIVES.items():
        register(
            KindSpec(
                "objective",
                name,
                f"loraplug_causal_lm.preference_options:{options}",
                summary,
                models=(MODEL_KIND,),
                accepts=PREFERENCE_SHAPE,  # recipe check refuses a data kind without pairs
            )
        )
    register(
        KindSpec(
            "model",
            MODEL_KIND,
            "loraplug_causal_lm.options:CausalLMOptions",
            "transformers AutoModelForCausalLM (hub id, directory or tiny-llama)",
            # a shrunk model of the recipe's own architecture where its config and tokenizer are local, else tiny-llama
            smoke="loraplug_causal_lm.smoke:smoke_overrides",
            accepts=(RECORD_SHAPE, PREFERENCE_SHAPE),
            provides="from_pretrained",  # its deployable view reloads with AutoModelForCausalLM (bnb-* exports)
        )
    )
    register(
        KindSpec(
            "adapter",
            "lora",
            "loraplug_causal_lm.options:LoraOptions",
            "peft LoRA / rsLoRA / DoRA",
            models=(MODEL_KIND,),
        )
    )
    for name, summary in LYCORIS.items():
        register(
            KindSpec(
                "adapter",
                name,
                f"loraplug_causal_lm.options:{name.capitalize()}Options",
                summary,
                models=(MODEL_KIND,),
            )
        )
    register(
        KindSpec(
            "export",
            "peft",
            "loraplug_causal_lm.options:PeftExportOptions",
            "adapter_config.json + adapter_model.safetensors",
            models=(MODEL_KIND,),
            adapters=ADAPTERS,
        )
    )
    register(
        KindSpec(
            "export",
            "merged",
            "loraplug_causal_lm.options:MergedExportOptions",
            "the adapter merged into the base, save_pretrained",
            models=(MODEL_KIND,),
            adapters=ADAPTERS,
        )
    )
    for name, summary in METRICS.items():
        register(
            KindSpec(
                "metric",
                name,
                "loraplug_causal_lm.options:NoOptions",
                summary,
                models=(MODEL_KIND,),
                higher_is_better=name not in LOWER_IS_BETTER,
            )
        )


@hookimpl
def loraplug_load_data(kind: str, options: JsonlOptions | PairsOptions, ctx: RunContext) -> DataBundle:
    if kind == "pairs":
        from loraplug_causal_lm import pairs

        return pairs.load(
            options.path, options.val_path, options.val_fraction, options.on_error == "skip", ctx.seed
        )
    from loraplug_causal_lm.jsonl import load

    return load(options.path, options.val_path, options.val_fraction, options.on_error == "skip", ctx.seed)


@hookimpl
def loraplug_build_model(kind: str, options: CausalLMOptions, ctx: RunContext) -> ModelBundle:
    from loraplug_causal_lm.model import build

    return build(options, ctx)


@hookimpl
def loraplug_wrap_adapter(
    kind: str, options: LoraOptions | LycorisOptions, model: ModelBundle, ctx: RunContext
) -> ModelBundle:
    from loraplug_causal_lm.model import wrap

    return wrap(options, model)


@hookimpl
def loraplug_prepare_data(
    model: ModelBundle, options: CausalLMOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    from loraplug_causal_lm.prepare import prepare

    return prepare(model, options, data, ctx)


@hookimpl
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    objective = ctx.recipe.objective
    if objective is not None and objective.kind in OBJECTIVES:
        from loraplug_causal_lm.preference import pair_loss

        chunk = ctx.recipe.model.options.loss_chunk_tokens
        return pair_loss(objective.kind, objective.options, module, batch, chunk, ctx.warn).result()
    from loraplug_causal_lm.compute import loss_sum

    return loss_sum(module, batch, ctx.recipe.model.options.loss_chunk_tokens, warn=ctx.warn, info=ctx.info)


@hookimpl
def loraplug_generate(
    model: ModelBundle, options: CausalLMOptions, prompts: Sequence[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    from loraplug_causal_lm.compute import generate

    return generate(model, options, prompts)


@hookimpl
def loraplug_evaluate(
    metrics: list[str],
    model: ModelBundle,
    options: CausalLMOptions,
    data: DataBundle,
    scores: dict[str, float],
    ctx: RunContext,
) -> dict[str, float]:
    from loraplug_causal_lm.metrics import evaluate

    return evaluate(metrics, model, options, data, scores, ctx)


@hookimpl
def loraplug_deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    from loraplug_causal_lm.deploy import deployable

    return deployable(model, ctx)


@hookimpl
def loraplug_export(
    kind: str, options: Any, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    from loraplug_causal_lm.export import export_merged, export_peft

    if kind == "peft":
        return export_peft(options, model, out_dir, ctx)
    return export_merged(options, model, out_dir, ctx)
