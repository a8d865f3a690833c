"""The hook implementations of loraplug-onnx; torch, onnx and onnxruntime load inside the export hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loraplug import ExportResult, KindSpec, ModelBundle, RunContext, hookimpl

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_onnx.options import OnnxExportOptions


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    # Any model kind and any adapter kind: the model's plugin merges the adapter and hands over the
    # module (loraplug_deployable); this plugin never looks inside it. needs="deployable": recipe check
    # refuses a model kind whose plugin does not implement that hook, before anything loads.
    register(
        KindSpec(
            "export",
            "onnx",
            "loraplug_onnx.options:OnnxExportOptions",
            "the run's merged model as ONNX (any model kind), dynamic axes, onnxruntime parity checked",
            needs="deployable",
        )
    )


@hookimpl
def loraplug_export(
    kind: str, options: OnnxExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    from loraplug_onnx.export import export

    return export(options, model, out_dir, ctx)
