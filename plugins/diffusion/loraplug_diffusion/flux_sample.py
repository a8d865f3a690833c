"""Sample grids of a Flux model through diffusers' FluxPipeline, over the bundle's own (LoRA-carrying) parts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loraplug import ModelBundle, RunContext, Sample
from loraplug_diffusion.flux_model import TEXT_ENCODERS
from loraplug_diffusion.flux_options import FluxOptions
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sample import borrowed, save_grids


def pipeline_of(model: ModelBundle) -> Any:
    """A FluxPipeline over the bundle's components, the frozen parts moved to the transformer's device."""
    quiet_libraries()
    from diffusers import FluxPipeline

    parts = model.components
    device = next(parts["transformer"].parameters()).device
    for name in ("vae", *TEXT_ENCODERS):
        parts[name].to(device)
    pipeline = FluxPipeline(
        scheduler=parts["noise_scheduler"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=parts["tokenizer_2"],
        transformer=parts["transformer"],
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def draw(pipeline: Any, prompt: str, options: FluxOptions, seeds: Sequence[int], size: int) -> list[Any]:
    """PIL images of ``prompt``, one per seed (the VAE decodes in float32, its own dtype)."""
    return pipeline(
        prompt,
        height=size,
        width=size,
        num_inference_steps=options.sample_steps,
        guidance_scale=options.sample_guidance_scale,
        num_images_per_prompt=len(seeds),
        max_sequence_length=pipeline.tokenizer_2.model_max_length,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
    ).images


def generate(
    model: ModelBundle, options: FluxOptions, prompts: Sequence[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    with borrowed(model, ("vae", *TEXT_ENCODERS)):
        pipeline = pipeline_of(model)
        size = options.sample_size or options.resolution
        seeds = [ctx.seed + k for k in range(options.sample_images)]
        return save_grids(prompts, out_dir, lambda prompt: draw(pipeline, prompt, options, seeds, size))
