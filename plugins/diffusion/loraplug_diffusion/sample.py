"""Sample grids: each prompt drawn with seeds ``run.seed, run.seed+1, …`` so grids compare across steps."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from loraplug import ModelBundle, RunContext, Sample
from loraplug.toolkit import atomic_write_bytes
from loraplug_diffusion.options import StableDiffusionOptions
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sdxl_model import SDXL_KIND

_GRID = re.compile(r"^grid-(\d+)-p\d+\.png$")


def frozen_parts(model: ModelBundle) -> tuple[str, ...]:
    """The components besides the UNet a pipeline runs (and training may have offloaded)."""
    return ("vae", "text_encoder", "text_encoder_2") if model.kind == SDXL_KIND else ("vae", "text_encoder")


def pipeline_of(model: ModelBundle) -> Any:
    """A StableDiffusion(XL)Pipeline over the bundle's own components (the UNet with its LoRA as it is now)."""
    quiet_libraries()
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    parts = model.components
    device = next(parts["unet"].parameters()).device
    for name in frozen_parts(model):
        parts[name].to(device)
    # "trailing" starts sampling at the last training timestep (pure noise), which SD's "leading"
    # spacing skips; an undertrained model then leaves no residual noise in its samples.
    scheduler = DPMSolverMultistepScheduler.from_config(
        parts["noise_scheduler"].config, timestep_spacing="trailing"
    )
    if model.kind == SDXL_KIND:
        from diffusers import StableDiffusionXLPipeline

        pipeline = StableDiffusionXLPipeline(
            vae=parts["vae"],
            text_encoder=parts["text_encoder"],
            text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts["tokenizer"],
            tokenizer_2=parts["tokenizer_2"],
            unet=parts["unet"],
            scheduler=scheduler,
            add_watermarker=False,  # an invisible watermark would change the pixels samples are compared by
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    pipeline = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def draw(
    pipeline: Any, prompt: str, *, seeds: Sequence[int], size: int, steps: int, guidance: float
) -> list[Any]:
    """PIL images of ``prompt``, one per seed; the VAE decodes in float32 whatever the UNet's dtype."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    latents = pipeline(
        prompt,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images_per_prompt=len(seeds),
        generator=generators,
        output_type="latent",
    ).images
    vae = pipeline.vae
    parameter = next(vae.parameters())
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = latents.to(parameter.device, parameter.dtype) / vae.config.scaling_factor + shift
    pixels = vae.decode(latents, return_dict=False)[0]
    return pipeline.image_processor.postprocess(pixels, output_type="pil")


def grid(images: Sequence[Any]) -> Any:
    from PIL import Image

    width, height = images[0].size
    canvas = Image.new("RGB", (width * len(images), height), (255, 255, 255))
    for column, image in enumerate(images):
        canvas.paste(image, (column * width, 0))
    return canvas


def _next_index(out_dir: Path) -> int:
    taken = [int(m.group(1)) for p in out_dir.glob("grid-*.png") if (m := _GRID.match(p.name))]
    return max(taken, default=-1) + 1


def generate(
    model: ModelBundle,
    options: StableDiffusionOptions,
    prompts: Sequence[str],
    out_dir: Path,
    ctx: RunContext,
) -> list[Sample]:
    with borrowed(model, frozen_parts(model)):
        pipeline = pipeline_of(model)
        size = options.sample_size or options.resolution
        seeds = [ctx.seed + k for k in range(options.sample_images)]
        return save_grids(
            prompts,
            out_dir,
            lambda prompt: draw(
                pipeline,
                prompt,
                seeds=seeds,
                size=size,
                steps=options.sample_steps,
                guidance=options.sample_guidance_scale,
            ),
        )


@contextmanager
def borrowed(model: ModelBundle, names: Iterable[str]) -> Iterator[None]:
    """The components ``names`` usable on the sampling device inside the block, each back where it was after it.

    Training may have offloaded the VAE and text encoders (see prepare.py); sampling borrows them.
    """
    homes = {name: next(model.components[name].parameters()).device for name in names}
    try:
        yield
    finally:
        for name, device in homes.items():
            model.components[name].to(device)


def save_grids(
    prompts: Sequence[str], out_dir: Path, draw_prompt: Callable[[str], list[Any]]
) -> list[Sample]:
    """One grid PNG per prompt of the images ``draw_prompt`` draws, numbered after the grids already in ``out_dir``."""
    index = _next_index(out_dir)  # earlier grids are never overwritten
    samples = []
    for number, prompt in enumerate(prompts):
        buffer = io.BytesIO()
        grid(draw_prompt(prompt)).save(buffer, format="PNG")
        path = out_dir / f"grid-{index:04d}-p{number}.png"
        atomic_write_bytes(path, buffer.getvalue())
        samples.append(Sample(prompt=prompt, image_path=path))
    return samples
