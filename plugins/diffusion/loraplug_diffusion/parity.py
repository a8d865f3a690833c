"""Checking an export against the trained model: load it back with diffusers, compare the UNet's output.

The probe is one UNet call on fixed noise at a middle timestep, conditioned on a fixed prompt encoded
by each side's own text encoder — so a text-encoder LoRA is checked too. Both sides run in eval mode
and the base's own dtype; the figure is the largest absolute difference of the outputs (noise or
velocity predictions, of order 1).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from loraplug import LoraplugError, ModelBundle, RunContext
from loraplug.toolkit import parity_tolerance, torch_dtype
from loraplug_diffusion.model import encode_text, locate, tokenize
from loraplug_diffusion.options import ParityOptions, StableDiffusionOptions
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sdxl_model import SDXL_KIND, encode_prompt

PROBE_PROMPT = "a photo of a cat, flat poster style"
PROBE_SIDE = 16  # latents: any multiple of the UNet's total downsampling (8 for SD)


def model_options(ctx: RunContext) -> StableDiffusionOptions:
    options = ctx.recipe.model.options
    assert isinstance(options, StableDiffusionOptions)  # noqa: S101
    return options


def base_pipeline(model: ModelBundle, ctx: RunContext, *, dtype: torch.dtype | None = None) -> Any:
    """A freshly loaded copy of the base pipeline (no LoRA), on the trained UNet's device."""
    quiet_libraries()
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    options = model_options(ctx)
    revision: dict[str, Any] = {"revision": options.revision} if options.revision else {}
    if model.kind == SDXL_KIND:
        pipeline = StableDiffusionXLPipeline.from_pretrained(
            locate(options, ctx.cache_dir),
            torch_dtype=dtype or torch_dtype(options.dtype),
            add_watermarker=False,
            **revision,
        )
        pipeline.vae.to(torch.float32)  # SDXL's VAE overflows in fp16; training encodes in float32 too
    else:
        pipeline = StableDiffusionPipeline.from_pretrained(
            locate(options, ctx.cache_dir),
            torch_dtype=dtype or torch_dtype(options.dtype),
            safety_checker=None,
            requires_safety_checker=False,
            **revision,
        )
    if options.prediction_type != "auto":
        pipeline.scheduler.register_to_config(prediction_type=options.prediction_type)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(next(model.components["unet"].parameters()).device)


def probe(unet: Any, text_encoder: Any, tokenizer: Any) -> torch.Tensor:
    parameter = next(unet.parameters())
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, unet.config.in_channels, PROBE_SIDE, PROBE_SIDE, generator=generator)
    with torch.no_grad():
        states = encode_text(text_encoder, tokenize(tokenizer, [PROBE_PROMPT]))
        out = unet(
            latents.to(parameter.device, unet.dtype),
            torch.tensor([500], device=parameter.device),
            encoder_hidden_states=states.to(parameter.device, unet.dtype),
        ).sample
    return out.float().cpu()


def sdxl_probe(parts: Any) -> torch.Tensor:
    """``probe`` for SDXL: both encoders' prompt embeddings, the pooled one, and fixed size conditioning.

    :param parts: anything with SDXL's components as attributes or keys (a pipeline or a bundle's dict).
    """
    get = parts.get if isinstance(parts, dict) else partial(getattr, parts)
    unet = get("unet")
    parameter = next(unet.parameters())
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, unet.config.in_channels, PROBE_SIDE, PROBE_SIDE, generator=generator)
    side = 8 * PROBE_SIDE
    with torch.no_grad():
        states, pooled = encode_prompt(
            get("text_encoder"),
            get("text_encoder_2"),
            tokenize(get("tokenizer"), [PROBE_PROMPT]),
            tokenize(get("tokenizer_2"), [PROBE_PROMPT]),
        )
        out = unet(
            latents.to(parameter.device, unet.dtype),
            torch.tensor([500], device=parameter.device),
            encoder_hidden_states=states.to(parameter.device, unet.dtype),
            added_cond_kwargs={
                "text_embeds": pooled.to(parameter.device, unet.dtype),
                "time_ids": torch.tensor(
                    [[side, side, 0, 0, side, side]], device=parameter.device, dtype=unet.dtype
                ),
            },
        ).sample
    return out.float().cpu()


def pipeline_probe(pipeline: Any) -> torch.Tensor:
    """The probe of a loaded pipeline (an export read back)."""
    if hasattr(pipeline, "text_encoder_2"):
        return sdxl_probe(pipeline)
    return probe(pipeline.unet, pipeline.text_encoder, pipeline.tokenizer)


def trained_probe(model: ModelBundle) -> torch.Tensor:
    module = model.module
    was_training = module.training
    module.eval()
    try:
        if model.kind == SDXL_KIND:
            return sdxl_probe(model.components)
        return probe(
            model.components["unet"], model.components["text_encoder"], model.components["tokenizer"]
        )
    finally:
        module.train(was_training)


def tolerance(options: ParityOptions, ctx: RunContext, *, saved_dtype: str) -> float:
    """The export's tolerance, or the default for the least precise of the base's and the file's dtypes.

    A LoRA loaded by diffusers computes in the base's dtype, while training kept it in float32; with a
    16-bit base the outputs then differ by rounding alone (about 0.02 measured for bf16 on tiny-sd).
    """
    return parity_tolerance(model_options(ctx).dtype, saved_dtype, given=options.tolerance)


def compare(
    pipeline: Any, model: ModelBundle, options: ParityOptions, ctx: RunContext, what: str, *, saved_dtype: str
) -> dict[str, float]:
    """The parity figure of ``pipeline`` (an export loaded back) against the trained model; raise when too far."""
    difference = float((pipeline_probe(pipeline) - trained_probe(model)).abs().max())
    limit = tolerance(options, ctx, saved_dtype=saved_dtype)
    if difference > limit:
        raise LoraplugError(
            f"The {what} export, loaded back with diffusers, predicts differently from the trained model: the UNet's "
            f"outputs differ by up to {difference:.2e} (tolerance {limit:g})",
            fix="Export in float32 (`dtype`), or raise the export's `tolerance` if the base runs in reduced precision",
        )
    return {"max_abs_diff_vs_trained": difference}
