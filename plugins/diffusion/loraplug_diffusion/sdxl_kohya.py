"""kohya's SDXL key names: diffusers UNet module paths respelt in Stability's SGM layout.

sd-scripts trains SDXL on its own SGM-layout UNet (``library/sdxl_original_unet.py``), so its LoRA keys
are ``lora_unet_`` + the SGM path (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``), and
its text encoders are ``lora_te1_`` (CLIP ViT-L) and ``lora_te2_`` (OpenCLIP bigG) + the transformers
path. ComfyUI (``comfy/lora.py`` ``model_lora_keys_unet``) maps these SGM names directly, diffusers
through ``_maybe_map_sgm_blocks_to_diffusers``, and Forge/A1111 as sd-scripts.

The block arithmetic follows from the architecture (sd-scripts ``library/sdxl_model_util.py``
``make_unet_conversion_map``): SGM numbers the UNet's layers in one flat list per side, with
``layers_per_block`` + 1 slots per resolution level. On the way down, slot 0 is ``conv_in`` and level i's
layer j is slot ``1 + i·(L+1) + j`` (a resnet at ``.0``, its transformer at ``.1``), its downsampler the
level's last slot ``(i+1)·(L+1)`` at ``.0.op``. On the way up, level i has L+1 layers at slots
``i·(L+1) + j``; the upsampler sits in the level's last slot after the transformer (``.2``, or ``.1``
in a level without attention). The middle block is resnet, transformer, resnet: ``.0``, ``.1``, ``.2``.
Inside a resnet the names change too (``conv1`` is ``in_layers.2``, …); inside a transformer they do not.
"""

from __future__ import annotations

import re
from typing import Any

from loraplug import LoraplugError

UNET_PREFIX = "lora_unet"
#: kohya's SDXL text-encoder prefixes: the CLIP ViT-L encoder and the OpenCLIP bigG encoder.
TEXT_ENCODER_PREFIXES = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

#: diffusers ResnetBlock2D child -> SGM ResBlock child (sd-scripts' ``unet_conversion_map_resnet``).
RESNET_CHILDREN = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: Modules outside the block structure (sd-scripts' ``unet_conversion_map``).
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}

_BLOCK = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$"
)
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def _resnet_child(rest: str) -> str:
    head, _, tail = rest.partition(".")
    mapped = RESNET_CHILDREN.get(head, head)
    return f"{mapped}.{tail}" if tail else mapped


def _layers_per_block(config: Any) -> int:
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise LoraplugError(
            f"The kohya SDXL export needs one layers_per_block for every UNet level (SGM numbering), but this "
            f"UNet's config has {layers!r}",
            fix="Use the diffusers export for this UNet, or a base with an SDXL-shaped UNet",
        )
    return layers


def sgm_path(path: str, config: Any) -> str:
    """The SGM module path of a diffusers SDXL UNet module path (``down_blocks.1.attentions.0.proj_in``
    -> ``input_blocks.4.1.proj_in``); ``config`` is the UNet's config."""
    slots = _layers_per_block(config) + 1
    for diffusers_name, sgm_name in TOP_LEVEL.items():
        if path == diffusers_name or path.startswith(diffusers_name + "."):
            return sgm_name + path[len(diffusers_name) :]
    if match := _MID.match(path):
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3) or ""
        slot = 1 if kind == "attentions" else 2 * index  # resnet, transformer, resnet
        inner = _resnet_child(rest) if kind == "resnets" else rest
        return f"middle_block.{slot}" + (f".{inner}" if inner else "")
    match = _BLOCK.match(path)
    if match is None:
        raise LoraplugError(
            f"The UNet module {path} has no place in kohya's SGM naming of SDXL",
            fix="Adapt attention, resnet, sampler or embedding layers of an SDXL UNet (adapter.target_modules, conv_modules)",
        )
    side, level, kind, index, rest = (
        match.group(1),
        int(match.group(2)),
        match.group(3),
        int(match.group(4)),
        match.group(5) or "",
    )
    if kind == "resnets":
        rest = _resnet_child(rest)
    if side == "down_blocks":
        if kind == "downsamplers":  # SGM's Downsample keeps its conv as ``op``
            return f"input_blocks.{(level + 1) * slots}.0.op" + rest.removeprefix("conv")
        slot = 1 + level * slots + index
        inner = 0 if kind == "resnets" else 1
    elif kind == "upsamplers":
        has_attention = config.up_block_types[level].startswith("CrossAttn")
        return f"output_blocks.{level * slots + slots - 1}.{2 if has_attention else 1}" + (
            f".{rest}" if rest else ""
        )
    else:
        slot = level * slots + index
        inner = 0 if kind == "resnets" else 1
    return f"{'input_blocks' if side == 'down_blocks' else 'output_blocks'}.{slot}.{inner}" + (
        f".{rest}" if rest else ""
    )


def sdxl_kohya_name(config: Any, prefix: str, module_path: str) -> str:
    """The kohya key stem of a module: ``lora_unet_`` + SGM path, or ``lora_te1_``/``lora_te2_`` + CLIP path."""
    from loraplug_diffusion.kohya import kohya_name
    from loraplug_diffusion.model import canonical_text_encoder_path

    if prefix == UNET_PREFIX:
        return kohya_name(prefix, sgm_path(module_path, config))
    return kohya_name(prefix, canonical_text_encoder_path(module_path))
