"""The kohya Flux LoRA file: sd-scripts' ``networks/lora_flux.py`` keys, what ComfyUI and Forge load.

Names are ``lora_unet_`` + the BFL module path with ``_`` (``double_blocks_0_img_attn_qkv``), each with
``.lora_down.weight``, ``.lora_up.weight`` and a 0-dim ``.alpha``; the update is ``up @ down · alpha/rank``.
BFL fuses layers diffusers keeps apart, so their LoRAs are fused too (diffusers' ``convert_to_sd_scripts_cat``
and kohya's ``LoRANetwork.state_dict`` with ``split_qkv``, which re-fuses): down = the members' downs
concatenated (rank Σrᵢ), up = block-diagonal (member i's up, times its alpha/r, in its rows and its
columns), alpha = Σrᵢ (scale 1). A member without LoRA gets zero rows (``proj_mlp`` when only attention
trains). This is exact: up @ down stacks each member's own update. ComfyUI adds it to its fused weight;
diffusers' ``_convert_kohya_flux_lora_to_diffusers`` splits it back by rows.

The map (diffusers' ``_convert_sd_scripts_to_ai_toolkit``; ComfyUI's ``utils.flux_to_diffusers``):

==========================  ===============================================================
kohya (``double_blocks_N_``)  diffusers (``transformer_blocks.N.``)
``img_attn_qkv``            ``attn.to_q`` ‖ ``attn.to_k`` ‖ ``attn.to_v``
``txt_attn_qkv``            ``attn.add_q_proj`` ‖ ``attn.add_k_proj`` ‖ ``attn.add_v_proj``
``img_attn_proj``           ``attn.to_out.0``;  ``txt_attn_proj``: ``attn.to_add_out``
``img_mlp_0`` / ``_2``      ``ff.net.0.proj`` / ``ff.net.2`` (txt: ``ff_context.…``)
``img_mod_lin``             ``norm1.linear``;  ``txt_mod_lin``: ``norm1_context.linear``
``single_blocks_N_linear1``  ``attn.to_q`` ‖ ``to_k`` ‖ ``to_v`` ‖ ``proj_mlp`` (``single_transformer_blocks.N.``)
``…linear2``                ``proj_out``;  ``…modulation_lin``: ``norm.linear``
==========================  ===============================================================
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from loraplug import ModelBundle, RunContext, RunStatus, __version__
from loraplug.toolkit import atomic_write_bytes, torch_dtype
from loraplug_diffusion.flux_options import FluxKohyaExportOptions, FluxLoraOptions, FluxOptions
from loraplug_diffusion.kohya import MINIMAL_KEYS, addnet_hashes, optimizer_text

PREFIX = "lora_unet"
NETWORK_MODULE = "networks.lora_flux"
BASE_MODEL_VERSION = "flux1"  # sd-scripts' flux_utils.MODEL_VERSION_FLUX_V1

#: kohya module (after ``double_blocks_N_``) -> its diffusers members (after ``transformer_blocks.N.``), in row order.
DOUBLE: dict[str, tuple[str, ...]] = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
BLOCKS = (
    ("double_blocks", "transformer_blocks", DOUBLE),
    ("single_blocks", "single_transformer_blocks", SINGLE),
)


def kohya_modules(transformer: Any) -> dict[str, list[str]]:
    """Every kohya module name of ``transformer`` -> the full diffusers paths it fuses, in row order."""
    modules: dict[str, list[str]] = {}
    for kohya_blocks, diffusers_blocks, table in BLOCKS:
        for index in range(len(getattr(transformer, diffusers_blocks))):
            for name, members in table.items():
                modules[f"{PREFIX}_{kohya_blocks}_{index}_{name}"] = [
                    f"{diffusers_blocks}.{index}.{m}" for m in members
                ]
    return modules


def fuse(
    members: list[tuple[int, tuple[torch.Tensor, torch.Tensor, float] | None]],
) -> dict[str, torch.Tensor]:
    """One kohya module from its members' ``(out_features, (A, B, alpha/r) or None)``: down, up, alpha (scale 1)."""
    trained = [lora for _, lora in members if lora is not None]
    if len(members) == 1:  # not fused: peft's own tensors and scale
        down, up, scale = trained[0]
        rank = down.shape[0]
        return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(scale * rank)}
    down = torch.cat([a for a, _, _ in trained])
    up = torch.zeros(sum(out for out, _ in members), down.shape[0], dtype=down.dtype)
    row = column = 0
    for out, lora in members:
        if lora is not None:
            a, b, scale = lora
            up[row : row + out, column : column + a.shape[0]] = b * scale
            column += a.shape[0]
        row += out
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(down.shape[0]))}


def kohya_tensors(transformer: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The transformer's LoRA layers under their kohya keys, fused as BFL's layers are; in ``dtype`` on the CPU."""
    from peft.tuners.lora import LoraLayer

    layers = {
        p: m for p, m in transformer.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A
    }
    tensors: dict[str, torch.Tensor] = {}
    for name, paths in kohya_modules(transformer).items():
        if not any(p in layers for p in paths):
            continue
        members = []
        for path in paths:
            layer = layers.get(path)
            base = transformer.get_submodule(path)
            out = (base.base_layer if layer is not None else base).out_features
            lora = (
                (
                    layer.lora_A["default"].weight.detach().float().cpu(),
                    layer.lora_B["default"].weight.detach().float().cpu(),
                    float(layer.scaling["default"]),
                )
                if layer is not None
                else None
            )
            members.append((out, lora))
        for suffix, tensor in fuse(members).items():
            tensors[f"{name}.{suffix}"] = tensor.to(dtype).contiguous()
    return tensors


@torch.no_grad()
def add_kohya_deltas(transformer: Any, tensors: dict[str, torch.Tensor]) -> int:
    """Add a kohya Flux file's updates to ``transformer``'s weights as ComfyUI applies them: up @ down · alpha/rank
    onto the fused BFL weight, i.e. row slices of the diffusers members in order. Returns the modules applied."""
    applied = 0
    for name, paths in kohya_modules(transformer).items():
        if f"{name}.lora_down.weight" not in tensors:
            continue
        down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
        alpha = float(tensors.get(f"{name}.alpha", torch.tensor(down.shape[0])))
        delta = up @ down * (alpha / down.shape[0])
        row = 0
        for path in paths:
            weight = transformer.get_submodule(path).weight
            weight += delta[row : row + weight.shape[0]].to(weight.device, weight.dtype)
            row += weight.shape[0]
        applied += 1
    return applied


def flux_metadata(options: FluxKohyaExportOptions, model: ModelBundle, ctx: RunContext) -> dict[str, str]:
    """sd-scripts' ``ss_*`` keys for a Flux LoRA (``flux1``, ``networks.lora_flux``) and ``modelspec.*``."""
    recipe = ctx.recipe
    adapter, flux, train = recipe.adapter.options, recipe.model.options, recipe.train
    assert isinstance(adapter, FluxLoraOptions) and isinstance(flux, FluxOptions)  # noqa: S101
    dev = bool(model.components["transformer"].config.guidance_embeds)
    network_args = {"train_blocks": "all" if len(adapter.blocks) == 2 else adapter.blocks[0]}
    metadata = {
        "ss_v2": "False",
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": str(adapter.r),
        "ss_network_alpha": str(adapter.alpha),
        "ss_network_args": json.dumps(network_args),
    }
    assert set(metadata) == set(MINIMAL_KEYS)  # noqa: S101 — what sd-scripts keeps with --no_metadata
    now = time.time()
    if options.metadata == "full":
        status = RunStatus.load(ctx.run_dir) or RunStatus()
        metadata.update(
            {
                "ss_output_name": options.filename or recipe.run.name,
                "ss_training_comment": f"trained with loraplug {__version__}",
                "ss_sd_model_name": model.base,
                "ss_seed": str(recipe.run.seed),
                "ss_steps": str(status.step or train.max_steps or 0),
                "ss_learning_rate": str(train.lr),
                "ss_unet_lr": str(train.lr),
                "ss_network_train_unet_only": "True",
                "ss_lr_scheduler": train.schedule,
                "ss_optimizer": optimizer_text(recipe),
                "ss_mixed_precision": train.mixed_precision,
                "ss_gradient_checkpointing": str(flux.gradient_checkpointing),
                "ss_batch_size_per_device": str(train.batch_size),
                "ss_resolution": f"({flux.resolution}, {flux.resolution})",
                "ss_enable_bucket": str(flux.buckets),
                "ss_flip_aug": str(flux.flip),
                "ss_cache_latents": str(flux.cache_latents),
                "ss_guidance_scale": str(flux.guidance),
                "ss_timestep_sampling": flux.timestep_sampling,
                "ss_discrete_flow_shift": str(flux.shift),
                "ss_weighting_scheme": flux.loss_weighting,
                "ss_max_token_length": str(flux.max_sequence_length),
            }
        )
        metadata["loraplug.recipe"] = recipe.to_toml()
    metadata.update(
        {
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": f"flux-1-{'dev' if dev else 'schnell'}/lora",
            "modelspec.implementation": "https://github.com/black-forest-labs/flux",
            "modelspec.title": options.title or recipe.run.name,
            "modelspec.resolution": f"{flux.resolution}x{flux.resolution}",
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
        }
    )
    if options.trigger_phrase:
        metadata["modelspec.trigger_phrase"] = options.trigger_phrase
    return metadata


def write_kohya(options: FluxKohyaExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> Path:
    tensors = kohya_tensors(model.components["transformer"], torch_dtype(options.dtype))
    metadata = flux_metadata(options, model, ctx)
    if options.metadata == "full":
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(tensors, metadata)
    path = out_dir / f"{options.filename or ctx.recipe.run.name}.safetensors"
    atomic_write_bytes(path, save(tensors, metadata))
    return path
