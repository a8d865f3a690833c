"""Test helpers for recipes on the tiny-sd preset (used by this plugin's tests; handy for other plugins)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug.testing import write_recipe

if TYPE_CHECKING:
    import numpy as np

#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the values that shape the module tree).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

PALETTE = {"red": (220, 60, 50), "teal": (40, 184, 176), "orange": (236, 128, 44), "navy": (22, 34, 64)}


def draw_images(
    folder: Path, count: int, *, size: tuple[int, int] = (48, 48), seed: int = 0, captions: bool = True
) -> list[Path]:
    """``count`` PNGs of a coloured square on a plain background, each with a same-stem .txt caption."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        background, shape = rng.sample(sorted(PALETTE), 2)
        image = Image.new("RGB", size, PALETTE[background])
        left, top = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
        ImageDraw.Draw(image).rectangle(
            (left, top, left + size[0] // 3, top + size[1] // 3), fill=PALETTE[shape]
        )
        path = folder / f"img-{index:03d}.png"
        image.save(path)
        if captions:
            path.with_suffix(".txt").write_text(
                f"a {shape} square, {background} background\n", encoding="utf-8"
            )
        paths.append(path)
    return paths


def sd_pixels(pipeline: Any, prompt: str, seeds: list[int]) -> np.ndarray:
    """``prompt`` drawn by a Stable Diffusion (XL) pipeline at 32 px in 3 steps of DPM-Solver with trailing
    spacing (as sampling draws), guidance 2: one int16 array per seed, stacked, for comparing images."""
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from loraplug_diffusion.sample import draw

    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, timestep_spacing="trailing"
    )
    with torch.no_grad():
        images = draw(pipeline, prompt, seeds=seeds, size=32, steps=3, guidance=2.0)
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def tiny_sd_recipe(tmp_path: Path, **changes: Any) -> Path:
    """A recipe for tiny-sd on eight small drawn images that trains and samples in a few seconds.

    ``changes`` update its sections (``model={"flip": True}``); a section with another ``kind`` replaces it.
    """
    images = tmp_path / "images"
    if not images.exists():
        draw_images(images, 8)
    recipe: dict[str, Any] = {
        "run": {"name": "tiny-sd", "output_dir": str(tmp_path / "runs"), "seed": 3},
        "data": {"kind": "imagefolder", "path": str(images), "val_fraction": 0.25},
        "model": {
            "kind": "stable-diffusion",
            "pretrained": "tiny-sd",
            "resolution": 32,
            "sample_steps": 2,
            "sample_images": 2,
            "sample_guidance_scale": 1.0,
        },
        "adapter": {"kind": "lora", "r": 4, "alpha": 4},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2, "log_every_n_steps": 1},
        "eval": {"sample_prompts": ["a teal square, navy background"]},
        "export": [],
    }
    for section, values in changes.items():
        if isinstance(values, list) or values.get("kind", recipe[section].get("kind")) != recipe[section].get(
            "kind"
        ):
            recipe[section] = values  # a list ([[export]]) or another kind: replaced, not merged
        else:
            recipe.setdefault(section, {}).update(values)
    return write_recipe(tmp_path / "recipe.toml", recipe)
