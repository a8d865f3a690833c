"""Loading a FLUX.1 model's parts, the module the core trains, and how captions and latents become its inputs.

Text (as diffusers' FluxPipeline and kohya's ``strategy_flux.py``): CLIP-L's ``pooler_output`` is the pooled
projection, T5's last hidden states (``max_sequence_length`` tokens) the sequence the image attends to, with
text ids all zero. Images: the VAE's latents ``(z − shift_factor)·scaling_factor`` packed into 2×2 patches
(``FluxPipeline._pack_latents``) with (0, row, column) image ids (``_prepare_latent_image_ids``).

Imports torch, diffusers and transformers at module level: only hook bodies import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loraplug import LoraplugError, ModelBundle, RunContext, toolkit
from loraplug.toolkit import BITSANDBYTES_INSTALL, local_dir, model_load_error, torch_dtype
from loraplug_diffusion.conditioning import TextSide
from loraplug_diffusion.flux_options import FluxOptions
from loraplug_diffusion.flux_presets import FLUX_PRESETS
from loraplug_diffusion.model import tokenize
from loraplug_diffusion.quiet import quiet_libraries

FLUX_KIND = "flux"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
LAYOUT = (
    "a diffusers FLUX.1 pipeline (model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, "
    "tokenizer/, tokenizer_2/, scheduler/)"
)


class FluxModule(torch.nn.Module):
    """What the core optimises, saves and hands to accelerate: the transformer (with its LoRA)."""

    def __init__(self, transformer: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.transformer = transformer
        # model.dtype, what the frozen base computes in: not a parameter's (nf4 weights are uint8, LoRA float32).
        self.compute_dtype = dtype

    def forward(
        self,
        packed: torch.Tensor,
        sigmas: torch.Tensor,
        states: torch.Tensor,
        pooled: torch.Tensor,
        img_ids: torch.Tensor,
        guidance: torch.Tensor | None,
    ) -> torch.Tensor:
        transformer, dtype = self.transformer, self.compute_dtype
        txt_ids = torch.zeros(states.shape[1], 3, device=packed.device, dtype=dtype)
        return transformer(
            hidden_states=packed.to(dtype),
            timestep=sigmas.to(dtype),  # the transformer multiplies by 1000, as FluxPipeline passes t/1000
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=states.to(dtype),
            txt_ids=txt_ids,
            img_ids=img_ids.to(dtype),
            return_dict=False,
        )[0]


def locate(options: FluxOptions, cache_dir: Path) -> str:
    return toolkit.locate(options.pretrained, cache_dir, FLUX_PRESETS)


def bnb_config(options: FluxOptions) -> Any:
    """diffusers' BitsAndBytesConfig for ``quantization = "nf4"`` (QLoRA's settings), computing in ``dtype``."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LoraplugError(
            f'model.quantization = "nf4" needs bitsandbytes, which could not be imported ({exc})',
            where="model.quantization",
            fix=f'`{BITSANDBYTES_INSTALL}`, or set model.quantization = "none"',
        ) from exc
    if not torch.cuda.is_available():
        raise LoraplugError(
            'model.quantization = "nf4" needs a CUDA GPU: diffusers quantizes with bitsandbytes only on one',
            where="model.quantization",
            fix='Run on a CUDA GPU, or set model.quantization = "none" (with dtype = "bfloat16" on a 40 GB+ GPU)',
        )
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(options.dtype),
    )


def load_components(options: FluxOptions, cache_dir: Path) -> dict[str, Any]:
    """The seven parts of a FLUX.1 checkpoint, frozen; the VAE in float32, the transformer maybe in nf4."""
    quiet_libraries()
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    quantized = {"quantization_config": bnb_config(options)} if options.quantization == "nf4" else {}
    source = locate(options, cache_dir)
    weights = torch_dtype(options.dtype)
    revision = {"revision": options.revision} if options.revision else {}
    try:
        parts = {
            "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **revision),
            "tokenizer_2": AutoTokenizer.from_pretrained(source, subfolder="tokenizer_2", **revision),
            "text_encoder": CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", dtype=weights, **revision
            ),
            "text_encoder_2": T5EncoderModel.from_pretrained(
                source, subfolder="text_encoder_2", dtype=weights, **revision
            ),
            "vae": AutoencoderKL.from_pretrained(
                source, subfolder="vae", torch_dtype=torch.float32, **revision
            ),
            "transformer": FluxTransformer2DModel.from_pretrained(
                source, subfolder="transformer", torch_dtype=weights, **quantized, **revision
            ),
            "noise_scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(
                source, subfolder="scheduler", **revision
            ),
        }
    except (OSError, ValueError) as exc:
        raise model_load_error(
            "FLUX.1 model", options.pretrained, source, exc, layout=LAYOUT, preset="tiny-flux"
        ) from exc
    for name in ("transformer", "vae", *TEXT_ENCODERS):
        parts[name].requires_grad_(False)
        parts[name].eval()
    return parts


def build(options: FluxOptions, ctx: RunContext) -> ModelBundle:
    parts = load_components(options, ctx.cache_dir)
    parts["tokenizer_2"].model_max_length = options.max_sequence_length  # T5 tokens per caption
    if options.gradient_checkpointing:
        parts["transformer"].enable_gradient_checkpointing()
    source = locate(options, ctx.cache_dir)
    return ModelBundle(
        kind=FLUX_KIND,
        module=FluxModule(parts["transformer"], torch_dtype(options.dtype)),
        components=parts,
        base=options.pretrained,
        base_dir=local_dir(source),
    )


def encode_ids(model: ModelBundle, clip_ids: torch.Tensor, t5_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``states`` (T5's last hidden states) and ``pooled`` (CLIP's pooler output) of token ids."""
    clip, t5 = model.components["text_encoder"], model.components["text_encoder_2"]
    pooled = clip(clip_ids.to(next(clip.parameters()).device), output_hidden_states=False).pooler_output
    states = t5(t5_ids.to(next(t5.parameters()).device), output_hidden_states=False)[0]
    return {"states": states, "pooled": pooled}


def text_side(model: ModelBundle) -> TextSide:
    """Flux's text conditioning for preparation and the collate (see conditioning.py); the encoders stay frozen.

    T5's token count is ``tokenizer_2.model_max_length``, set from ``model.max_sequence_length`` by build.
    """
    clip_tokenizer, t5_tokenizer = model.components["tokenizer"], model.components["tokenizer_2"]

    def ids(captions: list[str]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": tokenize(clip_tokenizer, captions),
            "input_ids_2": tokenize(t5_tokenizer, captions),
        }

    return TextSide(
        encoders={name: model.components[name] for name in TEXT_ENCODERS},
        trains=False,
        encode=lambda captions: encode_ids(model, *ids(captions).values()),
        tokenize=ids,
        size_conditioning=False,
    )


def pack(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C, H, W]`` latents → (``[B, HW/4, 4C]`` tokens, ``[HW/4, 3]`` image ids), FluxPipeline's layout."""
    from diffusers import FluxPipeline

    batch, channels, height, width = latents.shape
    packed = FluxPipeline._pack_latents(latents, batch, channels, height, width)
    ids = FluxPipeline._prepare_latent_image_ids(
        batch, height // 2, width // 2, latents.device, latents.dtype
    )
    return packed, ids


def place_frozen(model: ModelBundle, device: Any) -> None:
    """Put the VAE and both text encoders where the transformer trains (the core moves only ``model.module``)."""
    if device is None:
        return
    for name in ("vae", *TEXT_ENCODERS):
        part = model.components[name]
        if next(part.parameters()).device != torch.device(device):
            part.to(device)
