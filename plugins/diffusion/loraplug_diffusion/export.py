"""Exports other tools load: diffusers' LoRA file, kohya's, and the whole pipeline with the adapter fused.

Each is loaded back and compared with the trained model (see parity.py) before the core renames it into
place, so a file that would not load, or would load into a different model, never reaches ``exports/``.
LoRA files are loaded back with diffusers itself; a LoHa/LoKr kohya file (which diffusers does not load)
with ComfyUI's formula (lycoris.py). LoHa and LoKr are fused into the base by adding each layer's ΔW.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from loraplug import ExportResult, ModelBundle, RunContext
from loraplug.toolkit import torch_dtype
from loraplug_diffusion.kohya import spelt_name, trained_parts, write_kohya
from loraplug_diffusion.lycoris import add_deltas, algo, by_module
from loraplug_diffusion.model import canonical_text_encoder_path, trains_text_encoder
from loraplug_diffusion.options import DiffusersExportOptions, KohyaExportOptions, MergedExportOptions
from loraplug_diffusion.parity import base_pipeline, compare
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sdxl_model import SDXL_KIND

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def adapter_metadata(module: Any) -> dict[str, Any]:
    """The LoraConfig as diffusers stores it beside the weights, so ranks and alphas load exactly."""
    config = module.peft_config["default"].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def lora_weights(
    module: Any, dtype: torch.dtype, spell: Callable[[str], str] = str
) -> dict[str, torch.Tensor]:
    """peft's LoRA state dict of ``module``, keys respelt by ``spell``, in ``dtype`` on the CPU."""
    from peft import get_peft_model_state_dict

    return {
        spell(k): v.detach().to("cpu", dtype).contiguous()
        for k, v in get_peft_model_state_dict(module).items()
    }


def save_diffusers(model: ModelBundle, out_dir: Path, dtype: torch.dtype) -> None:
    quiet_libraries()
    if model.kind == SDXL_KIND:
        from loraplug_diffusion.sdxl_export import save_sdxl_diffusers

        save_sdxl_diffusers(model, out_dir, dtype)
        return
    from diffusers import StableDiffusionPipeline

    unet = model.components["unet"]
    text_encoder = model.components["text_encoder"] if trains_text_encoder(model) else None
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir),
        unet_lora_layers=lora_weights(unet, dtype),
        unet_lora_adapter_metadata=adapter_metadata(unet),
        text_encoder_lora_layers=lora_weights(text_encoder, dtype, canonical_text_encoder_path)
        if text_encoder is not None
        else None,
        text_encoder_lora_adapter_metadata=adapter_metadata(text_encoder)
        if text_encoder is not None
        else None,
        weight_name=DIFFUSERS_FILE,
        safe_serialization=True,
    )


def export_diffusers(
    options: DiffusersExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    save_diffusers(model, out_dir, torch_dtype(options.dtype))
    figures: dict[str, Any] = {}
    if options.check_parity:
        pipeline = base_pipeline(model, ctx)
        pipeline.load_lora_weights(str(out_dir), weight_name=DIFFUSERS_FILE)
        figures.update(compare(pipeline, model, options, ctx, "diffusers", saved_dtype=options.dtype))
    return ExportResult(
        files=[DIFFUSERS_FILE],
        figures=figures,
        loads_with=f"{pipeline_class(model)}.from_pretrained(base).load_lora_weights(path)",
    )


def pipeline_class(model: ModelBundle) -> str:
    """The diffusers pipeline that loads this model's exports."""
    return "StableDiffusionXLPipeline" if model.kind == SDXL_KIND else "StableDiffusionPipeline"


def uses_lycoris(model: ModelBundle) -> bool:
    """Whether the trained adapter is LoHa or LoKr (peft's LyCORIS layers) rather than LoRA."""
    return any(algo(layer) is not None for part in trained_parts(model).values() for layer in part.modules())


def export_kohya(
    options: KohyaExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    path = write_kohya(options, model, out_dir, ctx)
    lycoris = uses_lycoris(model)
    figures: dict[str, Any] = {}
    if options.check_parity:
        pipeline = base_pipeline(model, ctx)
        if lycoris:  # diffusers does not load LoHa/LoKr: read the file back as ComfyUI does
            from safetensors.torch import load_file

            parts = {"lora_unet": pipeline.unet, "lora_te": pipeline.text_encoder}
            add_deltas(parts, by_module(load_file(str(path))), spelt_name)
        else:
            pipeline.load_lora_weights(str(out_dir), weight_name=path.name)  # diffusers' own kohya conversion
        figures.update(compare(pipeline, model, options, ctx, "kohya", saved_dtype=options.dtype))
    loads_with = "AUTOMATIC1111 / ComfyUI LoRA folder, kohya sd-scripts"
    return ExportResult(
        files=[path.name],
        figures=figures,
        loads_with=f"{loads_with} (LyCORIS format)"
        if lycoris
        else f"{loads_with}, or {pipeline_class(model)}.load_lora_weights",
    )


@torch.no_grad()
def fuse_lycoris(pipeline: Any, model: ModelBundle) -> None:
    """Add each trained LoHa/LoKr layer's ΔW (peft's own, in float32) to the same layer of ``pipeline``."""
    targets = {"lora_unet": pipeline.unet, "lora_te": pipeline.text_encoder}
    for prefix, part in trained_parts(model).items():
        into = dict(targets[prefix].named_modules())
        for path, layer in part.named_modules():
            if algo(layer) is not None:
                base = into[path]
                base.weight += (
                    layer.get_delta_weight("default").float().to(base.weight.device, base.weight.dtype)
                )


def export_merged(
    options: MergedExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    """Fuse into a freshly loaded float32 base, so the trained model is untouched and no precision is lost."""
    pipeline = base_pipeline(model, ctx, dtype=torch.float32)
    if uses_lycoris(model):
        fuse_lycoris(pipeline, model)
    else:
        with tempfile.TemporaryDirectory(prefix="loraplug-merge-") as scratch:
            save_diffusers(model, Path(scratch), torch.float32)
            pipeline.load_lora_weights(scratch, weight_name=DIFFUSERS_FILE)
        pipeline.fuse_lora(lora_scale=1.0)
        pipeline.unload_lora_weights()  # keeps the fused weights, drops the LoRA layers
    figures: dict[str, Any] = {}
    if options.check_parity:
        figures.update(
            compare(pipeline, model, options, ctx, "merged", saved_dtype="float32")
        )  # compared before the cast
    pipeline.to(torch_dtype(options.dtype))
    pipeline.save_pretrained(str(out_dir), safe_serialization=True)
    figures["dtype"] = options.dtype
    return ExportResult(figures=figures, loads_with=f"{pipeline_class(model)}.from_pretrained(path)")


EXPORTERS: dict[str, Callable[[Any, ModelBundle, Path, RunContext], ExportResult]] = {
    "diffusers": export_diffusers,
    "kohya": export_kohya,
    "merged": export_merged,
}
