"""Loading a Stable Diffusion model's components, and the module the core trains.

Everything here imports torch, diffusers and transformers at module level: only hook bodies import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraplug import ModelBundle, RunContext, toolkit
from loraplug.toolkit import local_dir, model_load_error, torch_dtype
from loraplug_diffusion.options import StableDiffusionOptions
from loraplug_diffusion.presets import TINY_PRESETS
from loraplug_diffusion.quiet import quiet_libraries

MODEL_KIND = "stable-diffusion"


class DiffusionModule(torch.nn.Module):
    """What the core optimises, saves and hands to accelerate: the UNet, and the text encoder when it trains.

    Its ``forward`` runs the text encoder (when it trains) and the UNet, so that under several processes
    the whole trainable computation goes through the wrapper accelerate puts around this module.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids is not None:
            encoder_hidden_states = self.text_encoder(input_ids)[0]
        assert encoder_hidden_states is not None  # noqa: S101 — the caller passes one of the two
        # A bf16/fp16 base without autocast takes its inputs in its own dtype.
        dtype = self.unet.dtype
        return self.unet(
            noisy_latents.to(dtype),
            timesteps,
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            return_dict=False,
        )[0]


def trains_text_encoder(model: ModelBundle) -> bool:
    return isinstance(getattr(model.module, "text_encoder", None), torch.nn.Module)


def locate(options: StableDiffusionOptions, cache_dir: Path) -> str:
    """What to hand to ``from_pretrained``: a preset's cached directory, a local directory or a hub id."""
    return toolkit.locate(options.pretrained, cache_dir, TINY_PRESETS)


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any


def load_components(
    options: StableDiffusionOptions, cache_dir: Path, *, dtype: torch.dtype | None = None
) -> Components:
    """The five parts of a Stable Diffusion checkpoint; the VAE always in float32 (SD's VAE overflows in fp16)."""
    quiet_libraries()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = locate(options, cache_dir)
    weights = dtype or torch_dtype(options.dtype)
    revision = {"revision": options.revision} if options.revision else {}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **revision)
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", dtype=weights, **revision
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32, **revision)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=weights, **revision)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **revision)
    except (OSError, ValueError) as exc:
        layout = "a diffusers pipeline (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        raise model_load_error(
            "Stable Diffusion model", options.pretrained, source, exc, layout=layout, preset="tiny-sd"
        ) from exc
    if options.prediction_type != "auto":
        scheduler.register_to_config(prediction_type=options.prediction_type)
    for part in (unet, vae, text_encoder):
        part.requires_grad_(False)
        part.eval()
    return Components(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, noise_scheduler=scheduler
    )


def build(options: StableDiffusionOptions, ctx: RunContext) -> ModelBundle:
    parts = load_components(options, ctx.cache_dir)
    if options.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
    source = locate(options, ctx.cache_dir)
    return ModelBundle(
        kind=MODEL_KIND,
        module=DiffusionModule(parts.unet),
        components={
            "unet": parts.unet,
            "vae": parts.vae,
            "text_encoder": parts.text_encoder,
            "tokenizer": parts.tokenizer,
            "noise_scheduler": parts.noise_scheduler,
        },
        base=options.pretrained,
        base_dir=local_dir(source),
    )


def encode_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents of images in [-1, 1]: the posterior's mean, so caching and not caching agree exactly.

    (The SD VAE's posterior standard deviation is tiny; sampling from it, as some scripts do, adds
    nothing a person could see and makes a cached latent differ from a fresh one.)
    """
    parameter = next(vae.parameters())
    latents = vae.encode(pixels.to(parameter.device, parameter.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def batch_latents(model: ModelBundle, inputs: dict[str, Any]) -> torch.Tensor:
    """The batch's latents in float32: cached ones, or its ``pixel_values`` encoded now by the frozen VAE."""
    latents = inputs.get("latents")
    if latents is None:
        with torch.no_grad():
            latents = encode_latents(model.components["vae"], inputs["pixel_values"])
    return latents.float()


def encode_text(text_encoder: Any, input_ids: torch.Tensor) -> torch.Tensor:
    device = next(text_encoder.parameters()).device
    return text_encoder(input_ids.to(device))[0]


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def canonical_text_encoder_path(path: str) -> str:
    """A CLIP text-encoder module path as SD checkpoints, kohya tools and transformers 4 spell it.

    transformers 5 dropped the ``text_model.`` level of ``CLIPTextModel`` (and maps it back when loading);
    exported files keep it, so every tool finds its layers.
    """
    return path if path.startswith("text_model.") else f"text_model.{path}"


def place_frozen(model: ModelBundle, device: Any) -> None:
    """Put the frozen VAE and text encoder where the UNet trains (the core moves only ``model.module``)."""
    if device is None:
        return
    for name in ("vae", "text_encoder"):
        part = model.components[name]
        if next(part.parameters()).device != torch.device(device):
            part.to(device)
