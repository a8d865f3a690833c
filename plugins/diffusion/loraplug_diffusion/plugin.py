"""The hook implementations of loraplug-diffusion.

Option models are declared by import path (built when a recipe is checked); each hook imports its heavy implementation when it
is called, so ``loraplug --help`` never pays for torch, diffusers or transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug import (
    Batch,
    DataBundle,
    Deployable,
    ExportResult,
    KindSpec,
    ModelBundle,
    PreparedData,
    RunContext,
    Sample,
    StepResult,
    hookimpl,
)

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_diffusion.options import ImageFolderOptions, SdAdapterOptions, StableDiffusionOptions

MODEL_KIND = "stable-diffusion"
#: SDXL is a model kind of its own (see sdxl_options.py for why); it trains LoRA (and LoCon).
SDXL_KIND = "stable-diffusion-xl"
OPTIONS = "loraplug_diffusion.options"
#: The records imagefolder produces and Stable Diffusion trains on (loraplug.kinds.RECORD_SHAPES).
RECORD_SHAPE = "caption-image"
#: What ``--smoke`` sets on an image model kind besides its tiny preset: a few 64-pixel images,
#: sampled in two steps (flux_plugin.py adds its own).
TINY_SMOKE: dict[str, Any] = {
    "dtype": "float32",
    "resolution": 64,
    "sample_size": 64,
    "sample_steps": 2,
    "sample_images": 2,
    "bucket_step": 32,
}
ADAPTERS = {
    "lora": ("SdLoraOptions", "peft LoRA on the UNet (+ LoCon convs, text encoder)"),
    "loha": ("SdLohaOptions", "peft LoHa (LyCORIS' Hadamard product) on the UNet (+ convs, text encoder)"),
    "lokr": ("SdLokrOptions", "peft LoKr (LyCORIS' Kronecker product) on the UNet (+ convs, text encoder)"),
}


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "data",
            "imagefolder",
            f"{OPTIONS}:ImageFolderOptions",
            "images with .txt captions or a metadata.jsonl/.csv",
            produces=RECORD_SHAPE,
        )
    )
    register(
        KindSpec(
            "model",
            MODEL_KIND,
            f"{OPTIONS}:StableDiffusionOptions",
            "Stable Diffusion 1.x/2.x through diffusers (hub id, directory or tiny-sd)",
            smoke={"pretrained": "tiny-sd", **TINY_SMOKE},
            accepts=RECORD_SHAPE,
            provides=(),  # its deployable view is a UNet with no from_pretrained: recipe check refuses bnb-*
        )
    )
    register(
        KindSpec(
            "model",
            SDXL_KIND,
            "loraplug_diffusion.sdxl_options:StableDiffusionXLOptions",
            "Stable Diffusion XL (and its finetunes) through diffusers (hub id, directory or tiny-sdxl)",
            smoke={"pretrained": "tiny-sdxl", **TINY_SMOKE},
            accepts=RECORD_SHAPE,
            provides=(),
        )
    )
    for name, (options, summary) in ADAPTERS.items():
        models = (MODEL_KIND, SDXL_KIND) if name == "lora" else (MODEL_KIND,)
        register(KindSpec("adapter", name, f"{OPTIONS}:{options}", summary, models=models))
    exports = (
        # diffusers' load_lora_weights reads LoRA only; kohya files hold LoHa/LoKr in LyCORIS' layout.
        (
            "diffusers",
            "DiffusersExportOptions",
            "pytorch_lora_weights.safetensors (load_lora_weights)",
            ("lora",),
        ),
        (
            "kohya",
            "KohyaExportOptions",
            "kohya lora_unet_/lora_te_ .safetensors, LyCORIS layout for LoHa/LoKr (A1111, ComfyUI)",
            tuple(ADAPTERS),
        ),
        ("merged", "MergedExportOptions", "the diffusers pipeline with the adapter fused", tuple(ADAPTERS)),
    )
    for name, options, summary, adapters in exports:
        register(
            KindSpec(
                "export",
                name,
                f"{OPTIONS}:{options}",
                summary,
                models=(MODEL_KIND, SDXL_KIND),
                adapters=adapters,
            )
        )


@hookimpl
def loraplug_load_data(kind: str, options: ImageFolderOptions, ctx: RunContext) -> DataBundle:
    from loraplug_diffusion.imagefolder import load

    return load(options, ctx.seed, ctx.warn)


@hookimpl
def loraplug_build_model(kind: str, options: StableDiffusionOptions, ctx: RunContext) -> ModelBundle:
    if kind == SDXL_KIND:
        from loraplug_diffusion.sdxl_model import build as build_sdxl

        return build_sdxl(options, ctx)  # type: ignore[arg-type]
    from loraplug_diffusion.model import build

    return build(options, ctx)


@hookimpl
def loraplug_wrap_adapter(
    kind: str, options: SdAdapterOptions, model: ModelBundle, ctx: RunContext
) -> ModelBundle:
    from loraplug_diffusion.adapter import wrap

    return wrap(options, model, ctx)


@hookimpl
def loraplug_prepare_data(
    model: ModelBundle, options: StableDiffusionOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    from loraplug_diffusion.prepare import prepare

    return prepare(model, options, data, ctx)


@hookimpl
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    from loraplug_diffusion.compute import loss_sum

    return loss_sum(model, module, batch, ctx)


@hookimpl
def loraplug_generate(
    model: ModelBundle,
    options: StableDiffusionOptions,
    prompts: Sequence[str],
    out_dir: Path,
    ctx: RunContext,
) -> list[Sample]:
    from loraplug_diffusion.sample import generate

    return generate(model, options, prompts, out_dir, ctx)


@hookimpl
def loraplug_deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    from loraplug_diffusion.deploy import deployable

    return deployable(model, ctx)


@hookimpl
def loraplug_export(
    kind: str, options: Any, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    from loraplug_diffusion.export import EXPORTERS

    return EXPORTERS[kind](options, model, out_dir, ctx)
