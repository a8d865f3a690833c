"""Flux exports: diffusers' LoRA file and kohya's (ComfyUI, Forge), each loaded back and checked before it is kept.

The check loads a fresh base transformer (through ``FluxPipeline.from_pretrained``, text encoders and VAE left
out), loads the file into it — with ``FluxPipeline.load_lora_weights``, which for a kohya file runs diffusers'
own kohya-Flux converter — and compares one transformer call on fixed inputs with the trained model's. diffusers'
converter assumes FLUX.1's widths for a single block's fused ``linear1`` (3072 ×3 + 12288); for a smaller
model (tiny-flux) the kohya file is read back as ComfyUI applies it instead (flux_kohya.add_kohya_deltas).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from loraplug import ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug.toolkit import parity_tolerance, torch_dtype
from loraplug_diffusion.export import DIFFUSERS_FILE, adapter_metadata, lora_weights
from loraplug_diffusion.flux_kohya import add_kohya_deltas, write_kohya
from loraplug_diffusion.flux_model import bnb_config, locate, pack
from loraplug_diffusion.flux_options import FluxDiffusersExportOptions, FluxKohyaExportOptions, FluxOptions
from loraplug_diffusion.options import ParityOptions
from loraplug_diffusion.quiet import quiet_libraries

#: The single-block ``linear1`` row split diffusers' kohya converter hard-codes (FLUX.1's widths).
DIFFUSERS_LINEAR1 = [3072, 3072, 3072, 12288]
PROBE_LATENT_SIDE = 8  # 16 tokens
PROBE_TEXT_TOKENS = 8


def flux_options(ctx: RunContext) -> FluxOptions:
    options = ctx.recipe.model.options
    assert isinstance(options, FluxOptions)  # noqa: S101
    return options


def base_pipeline(model: ModelBundle, ctx: RunContext) -> Any:
    """A freshly loaded base FluxPipeline holding only the transformer (no LoRA), on the trained one's device."""
    quiet_libraries()
    from diffusers import FluxPipeline, FluxTransformer2DModel

    options = flux_options(ctx)
    source = locate(options, ctx.cache_dir)
    revision = {"revision": options.revision} if options.revision else {}
    quantized = {"quantization_config": bnb_config(options)} if options.quantization == "nf4" else {}
    transformer = FluxTransformer2DModel.from_pretrained(
        source, subfolder="transformer", torch_dtype=torch_dtype(options.dtype), **quantized, **revision
    )
    pipeline = FluxPipeline.from_pretrained(
        source,
        transformer=transformer,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        vae=None,
        **revision,
    )
    if not quantized:  # a bitsandbytes model is placed when loaded
        pipeline.transformer.to(next(model.components["transformer"].parameters()).device)
    return pipeline


def probe(transformer: Any, dtype: torch.dtype) -> torch.Tensor:
    """One transformer call on fixed inputs (seeded noise as latents, text states and pooled) computing in
    ``dtype`` (model.dtype), as float32 on the CPU."""
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(
        1, config.in_channels // 4, PROBE_LATENT_SIDE, PROBE_LATENT_SIDE, generator=generator
    )
    states = torch.randn(1, PROBE_TEXT_TOKENS, config.joint_attention_dim, generator=generator)
    pooled = torch.randn(1, config.pooled_projection_dim, generator=generator)
    device = next(transformer.parameters()).device
    packed, img_ids = pack(latents)
    with torch.no_grad():
        out = transformer(
            hidden_states=packed.to(device, dtype),
            timestep=torch.tensor([0.5], device=device, dtype=dtype),
            guidance=torch.tensor([3.5], device=device) if config.guidance_embeds else None,
            pooled_projections=pooled.to(device, dtype),
            encoder_hidden_states=states.to(device, dtype),
            txt_ids=torch.zeros(PROBE_TEXT_TOKENS, 3, device=device, dtype=dtype),
            img_ids=img_ids.to(device, dtype),
            return_dict=False,
        )[0]
    return out.float().cpu()


def compare(
    transformer: Any, model: ModelBundle, options: ParityOptions, ctx: RunContext, what: str
) -> dict[str, float]:
    """The largest difference of ``transformer`` (an export loaded back) from the trained one; raise when too far."""
    module = model.module
    dtype = torch_dtype(flux_options(ctx).dtype)
    was_training = module.training
    module.eval()
    try:
        trained = probe(model.components["transformer"], dtype)
    finally:
        module.train(was_training)
    difference = float((probe(transformer, dtype) - trained).abs().max())
    limit = parity_tolerance(flux_options(ctx).dtype, options.dtype, given=options.tolerance)
    if difference > limit:
        raise LoraplugError(
            f"The {what} export, loaded back, predicts differently from the trained model: the transformer's "
            f"outputs differ by up to {difference:.2e} (tolerance {limit:g})",
            fix="Export in float32 (`dtype`), or raise the export's `tolerance` if the base runs in reduced precision",
        )
    return {"max_abs_diff_vs_trained": difference}


def save_diffusers(model: ModelBundle, out_dir: Path, dtype: torch.dtype) -> None:
    quiet_libraries()
    from diffusers import FluxPipeline

    transformer = model.components["transformer"]
    FluxPipeline.save_lora_weights(
        str(out_dir),
        transformer_lora_layers=lora_weights(transformer, dtype),
        transformer_lora_adapter_metadata=adapter_metadata(transformer),
        weight_name=DIFFUSERS_FILE,
        safe_serialization=True,
    )


def export_diffusers(
    options: FluxDiffusersExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    save_diffusers(model, out_dir, torch_dtype(options.dtype))
    figures: dict[str, Any] = {}
    if options.check_parity:
        pipeline = base_pipeline(model, ctx)
        pipeline.load_lora_weights(str(out_dir), weight_name=DIFFUSERS_FILE)
        figures.update(compare(pipeline.transformer, model, options, ctx, "diffusers"))
    return ExportResult(
        files=[DIFFUSERS_FILE],
        figures=figures,
        loads_with="FluxPipeline.from_pretrained(base).load_lora_weights(path)",
    )


def diffusers_reads(transformer: Any, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether diffusers' kohya-Flux converter can read ``tensors`` for ``transformer``: it splits a single
    block's ``linear1`` by FLUX.1's widths, so a file with those is readable only at FLUX.1's size."""
    if not any(key.endswith("_linear1.lora_down.weight") for key in tensors):
        return True
    block = transformer.single_transformer_blocks[0]
    widths = [block.attn.to_q.out_features, block.attn.to_k.out_features, block.attn.to_v.out_features]
    return widths + [block.proj_mlp.out_features] == DIFFUSERS_LINEAR1


def export_kohya(
    options: FluxKohyaExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    path = write_kohya(options, model, out_dir, ctx)
    figures: dict[str, Any] = {}
    if options.check_parity:
        from safetensors.torch import load_file

        pipeline = base_pipeline(model, ctx)
        transformer = pipeline.transformer
        tensors = load_file(str(path))
        if diffusers_reads(transformer, tensors):
            pipeline.load_lora_weights(str(out_dir), weight_name=path.name)  # diffusers' kohya-Flux converter
            figures["read_back_with"] = "diffusers"
        else:
            add_kohya_deltas(transformer, tensors)
            figures["read_back_with"] = "ComfyUI's rule (fused rows)"
        figures.update(compare(transformer, model, options, ctx, "kohya"))
    return ExportResult(
        files=[path.name],
        figures=figures,
        loads_with="ComfyUI models/loras (LoraLoaderModelOnly), Forge models/Lora, FluxPipeline.load_lora_weights",
    )


EXPORTERS: dict[str, Callable[[Any, ModelBundle, Path, RunContext], ExportResult]] = {
    "diffusers": export_diffusers,
    "kohya": export_kohya,
}
