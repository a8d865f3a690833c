"""Options of the ``onnx`` export kind; imported at start-up, so pydantic only."""

from __future__ import annotations

from pydantic import Field

from loraplug import Options

#: The opset written by default: what torch.onnx's dynamo exporter targets in torch 2.6–2.14, and what
#: onnxruntime 1.17 and newer run.
DEFAULT_OPSET = 20


class OnnxExportOptions(Options):
    """``[[export]] kind = "onnx"``."""

    opset: int = Field(
        DEFAULT_OPSET,
        ge=18,
        le=23,
        description="ONNX opset of the default domain (the dynamo exporter needs 18 or newer).",
    )
    tolerance: float = Field(
        1e-4,
        gt=0,
        description="Largest absolute difference between onnxruntime's and PyTorch's float32 outputs (a causal LM's "
        "logits, a UNet's noise prediction) on inputs of a shape not used for the export; above it the export fails.",
    )
    any_family: bool = Field(
        False,
        description="Also try models whose plugin has not verified their export as a traced graph (for causal-lm: "
        "the families docs/formats.md lists); the parity check still guards the result.",
    )
