"""The merged Stable Diffusion UNet as ONNX: ``sample``, ``timestep``, ``encoder_hidden_states`` → ``noise_pred``.

The diffusion plugin's ``ModelBundle`` holds the trained UNet in ``components["unet"]`` with LoRA
injected through peft. The adapter is folded into a float32 copy; the trained UNet is left as it is,
since later exports use it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from loraplug import ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug_onnx import convert
from loraplug_onnx.options import OnnxExportOptions

EXPORT_BATCH, EXPORT_TOKENS = 2, 8
PARITY_BATCH, PARITY_TOKENS = 3, 12


class NoisePrediction(torch.nn.Module):
    """The UNet as a plain function of its three inputs, returning the predicted noise tensor."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def _lora_layers(module: Any) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return 0 if module is None else sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def merged_unet(unet: Any) -> tuple[torch.nn.Module, int]:
    """A float32 CPU copy of ``unet`` with every peft LoRA layer merged and removed; how many were merged."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(unet).to("cpu", torch.float32)  # exported and checked on the CPU, in float32
    layers = _lora_layers(merged)
    if hasattr(merged, "merge_and_unload"):  # wrapped as a PeftModel rather than injected
        return merged.merge_and_unload(safe_merge=True).eval(), layers
    for module in merged.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
    recurse_remove_peft_layers(merged)  # each LoRA layer is replaced by its base layer, which now holds W + ΔW
    return merged.eval(), layers


def _check_family(unet: Any) -> None:
    config = unet.config
    extra = {
        "addition_embed_type": getattr(config, "addition_embed_type", None),
        "class_embed_type": getattr(config, "class_embed_type", None),
    }
    used = {k: v for k, v in extra.items() if v is not None}
    if type(unet).__name__ != "UNet2DConditionModel" or used:
        what = type(unet).__name__ + (f" with {', '.join(f'{k}={v!r}' for k, v in used.items())}" if used else "")
        raise LoraplugError(
            f"The onnx export supports the Stable Diffusion 1.x/2.x UNet (UNet2DConditionModel conditioned on text "
            f"alone), not a {what} (SDXL and class-conditioned UNets need inputs it does not export)",
            fix="Remove the onnx export from this recipe; the adapter and the other exports are kept",
        )


def _inputs(config: Any, batch: int, height: int, width: int, tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "sample": torch.randn(batch, config.in_channels, height, width, generator=generator),
        "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
        "encoder_hidden_states": torch.randn(batch, tokens, config.cross_attention_dim, generator=generator),
    }


def export(options: OnnxExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> ExportResult:
    unet = model.components.get("unet")
    if unet is None:
        raise LoraplugError(
            "The stable-diffusion model has no components['unet'] to export",
            fix="This is a bug in the plugin serving stable-diffusion: its ModelBundle must hold the UNet there",
        )
    _check_family(unet)
    merged, layers = merged_unet(unet)
    config = merged.config
    # Latent sides must divide by the UNet's total downsampling, so the axes are multiples of it.
    factor = 2 ** (len(config.block_out_channels) - 1)
    generator = torch.Generator().manual_seed(ctx.seed)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    height, width = torch.export.Dim("height"), torch.export.Dim("width")
    graph = convert.Graph(
        module=NoisePrediction(merged).eval(),
        inputs=_inputs(config, EXPORT_BATCH, 2 * factor, 2 * factor, EXPORT_TOKENS, generator),
        dynamic_shapes={
            "sample": {0: batch, 2: factor * height, 3: factor * width},
            "timestep": {0: batch},
            "encoder_hidden_states": {0: batch, 1: sequence},
        },
        output="noise_pred",
        what="the merged UNet",
    )
    path = convert.export(graph, out_dir, options.opset)
    feeds = _inputs(config, PARITY_BATCH, 3 * factor, 4 * factor, PARITY_TOKENS, generator)
    diff = convert.max_abs_diff(path, graph.module, feeds)
    convert.check_parity(diff, options.tolerance, feeds, graph.what)
    merged.save_config(str(out_dir))
    notes = [f"merged {layers} LoRA layers of the UNet" if layers else "the UNet carries no LoRA layers: exported as the base UNet"]
    if _lora_layers(model.components.get("text_encoder")):
        notes.append(
            "the text encoder was trained too, and its LoRA is not in this export: only the UNet is; pair it with the "
            "text encoder of the run's diffusers export"
        )
    else:
        notes.append("only the UNet is exported; the text encoder, VAE and scheduler are the base model's")
    return ExportResult(
        figures=convert.figures(path, graph, feeds, "max_abs_diff", diff, options.tolerance),
        notes=notes,
        loads_with='onnxruntime.InferenceSession("model.onnx").run(["noise_pred"], {"sample": x, "timestep": t, "encoder_hidden_states": h})',
    )
