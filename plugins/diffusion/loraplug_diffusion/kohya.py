"""The kohya LoRA file: sd-scripts' key scheme and metadata, what AUTOMATIC1111 and ComfyUI load.

Keys (sd-scripts ``networks/lora.py``): a module at ``down_blocks.0.attentions.0.proj_in`` of the UNet is
``lora_unet_down_blocks_0_attentions_0_proj_in``; of the SD 1.x/2.x text encoder, ``lora_te_…``. Each has
``.lora_down.weight`` (peft's ``lora_A``), ``.lora_up.weight`` (``lora_B``) and a 0-dim ``.alpha``, and the
update is ``up @ down * alpha / rank`` — exactly peft's scaling, so the weights are copied, not converted.
A convolution's down is a conv of the layer's kernel size and its up a 1×1 conv, in both libraries.
LoHa and LoKr are written under the same module names in LyCORIS' layout (see lycoris.py), with
``ss_network_module = "lycoris.kohya"`` and the ``algo`` in ``ss_network_args``, as LyCORIS' sd-scripts
module writes them.

Metadata: sd-scripts' ``ss_*`` training keys, the ``sshs_*`` hashes sd-webui-additional-networks checks
(computed as sd-scripts does: over a serialisation holding only the ``ss_*`` keys), ``modelspec.*``
(SAI model spec 1.0.1), and loraplug's resolved recipe.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from loraplug import LoraplugError, ModelBundle, RunContext, RunStatus, __version__
from loraplug.toolkit import atomic_write_bytes, torch_dtype
from loraplug_diffusion.lycoris import algo, layer_tensors
from loraplug_diffusion.model import canonical_text_encoder_path, trains_text_encoder
from loraplug_diffusion.options import (
    KohyaExportOptions,
    SdAdapterOptions,
    SdLokrOptions,
    SdLoraOptions,
    SdLycorisOptions,
    StableDiffusionOptions,
)
from loraplug_diffusion.sdxl_model import SDXL_KIND

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
NETWORK_MODULE = "networks.lora"
#: sd-scripts' ``--network_module`` for LyCORIS' adapters (LoHa, LoKr), whose kind is ``network_args``' ``algo``.
LYCORIS_NETWORK_MODULE = "lycoris.kohya"
#: What sd-scripts keeps with --no_metadata: enough for loaders to build the network.
MINIMAL_KEYS = (
    "ss_v2",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
)


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}.{module_path}".replace(".", "_")


def spelt_name(prefix: str, module_path: str) -> str:
    """The kohya name of a UNet (``lora_unet``) or text-encoder (``lora_te``) module path, spelt as tools expect."""
    return kohya_name(
        prefix, canonical_text_encoder_path(module_path) if prefix == TEXT_ENCODER_PREFIX else module_path
    )


def trained_parts(model: ModelBundle) -> dict[str, Any]:
    """The adapted components by kohya prefix: the UNet, and the text encoder(s) that train."""
    parts = {UNET_PREFIX: model.components["unet"]}
    if model.kind == SDXL_KIND:
        from loraplug_diffusion.sdxl_kohya import TEXT_ENCODER_PREFIXES
        from loraplug_diffusion.sdxl_model import trained_text_encoders

        return parts | {
            TEXT_ENCODER_PREFIXES[name]: model.components[name] for name in trained_text_encoders(model)
        }
    if trains_text_encoder(model):
        parts[TEXT_ENCODER_PREFIX] = model.components["text_encoder"]
    return parts


def kohya_tensors(model: ModelBundle, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every LoRA, LoHa or LoKr layer of the UNet (and a trained text encoder) under its kohya key."""
    from peft.tuners.lora import LoraLayer

    spell = spelt_name
    if model.kind == SDXL_KIND:  # SGM block names, lora_te1_/lora_te2_
        from loraplug_diffusion.sdxl_kohya import sdxl_kohya_name

        spell = partial(sdxl_kohya_name, model.components["unet"].config)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, part in trained_parts(model).items():
        for path, layer in part.named_modules():
            if algo(layer) is not None:
                name = spell(prefix, path)
                tensors.update({f"{name}.{suffix}": t for suffix, t in layer_tensors(layer, dtype).items()})
                continue
            if not isinstance(layer, LoraLayer) or "default" not in layer.lora_A:
                continue
            name = spell(prefix, path)
            tensors[f"{name}.lora_down.weight"] = (
                layer.lora_A["default"].weight.detach().to("cpu", dtype).contiguous()
            )
            tensors[f"{name}.lora_up.weight"] = (
                layer.lora_B["default"].weight.detach().to("cpu", dtype).contiguous()
            )
            tensors[f"{name}.alpha"] = torch.tensor(float(layer.lora_alpha["default"]), dtype=dtype)
    return tensors


def addnet_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` as sd-scripts computes them for sd-webui-additional-networks."""
    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header :]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def _architecture(unet_config: Any, prediction_type: str) -> tuple[bool, str, str]:
    """``(v2, ss_base_model_version, modelspec architecture)`` from the UNet's shape (SD 2.x cross-attends to 1024).

    SDXL (a ``text_time`` added embedding): sd-scripts' ``MODEL_VERSION_SDXL_BASE_V1_0`` and
    ``sai_model_spec.ARCH_SD_XL_V1_BASE``.
    """
    if getattr(unet_config, "addition_embed_type", None) == "text_time":
        return False, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"
    v2 = unet_config.cross_attention_dim == 1024
    if not v2:
        return False, "sd_v1", "stable-diffusion-v1/lora"
    arch = "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    return True, "sd_v2", f"{arch}/lora"


def _dataset_facts(ctx: RunContext) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """``(ss_bucket_info, ss_tag_frequency)`` of the training images: sizes and comma-separated tags.

    From the run's prepared data — the data just trained on, or, for a re-export, read and prepared
    again; empty for a stream or when the data is gone.
    """
    try:
        train = ctx.prepared_data().train
    except LoraplugError:
        return {}, {}
    if not isinstance(train, Sequence):
        return {}, {}
    sizes: dict[tuple[int, int], int] = {}
    tags: dict[str, int] = {}
    for sample in train:
        sizes[sample.size] = sizes.get(sample.size, 0) + 1
        for tag in (t.strip() for t in sample.caption.split(",")):
            if tag:
                tags[tag] = tags.get(tag, 0) + 1
    buckets = {
        str(i): {"resolution": list(size), "count": n} for i, (size, n) in enumerate(sorted(sizes.items()))
    }
    return {"buckets": buckets} if buckets else {}, {"train": tags} if tags else {}


def lycoris_args(adapter: SdAdapterOptions) -> dict[str, str]:
    """LyCORIS' ``network_args`` (strings, as sd-scripts passes them) for a LoHa/LoKr adapter; empty for LoRA."""
    if not isinstance(adapter, SdLycorisOptions):
        return {}
    args = {
        "algo": "lokr" if isinstance(adapter, SdLokrOptions) else "loha",
        "rank_dropout": str(adapter.rank_dropout),
        "module_dropout": str(adapter.module_dropout),
    }
    if isinstance(adapter, SdLokrOptions):
        args |= {"factor": str(adapter.decompose_factor), "decompose_both": str(adapter.decompose_both)}
    return args


def optimizer_text(recipe: Any) -> str:
    """``ss_optimizer``: the optimizer and its arguments, as sd-scripts writes them (``torch.optim.AdamW(betas=…)``).

    A recipe names its optimizer kind in ``train.optimizer`` with its options in ``[optimizer]``; one from
    before optimizer kinds has AdamW's ``betas`` in ``[train]``.
    """
    train = recipe.train
    section = getattr(recipe, "optimizer", None)
    if section is None:
        name, args = "torch.optim.AdamW", {"betas": tuple(train.betas)}
    else:
        name = "torch.optim.AdamW" if section.kind == "adamw" else section.kind
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in section.options.model_dump().items()}
    args["weight_decay"] = train.weight_decay
    return f"{name}({','.join(f'{k}={v}' for k, v in args.items())})"


def kohya_metadata(options: KohyaExportOptions, model: ModelBundle, ctx: RunContext) -> dict[str, str]:
    recipe = ctx.recipe
    adapter, sd, train = recipe.adapter.options, recipe.model.options, recipe.train
    assert isinstance(adapter, SdAdapterOptions) and isinstance(sd, StableDiffusionOptions)  # noqa: S101
    scheduler = model.components["noise_scheduler"]
    prediction = scheduler.config.prediction_type
    v2, base_version, architecture = _architecture(model.components["unet"].config, prediction)
    status = RunStatus.load(ctx.run_dir) or RunStatus()
    data = status.data or {}
    network_args = lycoris_args(adapter)
    if adapter.conv:  # sd-scripts' LoCon arguments, as strings
        network_args |= {
            "conv_dim": str(adapter.conv_r or adapter.r),
            "conv_alpha": str(adapter.conv_alpha or adapter.alpha),
        }
    title = options.title or recipe.run.name
    now = time.time()
    metadata = {
        "ss_v2": str(v2),
        "ss_base_model_version": base_version,
        "ss_network_module": LYCORIS_NETWORK_MODULE
        if isinstance(adapter, SdLycorisOptions)
        else NETWORK_MODULE,
        "ss_network_dim": str(adapter.r),
        "ss_network_alpha": str(adapter.alpha),
        "ss_network_args": json.dumps(network_args),
    }
    if options.metadata == "full":
        started = status.started_at
        bucket_info, tag_frequency = _dataset_facts(ctx)
        # The steps trained (early stopping, a checkpoint's export): not the planned max_steps.
        steps = str(status.step or train.max_steps or 0)
        metadata.update(
            {
                "ss_session_id": str(int(recipe.hash(), 16) % 2**32),
                "ss_output_name": options.filename or recipe.run.name,
                "ss_training_comment": f"trained with loraplug {__version__}",
                "ss_training_started_at": str(time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S%z")))
                if started
                else "None",
                "ss_training_finished_at": str(now),
                "ss_sd_model_name": model.base,
                "ss_seed": str(recipe.run.seed),
                "ss_steps": steps,
                "ss_max_train_steps": str(train.max_steps or status.step),
                "ss_learning_rate": str(train.lr),
                "ss_unet_lr": str(train.lr),
                "ss_text_encoder_lr": str(adapter.text_encoder_lr or train.lr)
                if adapter.text_encoder
                else "None",
                "ss_network_train_unet_only": str(not adapter.text_encoder),
                "ss_network_dropout": str(adapter.dropout if isinstance(adapter, SdLoraOptions) else 0.0),
                "ss_lr_scheduler": train.schedule,
                "ss_lr_warmup_steps": str(train.warmup_steps),
                "ss_optimizer": optimizer_text(recipe),
                "ss_max_grad_norm": str(train.max_grad_norm),
                "ss_mixed_precision": train.mixed_precision,
                "ss_gradient_checkpointing": str(sd.gradient_checkpointing),
                "ss_gradient_accumulation_steps": str(train.grad_accum_steps),
                "ss_batch_size_per_device": str(train.batch_size),
                "ss_total_batch_size": str(train.batch_size * train.grad_accum_steps * ctx.num_processes),
                "ss_num_train_images": str(data.get("train images", "None")),
                "ss_resolution": f"({sd.resolution}, {sd.resolution})",
                "ss_enable_bucket": str(sd.buckets),
                "ss_bucket_info": json.dumps(bucket_info),
                "ss_tag_frequency": json.dumps(tag_frequency),
                "ss_caption_dropout_rate": str(sd.caption_dropout),
                "ss_shuffle_caption": str(sd.shuffle_tags),
                "ss_keep_tokens": str(sd.keep_tokens),
                "ss_flip_aug": str(sd.flip),
                "ss_color_aug": "False",
                "ss_random_crop": str(sd.crop == "random"),
                "ss_cache_latents": str(sd.cache_latents),
                "ss_noise_offset": str(sd.noise_offset),
                "ss_min_snr_gamma": str(sd.min_snr_gamma),
                "ss_v_parameterization": str(prediction == "v_prediction"),
                "ss_clip_skip": "None",
            }
        )
        metadata["loraplug.recipe"] = recipe.to_toml()
    metadata.update(
        {
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": architecture,
            "modelspec.implementation": "diffusers",
            "modelspec.implementation_version": f"loraplug/{__version__}",
            "modelspec.title": title,
            "modelspec.resolution": f"{sd.resolution}x{sd.resolution}",
            "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
        }
    )
    if options.trigger_phrase:
        metadata["modelspec.trigger_phrase"] = options.trigger_phrase
    return metadata


def write_kohya(options: KohyaExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> Path:
    tensors = kohya_tensors(model, torch_dtype(options.dtype))
    metadata = kohya_metadata(options, model, ctx)
    if options.metadata == "full":
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(tensors, metadata)
    path = out_dir / f"{options.filename or ctx.recipe.run.name}.safetensors"
    atomic_write_bytes(path, save(tensors, metadata))
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (for tests and tools)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
