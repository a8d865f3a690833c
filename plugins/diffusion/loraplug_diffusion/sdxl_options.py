"""Options of ``[model] kind = "stable-diffusion-xl"``; imported when a recipe is checked, so pydantic only.

SDXL is its own model kind rather than a ``family`` switch on ``stable-diffusion``: its bundle holds two
text encoders, its step needs pooled embeddings and size conditioning, its sampler is another pipeline,
and its kohya keys another naming — a kind says all of that once, and a recipe names what it trains.
Every Stable Diffusion option applies (buckets, caching, flip, Min-SNR, noise offset, v-prediction).
"""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator

from loraplug.toolkit import pretrained_source
from loraplug_diffusion.options import StableDiffusionOptions

#: Presets of this kind built from configs and cached locally; see sdxl_presets.py.
SDXL_PRESETS = ("tiny-sdxl",)


class StableDiffusionXLOptions(StableDiffusionOptions):
    """``[model] kind = "stable-diffusion-xl"``: SDXL (and its finetunes: Pony, Illustrious, NoobAI) through diffusers.

    The VAE always encodes and decodes in float32, whatever ``dtype`` says: SDXL's VAE overflows in fp16
    (NaN latents, black samples), which is why kohya has ``--no_half_vae`` and diffusers' scripts upcast it.
    """

    pretrained: str = Field(
        description="Hub id (e.g. stabilityai/stable-diffusion-xl-base-1.0), local diffusers SDXL directory "
        "(unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/), or preset `tiny-sdxl`."
    )
    resolution: PositiveInt = Field(
        1024,
        description="Training side length in pixels (a multiple of 8); with buckets, the bucket area is resolution².",
    )

    _pretrained = field_validator("pretrained")(pretrained_source(SDXL_PRESETS))
