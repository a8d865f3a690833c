"""Sample grids of a Flux model through diffusers' FluxPipeline, over the bundle's own (LoRA-carrying) parts."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loraplug import ModelBundle, RunContext, Sample
from loraplug.toolkit import atomic_write_bytes
from loraplug_diffusion.flux_model import TEXT_ENCODERS
from loraplug_diffusion.flux_options import FluxOptions
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sample import _next_index, grid


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
    # The VAE and text encoders may be offloaded while training (see prepare.py): borrow them, then put them back.
    homes = {name: next(model.components[name].parameters()).device for name in ("vae", *TEXT_ENCODERS)}
    try:
        pipeline = pipeline_of(model)
        size = options.sample_size or options.resolution
        seeds = [ctx.seed + k for k in range(options.sample_images)]
        index = _next_index(out_dir)  # earlier grids are never overwritten
        samples = []
        for number, prompt in enumerate(prompts):
            buffer = io.BytesIO()
            grid(draw(pipeline, prompt, options, seeds, size)).save(buffer, format="PNG")
            path = out_dir / f"grid-{index:04d}-p{number}.png"
            atomic_write_bytes(path, buffer.getvalue())
            samples.append(Sample(prompt=prompt, image_path=path))
        return samples
    finally:
        for name, device in homes.items():
            model.components[name].to(device)
