"""The hook implementations of loraplug-onnx; torch, onnx and onnxruntime load inside the export hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loraplug import ExportResult, KindSpec, LoraplugError, ModelBundle, RunContext, hookimpl

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_onnx.options import OnnxExportOptions

MODEL_KINDS = ("causal-lm", "stable-diffusion")


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "export",
            "onnx",
            "loraplug_onnx.options:OnnxExportOptions",
            "merged model (causal LM, or SD UNet) as ONNX, dynamic axes, onnxruntime parity checked",
            models=MODEL_KINDS,
        )
    )


@hookimpl
def loraplug_export(
    kind: str, options: OnnxExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    if model.kind == "causal-lm":
        from loraplug_onnx import causal_lm

        return causal_lm.export(options, model, out_dir, ctx)
    if model.kind == "stable-diffusion":
        from loraplug_onnx import unet

        return unet.export(options, model, out_dir, ctx)
    raise LoraplugError(
        f"The onnx export does not handle model kind {model.kind!r}",
        fix=f"Use it with {', '.join(MODEL_KINDS)}",
    )
