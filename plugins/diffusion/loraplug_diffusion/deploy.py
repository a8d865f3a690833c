"""The Stable Diffusion UNet as exporters see it (:class:`loraplug.Deployable`): merged, driven by latents.

The bundle holds the trained UNet in ``components["unet"]`` with the adapter injected through peft.
The adapter is folded into a float32 CPU copy; the trained UNet is left as it is, since later exports
use it. Exporters get ``sample``, ``timestep``, ``encoder_hidden_states`` → ``noise_pred``, with the
latent sides dynamic in multiples of the UNet's total downsampling. Imported by hook bodies only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from loraplug import Deployable, LoraplugError, MergeCheck, ModelBundle, RunContext
from loraplug.toolkit import DTYPE_NAMES, parity_tolerance
from loraplug_diffusion.quiet import quiet_libraries

EXPORT_BATCH, EXPORT_TOKENS = 2, 8
PARITY_BATCH, PARITY_TOKENS = 3, 12


def probe(unet: Any, inputs: dict[str, Any]) -> Any:
    """The UNet as a plain function of its three inputs: the predicted noise (or velocity) tensor."""
    return unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], return_dict=False)[
        0
    ].float()


def adapter_layers(module: Any) -> int:
    """How many peft adapter layers (LoRA, LoHa, LoKr) ``module`` holds; 0 for None."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return 0 if module is None else sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def merged_unet(unet: Any) -> Any:
    """A float32 CPU copy of ``unet`` with every peft adapter layer merged and removed."""
    quiet_libraries()
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(unet).to("cpu", torch.float32)
    if hasattr(merged, "merge_and_unload"):  # wrapped as a PeftModel rather than injected
        return merged.merge_and_unload(safe_merge=True).eval()
    for module in merged.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
    # Each adapter layer is replaced by its base layer, which now holds W + ΔW.
    recurse_remove_peft_layers(merged)
    return merged.eval()


def check_family(unet: Any) -> None:
    """Refuse a UNet that needs more inputs than latents, a timestep and text states (SDXL, class-conditioned)."""
    config = unet.config
    extra = {
        "addition_embed_type": getattr(config, "addition_embed_type", None),
        "class_embed_type": getattr(config, "class_embed_type", None),
    }
    used = {k: v for k, v in extra.items() if v is not None}
    if type(unet).__name__ != "UNet2DConditionModel" or used:
        what = type(unet).__name__ + (
            f" with {', '.join(f'{k}={v!r}' for k, v in used.items())}" if used else ""
        )
        raise LoraplugError(
            f"Exports of the merged UNet (onnx, int8) support the Stable Diffusion 1.x/2.x UNet (UNet2DConditionModel "
            f"conditioned on text alone), not a {what} (SDXL and class-conditioned UNets need inputs they do not export)",
            fix="Remove that export from this recipe; the adapter and the other exports are kept",
        )


def latent_inputs(
    config: Any, batch: int, height: int, width: int, tokens: int, generator: torch.Generator
) -> dict[str, Any]:
    return {
        "sample": torch.randn(batch, config.in_channels, height, width, generator=generator),
        "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
        "encoder_hidden_states": torch.randn(batch, tokens, config.cross_attention_dim, generator=generator),
    }


@torch.no_grad()
def _trained_output(unet: Any, inputs: dict[str, Any]) -> Any:
    """``probe`` of the trained UNet as it computes: its device and dtype, eval mode."""
    parameter = next(unet.parameters())
    moved = {k: v.to(parameter.device, unet.dtype if k != "timestep" else v.dtype) for k, v in inputs.items()}
    was_training = unet.training
    unet.eval()
    try:
        return probe(unet, moved).cpu()
    finally:
        unet.train(was_training)


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    unet = model.components.get("unet")
    if unet is None:
        raise LoraplugError(
            "The stable-diffusion model has no components['unet'] to export",
            fix="This is a bug in the plugin serving stable-diffusion: its ModelBundle must hold the UNet there",
        )
    check_family(unet)
    layers = adapter_layers(unet)
    merged = merged_unet(unet)
    config = merged.config
    # Latent sides must divide by the UNet's total downsampling, so the axes are multiples of it.
    factor = 2 ** (len(config.block_out_channels) - 1)
    generator = torch.Generator().manual_seed(ctx.seed)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    height, width = torch.export.Dim("height"), torch.export.Dim("width")
    inputs = latent_inputs(config, EXPORT_BATCH, 2 * factor, 2 * factor, EXPORT_TOKENS, generator)
    check_inputs = latent_inputs(config, PARITY_BATCH, 3 * factor, 4 * factor, PARITY_TOKENS, generator)

    with torch.no_grad():
        difference = float((probe(merged, check_inputs) - _trained_output(unet, check_inputs)).abs().max())
    trained_dtypes = sorted(
        {str(p.dtype).removeprefix("torch.") for p in unet.parameters()} & set(DTYPE_NAMES)
    )
    merge_check = MergeCheck(
        difference,
        parity_tolerance(*trained_dtypes),
        {"max_abs_diff_vs_trained": difference},
        subject="The merged UNet's outputs",
        against="the trained UNet's",
        fix="Raise the export's `tolerance` if the base runs in reduced precision, or report it to the authors of "
        "loraplug-diffusion with the run's recipe.toml",
    )
    notes = [
        f"merged {layers} LoRA layers of the UNet"
        if layers
        else "the UNet carries no LoRA layers: exported as the base UNet"
    ]
    if adapter_layers(model.components.get("text_encoder")):
        notes.append(
            "the text encoder was trained too, and its LoRA is not in this export: only the UNet is; pair it with the "
            "text encoder of the run's diffusers export"
        )
    else:
        notes.append("only the UNet is exported; the text encoder, VAE and scheduler are the base model's")
    dtype = str(unet.dtype).removeprefix("torch.")

    def save_beside(directory: Path) -> None:
        merged.save_config(str(directory))

    return Deployable(
        module=merged,
        inputs=inputs,
        check_inputs=check_inputs,
        probe=probe,
        output="noise_pred",
        what="the merged UNet",
        dynamic_shapes={
            "sample": {0: batch, 2: factor * height, 3: factor * width},
            "timestep": {0: batch},
            "encoder_hidden_states": {0: batch, 1: sequence},
        },
        dtype=dtype if dtype in DTYPE_NAMES else "float32",
        compute_dtype=dtype if dtype in DTYPE_NAMES else "float32",
        save_beside=save_beside,
        loads_with="UNet2DConditionModel.from_config(config.json), then the weights",
        merge_check=merge_check,
        notes=notes,
    )
