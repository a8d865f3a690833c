"""A module to an ONNX file with torch.onnx's dynamo exporter, and the onnxruntime parity check.

Only hook bodies import this module (it imports torch, onnx and onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loraplug import LoraplugError

MODEL_FILE = "model.onnx"
#: onnxruntime's reference backend: present in every build, so the check means the same everywhere.
PROVIDER = "CPUExecutionProvider"


@dataclass
class Graph:
    """What to export.

    :param module: the float32 module, in eval mode; its ``forward`` takes ``inputs`` in order.
    :param inputs: example inputs by ``forward`` argument name — the shapes the export traces with.
    :param dynamic_shapes: ``torch.export`` dims as ``torch.export`` takes them for ``module``'s forward
        (``{"input_ids": {0: batch, 1: sequence}}``, or ``{"tensors": (...)}`` for ``forward(*tensors)``).
    :param output: the name of the one output.
    :param what: the model, for messages ("the merged llama model").
    """

    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic_shapes: dict[str, dict[int, Any]]
    output: str
    what: str


def export(graph: Graph, out_dir: Path, opset: int) -> Path:
    """Write ``out_dir/model.onnx`` (weights beside it as ``model.onnx.data`` past 2 GB)."""
    path = out_dir / MODEL_FILE
    # The exporter narrates each stage on stdout and warns about axis renaming; loraplug's own output
    # says what happened instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph.module,
                tuple(graph.inputs.values()),
                dynamo=True,
                input_names=list(graph.inputs),
                output_names=[graph.output],
                dynamic_shapes=graph.dynamic_shapes,
                opset_version=opset,
                verbose=False,
            )
            program.save(str(path))
        except Exception as exc:  # noqa: BLE001 — any exporter failure is reported as one paragraph
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise LoraplugError(
                f"torch.onnx (dynamo exporter, opset {opset}) could not export {graph.what}: {type(exc).__name__}: {first[:300]}",
                fix="The adapter and the other exports are kept. Use the `merged` export and convert it with your own "
                "tooling, or report it with the output of --debug",
            ) from exc
    return path


def signature(path: Path) -> dict[str, Any]:
    """The saved graph's opset and its inputs' and outputs' dims (names for dynamic axes)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def dims(values: Any) -> dict[str, list[str | int]]:
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": opset, "inputs": dims(proto.graph.input), "outputs": dims(proto.graph.output)}


def run_onnxruntime(path: Path, feeds: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=[PROVIDER])
    return session.run(None, {name: tensor.numpy() for name, tensor in feeds.items()})[0]


def max_abs_diff(path: Path, module: torch.nn.Module, feeds: dict[str, torch.Tensor]) -> float:
    """The largest |onnxruntime − PyTorch| over the output, for ``feeds`` (inf if either is not finite)."""
    with torch.no_grad():
        reference = module(*feeds.values()).float().numpy()
    got = run_onnxruntime(path, feeds)
    if got.shape != reference.shape:
        raise LoraplugError(
            f"onnxruntime returned shape {list(got.shape)} where PyTorch returned {list(reference.shape)} for inputs of "
            f"shapes {[list(t.shape) for t in feeds.values()]}: the export did not keep its axes dynamic",
            fix="Report it with the output of --debug; the adapter and the other exports are kept",
        )
    if not (np.isfinite(got).all() and np.isfinite(reference).all()):
        return float("inf")
    return float(np.abs(got - reference).max())


def check_parity(diff: float, tolerance: float, feeds: dict[str, torch.Tensor], what: str) -> None:
    if diff <= tolerance:
        return
    shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in feeds.items())
    raise LoraplugError(
        f"The ONNX export of {what} does not compute what PyTorch does: onnxruntime's output differs by up to "
        f"{diff:.3g} (tolerance {tolerance:g}) on inputs of shapes not used for the export ({shapes}); the file was not kept",
        fix="Raise the export's `tolerance` if that difference is acceptable for your use, or report it with the "
        "output of --debug; the adapter and the other exports are kept",
    )


def figures(
    path: Path, graph: Graph, feeds: dict[str, torch.Tensor], diff_key: str, diff: float, tolerance: float
) -> dict[str, Any]:
    """The manifest's figures: the opset and axes as written, the shapes used, the measured parity."""
    sig = signature(path)
    return {
        "opset": sig["opset"],
        "inputs": sig["inputs"],
        "outputs": sig["outputs"],
        "export_shapes": {name: list(t.shape) for name, t in graph.inputs.items()},
        "parity_shapes": {name: list(t.shape) for name, t in feeds.items()},
        diff_key: diff,
        "tolerance": tolerance,
        "parity_runtime": f"onnxruntime {_ort_version()} {PROVIDER}",
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
