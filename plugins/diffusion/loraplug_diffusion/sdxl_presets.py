"""``tiny-sdxl``: a small SDXL built from configs, saved as a diffusers SDXL pipeline, cached on disk.

The same shape as ``stabilityai/stable-diffusion-xl-base-1.0``, scaled down: two CLIP text encoders (the
second a ``CLIPTextModelWithProjection``, whose projected pooled output conditions the UNet), a UNet with
``addition_embed_type="text_time"`` whose cross-attention width is the two encoders' widths together,
and the hand-set colour VAE of ``tiny-sd`` (see presets.py), so samples show what the UNet learnt. It is
written with ``save_pretrained`` and read back with ``from_pretrained``, as the real checkpoint is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplug.toolkit import Preset

#: The SDXL UNet's size-conditioning values per sample: original (h, w), crop (top, left), target (h, w).
TIME_IDS = 6

TINY_SDXL: dict[str, Any] = {
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 2,  # SDXL's: each SGM block group then has three slots, as in the real UNet
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2],
        "attention_head_dim": [4, 8],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
    },
    "text_encoder_2": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "projection_dim": 32,
        "hidden_act": "gelu",  # OpenCLIP bigG's activation
    },
    "vae_levels": 3,
    "vae_channels": 16,
    "seed": 1,
    "version": 1,
}


def _build(target: Path) -> None:
    from loraplug_diffusion.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from loraplug_diffusion.presets import _build_tokenizer, colour_vae, tiny_clip_config

    tokenizer = _build_tokenizer()
    first, second = TINY_SDXL["text_encoder"], TINY_SDXL["text_encoder_2"]
    levels, channels = TINY_SDXL["vae_levels"], TINY_SDXL["vae_channels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SDXL["seed"])
        text_encoder = CLIPTextModel(tiny_clip_config(tokenizer, first))
        text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config(tokenizer, second))
        unet = UNet2DConditionModel(
            **TINY_SDXL["unet"],
            # Context: both encoders' penultimate states side by side; added embedding: the pooled
            # projection and a sinusoid per size value (diffusers' get_aug_embed).
            cross_attention_dim=first["hidden_size"] + second["hidden_size"],
            projection_class_embeddings_input_dim=second["projection_dim"]
            + TIME_IDS * TINY_SDXL["unet"]["addition_time_embed_dim"],
        )
        vae = colour_vae(levels, channels)
    # SDXL base's scheduler config (training reads it into a DDPMScheduler, as diffusers' scripts do).
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipeline.save_pretrained(target, safe_serialization=True)


TINY_SDXL_PRESET = Preset("tiny-sdxl", TINY_SDXL, _build, marker="model_index.json")
