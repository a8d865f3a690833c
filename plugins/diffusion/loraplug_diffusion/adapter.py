"""LoRA, LoHa or LoKr on the UNet (attention, and LoCon's convolutions) and optionally the text encoder, through peft.

The layers are injected with ``add_adapter`` — diffusers' and transformers' own peft integration — so
``peft.get_peft_model_state_dict(unet)`` returns the adapter's weights and, for LoRA, diffusers' loaders
read them back. LoHa and LoKr are peft's ``LoHaConfig`` / ``LoKrConfig``, the same layers on the same modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from loraplug import LoraplugError, ModelBundle, RunContext
from loraplug_diffusion.options import SdAdapterOptions, SdLohaOptions, SdLokrOptions, SdLoraOptions
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sdxl_model import SDXL_KIND

ADAPTER_NAME = "default"
ADAPTABLE = (torch.nn.Linear, torch.nn.Conv2d)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _short_name(name: str) -> str:
    """``down_blocks.0.attentions.0.proj_in`` -> ``proj_in``; ``….to_out.0`` -> ``to_out.0``."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def find_targets(
    model: torch.nn.Module, targets: Sequence[str], setting: str, what: str
) -> dict[str, torch.nn.Module]:
    """The adaptable layers each target names; an error naming what the model has when one names nothing."""
    found: dict[str, torch.nn.Module] = {}
    for target in targets:
        layers = {n: m for n, m in model.named_modules() if _matches(n, target) and isinstance(m, ADAPTABLE)}
        if not layers:
            kind = torch.nn.Conv2d if "conv" in setting else torch.nn.Linear
            names = sorted({_short_name(n) for n, m in model.named_modules() if isinstance(m, kind)})
            raise LoraplugError(
                f"{setting} names {target!r}, but the {what} has no linear or convolution layer of that name",
                where=setting,
                fix=f"Name layers it has; its {kind.__name__} layers are named {', '.join(names[:40]) or 'nothing'}",
            )
        found.update(layers)
    return found


def _config(
    r: int,
    alpha: float,
    options: SdAdapterOptions,
    targets: Sequence[str],
    patterns: dict[str, tuple[int, float]],
) -> Any:
    """The peft config of the adapter's kind; ``patterns``: another (rank, alpha) for the layers named."""
    quiet_libraries()
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    where: dict[str, Any] = {
        "r": r,
        "target_modules": list(targets),
        "rank_pattern": {f"^{name}$": rank for name, (rank, _) in patterns.items()},
        "alpha_pattern": {f"^{name}$": a for name, (_, a) in patterns.items()},
    }
    if isinstance(options, SdLoraOptions):
        return LoraConfig(
            **where,
            lora_alpha=alpha,
            lora_dropout=options.dropout,
            init_lora_weights=True if options.init == "default" else "gaussian",
        )
    if isinstance(options, SdLokrOptions):
        return LoKrConfig(
            **where,
            alpha=alpha,
            rank_dropout=options.rank_dropout,
            module_dropout=options.module_dropout,
            decompose_both=options.decompose_both,
            decompose_factor=options.decompose_factor,
            init_weights=True if options.init == "default" else "lycoris",
        )
    assert isinstance(options, SdLohaOptions)  # noqa: S101 — the three adapter kinds of this plugin
    return LoHaConfig(
        **where, alpha=alpha, rank_dropout=options.rank_dropout, module_dropout=options.module_dropout
    )


def adapter_name(options: SdAdapterOptions) -> str:
    """``LoRA``, ``LoHa`` or ``LoKr``: how a message names the adapter."""
    return {SdLohaOptions: "LoHa", SdLokrOptions: "LoKr"}.get(type(options), "LoRA")


def _float32_lora(model: torch.nn.Module) -> None:
    # With a bf16/fp16 base, the adapter's weights still train in float32 (what diffusers' scripts do).
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def inject_text_encoder_lora(text_encoder: Any, config: Any) -> None:
    """peft's own injection (transformers' ``add_adapter`` needs a newer peft than diffusers does).

    ``peft_config`` is set the way both integrations set it, so ``get_peft_model_state_dict`` and
    diffusers' savers find the adapter's config.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, adapter_name=ADAPTER_NAME)
    text_encoder.peft_config = {ADAPTER_NAME: config}


def wrap(options: SdAdapterOptions, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
    unet = bundle.components["unet"]
    targets = list(options.target_modules)
    find_targets(unet, options.target_modules, "adapter.target_modules", "UNet")
    patterns: dict[str, tuple[int, float]] = {}
    if options.conv:
        conv_layers = find_targets(unet, options.conv_modules, "adapter.conv_modules", "UNet")
        if not any(isinstance(m, torch.nn.Conv2d) for m in conv_layers.values()):
            raise LoraplugError(
                "adapter.conv = true, but none of adapter.conv_modules is a convolution in this UNet",
                where="adapter.conv_modules",
                fix="Name the UNet's Conv2d layers (conv1, conv2, conv_shortcut, …) or set adapter.conv = false",
            )
        targets += [t for t in options.conv_modules if t not in targets]
        conv_r, conv_alpha = options.conv_r or options.r, options.conv_alpha or options.alpha
        patterns = {
            name: (conv_r, conv_alpha)
            for name, layer in conv_layers.items()
            if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1)
        }
    try:
        unet.add_adapter(
            _config(options.r, options.alpha, options, targets, patterns), adapter_name=ADAPTER_NAME
        )
    except ValueError as exc:
        raise LoraplugError(
            f"{adapter_name(options)} could not be attached to the UNet: {str(exc).splitlines()[0]}",
            where="adapter.target_modules",
            fix="Name modules the UNet has (e.g. to_q, to_k, to_v, to_out.0), or leave target_modules at its default",
        ) from exc
    _float32_lora(unet)

    lr_scales = dict(bundle.lr_scales)
    # SDXL adapts both CLIP encoders with the same settings (kohya's lora_te1_ / lora_te2_).
    names = ["text_encoder", "text_encoder_2"] if bundle.kind == SDXL_KIND else ["text_encoder"]
    for name in names if options.text_encoder else []:
        text_encoder = bundle.components[name]
        find_targets(
            text_encoder,
            options.text_encoder_target_modules,
            "adapter.text_encoder_target_modules",
            "text encoder",
        )
        config = _config(
            options.text_encoder_r or options.r,
            options.text_encoder_alpha or options.alpha,
            options,
            options.text_encoder_target_modules,
            {},
        )
        inject_text_encoder_lora(text_encoder, config)
        _float32_lora(text_encoder)
        setattr(bundle.module, name, text_encoder)
        if options.text_encoder_lr is not None:
            lr_scales[f"{name}."] = options.text_encoder_lr / ctx.recipe.train.lr
    return replace(bundle, lr_scales=lr_scales)
