"""The hook implementations of loraplug-quant; torch, transformers, bitsandbytes and torchao load inside the hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loraplug import ExportResult, KindSpec, ModelBundle, RunContext, hookimpl
from loraplug_quant.options import Bnb4bitExportOptions, Bnb8bitExportOptions, Int8ExportOptions, QuantExportOptions

MODELS = ("causal-lm",)


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(KindSpec("export", "bnb-8bit", Bnb8bitExportOptions, "merged model, bitsandbytes LLM.int8, from_pretrained", models=MODELS))
    register(KindSpec("export", "bnb-4bit", Bnb4bitExportOptions, "merged model, bitsandbytes nf4/fp4, from_pretrained", models=MODELS))
    register(KindSpec("export", "int8", Int8ExportOptions, "merged model, torchao int8 weight-only, from_pretrained", models=MODELS))


@hookimpl
def loraplug_export(kind: str, options: QuantExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> ExportResult:
    from loraplug_quant.quantize import export

    return export(kind, options, model, out_dir, ctx)
