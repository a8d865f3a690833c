"""Option models of ``model.kind = "flux"`` and its adapter and exports; imported at start-up, so pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from loraplug import Options
from loraplug.toolkit import pretrained_source
from loraplug_diffusion.options import (
    CaptionDropout,
    Crop,
    Dtype,
    Flip,
    KeepTokens,
    KohyaExportOptions,
    ParityOptions,
    Revision,
    ShuffleTags,
    keep_tokens_needs_shuffle,
    multiple_of,
)

#: Presets built from configs and cached locally; see flux_presets.py.
FLUX_PRESETS = ("tiny-flux",)

#: The layer groups ``adapter.targets`` names, and the diffusers module names each covers (see flux_adapter.py).
FluxGroup = Literal["attention", "mlp", "modulation"]
FluxBlocks = Literal["double", "single"]


class FluxOptions(Options):
    """``[model] kind = "flux"``: FLUX.1 (dev or schnell) through diffusers — base, latents, flow-matching loss, sampling."""

    pretrained: str = Field(
        description="Hub id (e.g. black-forest-labs/FLUX.1-dev), local diffusers directory, or preset `tiny-flux`."
    )
    revision: Revision = None
    dtype: Dtype = Field(
        "bfloat16",
        description="Dtype of the frozen transformer and text encoders (LoRA weights and the VAE stay float32).",
    )
    quantization: Literal["none", "nf4"] = Field(
        "none",
        description="`nf4`: the frozen transformer stored in 4 bits through bitsandbytes (QLoRA; FLUX.1-dev LoRA on a "
        "24 GB GPU), computing in `dtype`; the LoRA weights stay float32.",
    )
    resolution: PositiveInt = Field(
        1024,
        description="Training side length in pixels (a multiple of 16); images are resized and cropped to it.",
    )
    crop: Crop = "center"
    flip: Flip = False
    buckets: bool = Field(
        False,
        description="Aspect-ratio buckets of about resolution² pixels; every batch comes from one bucket.",
    )
    bucket_step: PositiveInt = Field(
        64, description="Bucket sides are multiples of this many pixels (of 16)."
    )
    caption_dropout: CaptionDropout = 0.0
    shuffle_tags: ShuffleTags = False
    keep_tokens: KeepTokens = 0
    max_sequence_length: PositiveInt = Field(
        512, le=512, description="T5 tokens per caption (FLUX.1-dev: 512; schnell: 256)."
    )
    cache_latents: bool = Field(True, description="Encode every image with the VAE once, before training.")
    cache_text_encoder_outputs: bool = Field(
        True,
        description="Encode every caption with CLIP (pooled) and T5 once, before training; T5-XXL then need not stay "
        "on the GPU.",
    )
    cache_to_disk: bool = Field(
        False, description="Keep cached latents and text encodings on disk under the cache directory."
    )
    timestep_sampling: Literal["logit_normal", "uniform"] = Field(
        "logit_normal",
        description="Density of the noise level σ: `logit_normal` σ = sigmoid(N(logit_mean, logit_std)) (SD3's and "
        "kohya's `sigmoid`), or uniform.",
    )
    logit_mean: float = Field(0.0, description="Mean of the normal behind `logit_normal`.")
    logit_std: PositiveFloat = Field(
        1.0, description="Standard deviation of the normal behind `logit_normal`."
    )
    shift: Literal["resolution", "none"] | PositiveFloat = Field(
        "resolution",
        description="Shift σ towards noise: `resolution` — by μ linear in the image's token count (the scheduler's "
        "base_shift at 256 tokens to max_shift at 4096; kohya's `flux_shift`), a number s — σ' = sσ/(1+(s−1)σ), "
        "or `none`.",
    )
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none",
        description="Weight of each sample's loss by its σ (diffusers' compute_loss_weighting_for_sd3): none, σ⁻² "
        "or cosmap.",
    )
    guidance: float = Field(
        1.0,
        ge=0,
        description="Value of the guidance embedding while training a guidance-distilled model (FLUX.1-dev; kohya "
        "and ai-toolkit use 1.0); ignored for a model without one (schnell).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute the transformer's activations in backward to save memory."
    )
    sample_steps: PositiveInt = Field(28, description="Denoising steps for sample images.")
    sample_guidance_scale: float = Field(
        3.5, ge=0, description="Guidance embedding of sample images (FLUX.1-dev: 3.5; ignored for schnell)."
    )
    sample_size: PositiveInt | None = Field(
        None, description="Side of sample images in pixels (a multiple of 16). Default: resolution."
    )
    sample_images: PositiveInt = Field(4, description="Images per prompt in each sample grid.")

    _pretrained = field_validator("pretrained")(pretrained_source(FLUX_PRESETS))

    # The VAE halves the image three times and the transformer packs 2×2 latents into one token.
    _multiple_of_16 = field_validator("resolution", "sample_size", "bucket_step")(
        multiple_of(16, "8× VAE, then 2×2 latent patches")
    )

    _keep_tokens_needs_shuffle = model_validator(mode="after")(keep_tokens_needs_shuffle)


class FluxLoraOptions(Options):
    """``[adapter] kind = "lora"`` for Flux: LoRA on the transformer's blocks, by the layer groups users know."""

    r: PositiveInt = Field(
        16, description="Rank of every adapted layer, unless its group's rank says otherwise."
    )
    alpha: PositiveFloat = Field(16.0, description="Alpha; the update is scaled by alpha/r.")
    blocks: list[FluxBlocks] = Field(
        ["double", "single"],
        description="Which blocks: `double` (the 19 MM-DiT blocks, kohya double_blocks) and/or `single` (the 38 "
        "single-stream blocks).",
        min_length=1,
    )
    targets: list[FluxGroup] = Field(
        ["attention"],
        description="Which layers in those blocks: `attention` (q/k/v and output projections of image and text), "
        "`mlp` (feed-forwards; a single block's proj_mlp and proj_out), `modulation` (the AdaLN linears).",
        min_length=1,
    )
    ranks: dict[FluxGroup | FluxBlocks, PositiveInt] = Field(
        {},
        description="Rank per group or block kind, e.g. {mlp = 8, single = 4}; a group's rank wins over a block "
        "kind's. Alpha scales with it (alpha/r stays the same).",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    init: Literal["default", "gaussian"] = Field(
        "default", description="Initialisation of the down matrix (the up matrix starts at zero)."
    )

    @model_validator(mode="after")
    def _ranks_name_chosen_groups(self) -> FluxLoraOptions:
        unused = sorted(k for k in self.ranks if k not in self.targets and k not in self.blocks)
        if unused:
            raise ValueError(f"ranks names {', '.join(unused)}, which targets/blocks do not choose")
        return self


class FluxDiffusersExportOptions(ParityOptions):
    """``[[export]] kind = "diffusers"`` for Flux: pytorch_lora_weights.safetensors for ``FluxPipeline.load_lora_weights``."""


class FluxKohyaExportOptions(KohyaExportOptions):
    """``[[export]] kind = "kohya"`` for Flux: sd-scripts' ``lora_unet_double_blocks_…`` keys, q/k/v fused, for ComfyUI and Forge."""
