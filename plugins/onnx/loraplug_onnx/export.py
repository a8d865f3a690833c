"""The run's deployable model as ONNX, whatever its model kind: one graph of the module's inputs → its output.

The model kind's plugin hands over the merged module, example inputs and the probe that turns the
module's outputs into one tensor (:class:`loraplug.Deployable`, from ``ctx.deployable(model)``); this
module knows nothing of tokens, latents or rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loraplug import Deployable, ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug_onnx import convert
from loraplug_onnx.options import OnnxExportOptions


class Probed(torch.nn.Module):
    """The deployable module as a plain function of its inputs, in order, returning the probe's one tensor."""

    def __init__(self, deployable: Deployable) -> None:
        super().__init__()
        self.module = deployable.module
        self.probe = deployable.probe
        self.names = list(deployable.inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.probe(self.module, dict(zip(self.names, tensors, strict=True)))
        return result


def graph(deployable: Deployable) -> convert.Graph:
    """What to export: the probed module, traced with the deployable's inputs, its axes as it declares them."""
    names = list(deployable.inputs)
    return convert.Graph(
        module=Probed(deployable).eval(),
        inputs=deployable.inputs,
        # Probed takes its inputs as *tensors: torch.export wants their dims as one tuple, in order.
        dynamic_shapes={"tensors": tuple(deployable.dynamic_shapes.get(name) for name in names)},
        output=deployable.output,
        what=deployable.what,
    )


def _loads_with(deployable: Deployable) -> str:
    feeds = ", ".join(f'"{name}": {name}' for name in deployable.inputs)
    return f'onnxruntime.InferenceSession("model.onnx").run(["{deployable.output}"], {{{feeds}}})'


def export(options: OnnxExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> ExportResult:
    deployable = ctx.deployable(model)
    if deployable.export_unverified and not options.any_family:
        raise LoraplugError(
            f"The onnx export does not support {deployable.export_unverified}",
            fix="Set `any_family = true` on the export to try anyway (onnxruntime parity is still checked), or use "
            "another export and convert it with your own tooling; the adapter and the other exports are kept",
        )
    merge_check = deployable.verify_merge()
    traced = graph(deployable)
    path = convert.export(traced, out_dir, options.opset)
    feeds = deployable.check_inputs
    diff = convert.max_abs_diff(path, traced.module, feeds)
    convert.check_parity(diff, options.tolerance, feeds, traced.what)
    deployable.save_files_beside(out_dir)
    figures: dict[str, Any] = convert.figures(
        path, traced, feeds, deployable.figure("max_abs", "diff"), diff, options.tolerance
    )
    if merge_check:
        figures["merge_check"] = merge_check
    return ExportResult(figures=figures, notes=list(deployable.notes), loads_with=_loads_with(deployable))
