"""The hook implementations of ``model.kind = "flux"`` (FLUX.1), a second entry point of loraplug-diffusion.

Flux shares the diffusion plugin's image data (``imagefolder``), image loading, aspect buckets, caption
augmentation and caches (``prepare.py`` through ``conditioning.text_side``), but not its model, loss, adapter
or exports, so it is its own plugin object: each hook below is called only for the kinds it declares. Hook
bodies import the heavy modules, so ``loraplug --help`` never pays for torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug import (
    Batch,
    DataBundle,
    ExportResult,
    KindSpec,
    ModelBundle,
    PreparedData,
    RunContext,
    Sample,
    StepResult,
    hookimpl,
)
from loraplug_diffusion.plugin import TINY_SMOKE

if TYPE_CHECKING:
    from loraplug_diffusion.flux_options import FluxLoraOptions, FluxOptions

FLUX_KIND = "flux"
OPTIONS = "loraplug_diffusion.flux_options"
RECORD_SHAPE = "caption-image"  # what imagefolder produces (plugin.py)


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "model",
            FLUX_KIND,
            f"{OPTIONS}:FluxOptions",
            "FLUX.1 dev/schnell through diffusers, flow matching (hub id, directory or tiny-flux)",
            smoke={
                "pretrained": "tiny-flux",
                **TINY_SMOKE,
                "quantization": "none",
                "max_sequence_length": 32,
            },
            accepts=RECORD_SHAPE,
            provides=(),
        )
    )
    register(
        KindSpec(
            "adapter",
            "lora",
            f"{OPTIONS}:FluxLoraOptions",
            "peft LoRA on the Flux transformer by groups (attention, mlp, modulation) and blocks (double, single)",
            models=(FLUX_KIND,),
        )
    )
    exports = (
        ("diffusers", "FluxDiffusersExportOptions", "pytorch_lora_weights.safetensors (FluxPipeline.load_lora_weights)"),
        ("kohya", "FluxKohyaExportOptions", "kohya lora_unet_double_blocks_…/single_blocks_… .safetensors, q/k/v fused (ComfyUI, Forge)"),
    )  # fmt: skip
    for name, options, summary in exports:
        register(
            KindSpec("export", name, f"{OPTIONS}:{options}", summary, models=(FLUX_KIND,), adapters=("lora",))
        )


@hookimpl
def loraplug_build_model(kind: str, options: FluxOptions, ctx: RunContext) -> ModelBundle:
    from loraplug_diffusion.flux_model import build

    return build(options, ctx)


@hookimpl
def loraplug_wrap_adapter(
    kind: str, options: FluxLoraOptions, model: ModelBundle, ctx: RunContext
) -> ModelBundle:
    from loraplug_diffusion.flux_adapter import wrap

    return wrap(options, model, ctx)


@hookimpl
def loraplug_prepare_data(
    model: ModelBundle, options: FluxOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    from loraplug_diffusion.prepare import prepare

    return prepare(model, options, data, ctx)  # type: ignore[arg-type]  # FluxOptions has every field it reads


@hookimpl
def loraplug_train_step(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    from loraplug_diffusion.flux_compute import loss_sum

    return loss_sum(model, module, batch, ctx)


@hookimpl
def loraplug_generate(
    model: ModelBundle, options: FluxOptions, prompts: Sequence[str], out_dir: Path, ctx: RunContext
) -> list[Sample]:
    from loraplug_diffusion.flux_sample import generate

    return generate(model, options, prompts, out_dir, ctx)


@hookimpl
def loraplug_export(
    kind: str, options: Any, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    from loraplug_diffusion.flux_export import EXPORTERS

    return EXPORTERS[kind](options, model, out_dir, ctx)
