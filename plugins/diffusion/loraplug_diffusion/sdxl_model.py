"""SDXL's model: its six parts, the module the core trains, and its conditioning (two encoders, sizes).

Conditioning as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` computes it (and kohya's
``strategy_sdxl``): the penultimate hidden states of both text encoders, concatenated on the feature
axis (768 + 1280 = 2048 for SDXL), and the second encoder's projected pooled output (1280). The UNet's
added embedding also takes six size values per sample, ``add_time_ids`` = original (h, w), crop
top-left (top, left), target (h, w); training computes them from the resize and crop each image
really got (see images.Placement), which is what makes aspect buckets work for SDXL.

Imports torch, diffusers and transformers at module level: only hook bodies import it.
"""

from __future__ import annotations

from typing import Any

import torch

from loraplug import ModelBundle, RunContext
from loraplug.toolkit import local_dir, model_load_error, torch_dtype
from loraplug_diffusion.images import Placement
from loraplug_diffusion.model import locate, tokenize
from loraplug_diffusion.quiet import quiet_libraries
from loraplug_diffusion.sdxl_options import StableDiffusionXLOptions

SDXL_KIND = "stable-diffusion-xl"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


class SdxlModule(torch.nn.Module):
    """What the core optimises: the UNet, and each text encoder that trains (``text_encoder``, ``text_encoder_2``).

    ``forward`` runs the trained text encoders (when ``input_ids`` are given) and the UNet, so the whole
    trainable computation goes through the wrapper accelerate puts around this module.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.frozen_text_encoders: tuple[Any, Any] | None = None

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        time_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        input_ids_2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids is not None:
            assert self.frozen_text_encoders is not None and input_ids_2 is not None  # noqa: S101
            # A trained encoder is this module's attribute; a frozen one is only in the tuple.
            first, second = (
                getattr(self, name, frozen)
                for name, frozen in zip(TEXT_ENCODERS, self.frozen_text_encoders, strict=True)
            )
            encoder_hidden_states, pooled = encode_prompt(first, second, input_ids, input_ids_2)
        assert encoder_hidden_states is not None and pooled is not None  # noqa: S101
        dtype = self.unet.dtype
        return self.unet(
            noisy_latents.to(dtype),
            timesteps,
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)},
            return_dict=False,
        )[0]


def trained_text_encoders(model: ModelBundle) -> list[str]:
    """The names of the text encoders that train (carry an adapter): some of ``text_encoder``, ``text_encoder_2``."""
    return [name for name in TEXT_ENCODERS if isinstance(getattr(model.module, name, None), torch.nn.Module)]


def load_components(
    options: StableDiffusionXLOptions, cache_dir: Any, *, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """The seven parts of an SDXL checkpoint; the VAE always in float32 (SDXL's VAE overflows in fp16)."""
    quiet_libraries()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    source = locate(options, cache_dir)
    weights = dtype or torch_dtype(options.dtype)
    revision = {"revision": options.revision} if options.revision else {}
    try:
        parts: dict[str, Any] = {
            "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **revision),
            "tokenizer_2": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **revision),
            "text_encoder": CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", dtype=weights, **revision
            ),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                source, subfolder="text_encoder_2", dtype=weights, **revision
            ),
            "vae": AutoencoderKL.from_pretrained(
                source, subfolder="vae", torch_dtype=torch.float32, **revision
            ),
            "unet": UNet2DConditionModel.from_pretrained(
                source, subfolder="unet", torch_dtype=weights, **revision
            ),
            # SDXL ships an Euler scheduler config; training noises on the same betas with DDPM's add_noise.
            "noise_scheduler": DDPMScheduler.from_pretrained(source, subfolder="scheduler", **revision),
        }
    except (OSError, ValueError) as exc:
        layout = (
            "a diffusers SDXL pipeline (model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, "
            "tokenizer/, tokenizer_2/, scheduler/)"
        )
        raise model_load_error(
            "SDXL model", options.pretrained, source, exc, layout=layout, preset="tiny-sdxl"
        ) from exc
    if options.prediction_type != "auto":
        parts["noise_scheduler"].register_to_config(prediction_type=options.prediction_type)
    for name in ("unet", "vae", *TEXT_ENCODERS):
        parts[name].requires_grad_(False)
        parts[name].eval()
    return parts


def build(options: StableDiffusionXLOptions, ctx: RunContext) -> ModelBundle:
    parts = load_components(options, ctx.cache_dir)
    if options.gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()
    module = SdxlModule(parts["unet"])
    # Not submodules (a tuple): frozen, not optimised or saved, used when a caption is encoded in the step.
    module.frozen_text_encoders = (parts["text_encoder"], parts["text_encoder_2"])
    return ModelBundle(
        kind=SDXL_KIND,
        module=module,
        components=parts,
        base=options.pretrained,
        base_dir=local_dir(locate(options, ctx.cache_dir)),
    )


def encode_prompt(
    text_encoder: Any, text_encoder_2: Any, input_ids: torch.Tensor, input_ids_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, pooled)`` exactly as ``StableDiffusionXLPipeline.encode_prompt`` computes them."""
    states = []
    pooled = None
    for encoder, ids in ((text_encoder, input_ids), (text_encoder_2, input_ids_2)):
        device = next(encoder.parameters()).device
        output = encoder(ids.to(device), output_hidden_states=True)
        if pooled is None and output[0].ndim == 2:  # the projection model's text_embeds
            pooled = output[0]
        states.append(output.hidden_states[-2])
    assert pooled is not None  # noqa: S101 — text_encoder_2 is a CLIPTextModelWithProjection
    return torch.cat(states, dim=-1), pooled


def tokenize_both(model: ModelBundle, captions: list[str]) -> dict[str, torch.Tensor]:
    parts = model.components
    return {
        "input_ids": tokenize(parts["tokenizer"], captions),
        "input_ids_2": tokenize(parts["tokenizer_2"], captions),
    }


def encode_captions(model: ModelBundle, captions: list[str]) -> dict[str, torch.Tensor]:
    """The cached text features of ``captions``: ``states`` [B, 77, 2048] and ``pooled`` [B, 1280] for SDXL."""
    ids = tokenize_both(model, captions)
    parts = model.components
    states, pooled = encode_prompt(
        parts["text_encoder"], parts["text_encoder_2"], ids["input_ids"], ids["input_ids_2"]
    )
    return {"states": states, "pooled": pooled}


def time_ids(placement: Placement, target: tuple[int, int]) -> torch.Tensor:
    """SDXL's ``add_time_ids`` of one training crop: ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``.

    ``target`` is the ``(width, height)`` trained at (the bucket). The order is diffusers'
    ``compute_time_ids`` and kohya's ``get_size_embeddings``.
    """
    (width, height), (target_w, target_h) = placement.original, target
    return torch.tensor(
        [height, width, placement.top, placement.left, target_h, target_w], dtype=torch.float32
    )


def predict(
    model: ModelBundle,
    module: Any,
    inputs: dict[str, torch.Tensor],
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """The UNet's prediction for a batch: from cached text features, or captions encoded now."""
    if "encoder_hidden_states" in inputs:
        return module(
            noisy,
            timesteps,
            inputs["time_ids"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            pooled=inputs["pooled"],
        )
    if trained_text_encoders(model):
        return module(
            noisy,
            timesteps,
            inputs["time_ids"],
            input_ids=inputs["input_ids"],
            input_ids_2=inputs["input_ids_2"],
        )
    with torch.no_grad():
        parts = model.components
        states, pooled = encode_prompt(
            parts["text_encoder"], parts["text_encoder_2"], inputs["input_ids"], inputs["input_ids_2"]
        )
    return module(noisy, timesteps, inputs["time_ids"], encoder_hidden_states=states, pooled=pooled)
