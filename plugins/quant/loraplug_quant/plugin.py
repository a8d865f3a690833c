"""The hook implementations of loraplug-quant; torch, transformers, bitsandbytes and torchao load inside the hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loraplug import ExportResult, KindSpec, ModelBundle, RunContext, hookimpl

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_quant.options import QuantExportOptions


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    # Any model kind and adapter kind: the model's plugin merges the adapter and hands over the module
    # (loraplug_deployable). bitsandbytes' kinds quantize through transformers' from_pretrained: they
    # need a model kind that provides it, and recipe check refuses one that declares it does not.
    register(
        KindSpec(
            "export",
            "bnb-8bit",
            "loraplug_quant.options:Bnb8bitExportOptions",
            "merged model, bitsandbytes LLM.int8, from_pretrained (transformers models)",
            needs=("deployable", "from_pretrained"),
        )
    )
    register(
        KindSpec(
            "export",
            "bnb-4bit",
            "loraplug_quant.options:Bnb4bitExportOptions",
            "merged model, bitsandbytes nf4/fp4, from_pretrained (transformers models)",
            needs=("deployable", "from_pretrained"),
        )
    )
    register(
        KindSpec(
            "export",
            "int8",
            "loraplug_quant.options:Int8ExportOptions",
            "merged model, torchao int8 weight-only (from_pretrained, or safetensors for any module)",
            needs="deployable",
        )
    )


@hookimpl
def loraplug_export(
    kind: str, options: QuantExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    from loraplug_quant.quantize import export

    return export(kind, options, model, out_dir, ctx)
