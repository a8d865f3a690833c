"""SDXL's diffusers LoRA file: the UNet's and each trained text encoder's LoRA, for ``StableDiffusionXLPipeline``.

Written by diffusers' own ``StableDiffusionXLPipeline.save_lora_weights`` (keys ``unet.…``,
``text_encoder.…``, ``text_encoder_2.…``, with each part's LoraConfig in the header), so
``load_lora_weights`` reads ranks and alphas back exactly. The kohya and merged exports are export.py's,
with SDXL's names (sdxl_kohya.py) and pipeline (parity.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loraplug import ModelBundle
from loraplug_diffusion.export import DIFFUSERS_FILE, adapter_metadata, lora_weights
from loraplug_diffusion.model import canonical_text_encoder_path
from loraplug_diffusion.sdxl_model import trained_text_encoders


def save_sdxl_diffusers(model: ModelBundle, out_dir: Path, dtype: torch.dtype) -> None:
    from diffusers import StableDiffusionXLPipeline

    unet = model.components["unet"]
    parts: dict[str, Any] = {}
    for name in trained_text_encoders(model):
        encoder = model.components[name]
        parts[f"{name}_lora_layers"] = lora_weights(encoder, dtype, canonical_text_encoder_path)
        parts[f"{name}_lora_adapter_metadata"] = adapter_metadata(encoder)
    StableDiffusionXLPipeline.save_lora_weights(
        str(out_dir),
        unet_lora_layers=lora_weights(unet, dtype),
        unet_lora_adapter_metadata=adapter_metadata(unet),
        weight_name=DIFFUSERS_FILE,
        safe_serialization=True,
        **parts,
    )
