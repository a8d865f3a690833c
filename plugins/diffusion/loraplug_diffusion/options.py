"""Option models for every kind this plugin serves; imported at start-up, so pydantic only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, Protocol, TypeVar

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from loraplug import InputDir, InputFile, Options
from loraplug.toolkit import LearningRate, pretrained_source
from loraplug_hf.peft_options import LokrSettings

#: Presets built from a config and cached locally; see presets.py.
PRESETS = ("tiny-sd",)

Dtype = Literal["float32", "bfloat16", "float16"]

#: Fields every image model kind (stable-diffusion, stable-diffusion-xl, flux) declares alike: each type
#: carries its constraints and the description users see; each kind gives the default.
Revision = Annotated[str | None, Field(description="Hub revision (branch, tag or commit).")]
Crop = Annotated[
    Literal["center", "random"],
    Field(description="Crop after resizing; `random` turns the latent cache off."),
]
Flip = Annotated[bool, Field(description="Random horizontal flip (cached as a second latent).")]
CaptionDropout = Annotated[
    float, Field(ge=0, le=1, description="Probability of training a sample with an empty caption.")
]
ShuffleTags = Annotated[
    bool,
    Field(description="Shuffle comma-separated caption tags each step (turns the text-encoder cache off)."),
]
KeepTokens = Annotated[
    int, Field(ge=0, description="Leading tags kept in place when shuffling (a trigger word).")
]


def multiple_of(step: int, why: str) -> Callable[[int | None], int | None]:
    """A field validator (of pixel sides) refusing a value that is not a multiple of ``step``, saying ``why``
    and the nearest multiples."""

    def check(value: int | None) -> int | None:
        if value is not None and value % step:
            low = value - value % step
            raise ValueError(f"must be a multiple of {step} ({why}), e.g. {low or step} or {low + step}")
        return value

    return check


class CaptionShuffle(Protocol):
    """What keep_tokens_needs_shuffle reads of an image model kind's options."""

    keep_tokens: int
    shuffle_tags: bool


_Shuffled = TypeVar("_Shuffled", bound=CaptionShuffle)


def keep_tokens_needs_shuffle(options: _Shuffled) -> _Shuffled:
    """An image model kind's check (a model_validator) that ``keep_tokens`` comes with ``shuffle_tags``."""
    if options.keep_tokens and not options.shuffle_tags:
        raise ValueError("keep_tokens only applies when shuffle_tags = true")
    return options


#: The UNet layers LoCon adds (``adapter.conv = true``): every convolution and linear layer of the resnet
#: blocks, the down/upsampling convolutions and the 1×1 projections around each transformer.
DEFAULT_CONV_MODULES = (
    "conv1", "conv2", "conv_shortcut", "time_emb_proj",
    "downsamplers.0.conv", "upsamplers.0.conv", "proj_in", "proj_out",
)  # fmt: skip


class ImageFolderOptions(Options):
    """``[data] kind = "imagefolder"``."""

    path: InputDir = Field(
        description="Folder of images (png, jpg, webp), searched recursively; each trains as displayed (EXIF orientation applied, 16-bit scaled to 8-bit)."
    )
    metadata: InputFile | None = Field(
        None,
        description="A .jsonl or .csv file with an image path and a caption per row. Default: `metadata.jsonl` or "
        "`metadata.csv` in `path` when present, else a same-stem caption file beside each image.",
    )
    image_column: str | None = Field(
        None,
        description="Metadata column with the image path (relative to `path`). Default: image_path, file_name or image.",
    )
    caption_column: str | None = Field(
        None, description="Metadata column with the caption. Default: caption, text or prompt."
    )
    caption_extension: str = Field(".txt", description="Extension of the caption file beside each image.")
    missing_caption: Literal["error", "empty", "filename"] = Field(
        "error",
        description="An image without a caption stops the run, trains with an empty caption, or uses its file name.",
    )
    on_unreadable: Literal["skip", "error"] = Field(
        "skip",
        description="An unreadable, truncated or too large image (over Pillow's decompression-bomb limit) is skipped and counted, or stops the run naming it.",
    )
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of the images for validation loss (seeded)."
    )

    @field_validator("caption_extension")
    @classmethod
    def _dotted(cls, value: str) -> str:
        return value if value.startswith(".") else "." + value


class StableDiffusionOptions(Options):
    """``[model] kind = "stable-diffusion"``: the base model, how images become latents, the loss, sampling."""

    pretrained: str = Field(
        description="Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), local diffusers directory, or preset `tiny-sd`."
    )
    revision: Revision = None
    dtype: Dtype = Field(
        "float32",
        description="Dtype of the frozen UNet and text-encoder weights (LoRA weights and the VAE stay float32).",
    )
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto",
        description="What the UNet predicts; `auto` takes the model's scheduler config (SD 2.x 768: v_prediction).",
    )
    resolution: PositiveInt = Field(
        512,
        description="Training side length in pixels (a multiple of 8); images are resized and cropped to it.",
    )
    crop: Crop = "center"
    flip: Flip = False
    buckets: bool = Field(
        False,
        description="Aspect-ratio buckets of about resolution² pixels; every batch comes from one bucket "
        "(validation images stay resolution² squares).",
    )
    bucket_step: PositiveInt = Field(64, description="Bucket sides are multiples of this many pixels.")
    caption_dropout: CaptionDropout = 0.0
    shuffle_tags: ShuffleTags = False
    keep_tokens: KeepTokens = 0
    cache_latents: bool = Field(
        True,
        description="Encode every image with the VAE once, before training, when the augmentations allow.",
    )
    cache_text_encoder_outputs: bool = Field(
        True,
        description="Encode every caption once, before training, when captions are not shuffled and the text encoder is frozen.",
    )
    cache_to_disk: bool = Field(
        False,
        description="Keep cached latents and text-encoder outputs on disk under the cache directory (reused by later runs).",
    )
    noise_offset: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Add this much per-channel offset noise (darker darks, brighter brights).",
    )
    min_snr_gamma: PositiveFloat | None = Field(
        None, description="Min-SNR loss weighting with this gamma (5 is usual); off when unset."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute UNet activations in backward to save memory."
    )
    sample_steps: PositiveInt = Field(25, description="Denoising steps for sample images.")
    sample_guidance_scale: float = Field(
        7.5, ge=0, description="Classifier-free guidance scale for sample images."
    )
    sample_size: PositiveInt | None = Field(
        None, description="Side of sample images in pixels (a multiple of 8). Default: resolution."
    )
    sample_images: PositiveInt = Field(
        4, description="Images per prompt in each sample grid (seeds run.seed, run.seed+1, ...)."
    )

    _pretrained = field_validator("pretrained")(pretrained_source(PRESETS))

    _multiple_of_8 = field_validator("resolution", "sample_size", "bucket_step")(
        multiple_of(8, "the VAE halves the image three times")
    )

    _keep_tokens_needs_shuffle = model_validator(mode="after")(keep_tokens_needs_shuffle)


class SdAdapterOptions(Options):
    """What every adapter kind for Stable Diffusion shares: where it goes (UNet, LoCon's convolutions, text encoder) and its size."""

    r: PositiveInt = Field(8, description="Rank of linear layers and 1×1 convolutions.")
    alpha: PositiveFloat = Field(8.0, description="Alpha; the update is scaled by alpha/r.")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0"],
        description="UNet modules to adapt, by name or name suffix (the attention projections).",
    )
    conv: bool = Field(
        False, description="LoCon: also adapt the convolutions and projections named in conv_modules."
    )
    conv_modules: list[str] = Field(
        list(DEFAULT_CONV_MODULES),
        description="UNet modules LoCon adds: resnet convolutions, down/upsamplers, 1×1 projections.",
    )
    conv_r: PositiveInt | None = Field(None, description="Rank of 3×3 convolutions. Default: r.")
    conv_alpha: PositiveFloat | None = Field(None, description="Alpha of 3×3 convolutions. Default: alpha.")
    text_encoder: bool = Field(
        False, description="Also train the adapter on the text encoder (turns the text-encoder cache off)."
    )
    text_encoder_r: PositiveInt | None = Field(
        None, description="Rank of the text-encoder adapter. Default: r."
    )
    text_encoder_alpha: PositiveFloat | None = Field(
        None, description="Alpha of the text-encoder adapter. Default: alpha."
    )
    text_encoder_target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "out_proj"],
        description="Text-encoder modules to adapt (add fc1, fc2 for the MLPs).",
    )
    text_encoder_lr: LearningRate | None = Field(
        None, description="Peak learning rate of the text-encoder adapter. Default: train.lr."
    )

    @model_validator(mode="after")
    def _text_encoder_settings_need_text_encoder(self) -> SdAdapterOptions:
        set_without = [
            k
            for k in ("text_encoder_r", "text_encoder_alpha", "text_encoder_lr")
            if getattr(self, k) is not None
        ]
        if set_without and not self.text_encoder:
            raise ValueError(f"{', '.join(set_without)} only apply with text_encoder = true")
        if (self.conv_r is not None or self.conv_alpha is not None) and not self.conv:
            raise ValueError("conv_r and conv_alpha only apply with conv = true")
        return self


class SdLoraOptions(SdAdapterOptions):
    """``[adapter] kind = "lora"`` for Stable Diffusion: LoRA on the UNet (and LoCon), optionally the text encoder."""

    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    init: Literal["default", "gaussian"] = Field(
        "default", description="Initialisation of the down matrix (the up matrix starts at zero)."
    )


class SdLycorisOptions(SdAdapterOptions):
    """What LoHa and LoKr (LyCORIS' adapters, through peft) add."""

    rank_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the rows of the update during training."
    )
    module_dropout: float = Field(
        0.0, ge=0, lt=1, description="Probability of skipping a layer's whole update during a training step."
    )


class SdLohaOptions(SdLycorisOptions):
    """``[adapter] kind = "loha"`` for Stable Diffusion, through peft's ``LoHaConfig``: ΔW = (A₁B₁) ⊙ (A₂B₂) · alpha/r."""


class SdLokrOptions(LokrSettings, SdLycorisOptions):
    """``[adapter] kind = "lokr"`` for Stable Diffusion, through peft's ``LoKrConfig``: ΔW = W₁ ⊗ (A₂B₂) · alpha/r."""


class ParityOptions(Options):
    """What every export of this plugin shares: the weights' dtype and a check against the trained model."""

    dtype: Dtype = Field("float32", description="Dtype of the saved weights.")
    check_parity: bool = Field(
        True,
        description="Compare the export's UNet output with the trained model's: the LoRA files loaded back with "
        "diffusers' load_lora_weights, the merged pipeline as fused (in float32, before saving).",
    )
    tolerance: PositiveFloat | None = Field(
        None,
        description="Largest difference of the UNet's outputs (of order 1) the parity check accepts. "
        "Default by the base's and the file's dtypes: 1e-3 float32, 2e-2 float16, 6e-2 bfloat16.",
    )


class DiffusersExportOptions(ParityOptions):
    """``[[export]] kind = "diffusers"``: pytorch_lora_weights.safetensors for ``load_lora_weights``."""


class KohyaExportOptions(ParityOptions):
    """``[[export]] kind = "kohya"``: one .safetensors with kohya keys for A1111, ComfyUI and sd-scripts."""

    filename: str | None = Field(None, description="File name without extension. Default: the run's name.")
    metadata: Literal["full", "minimal"] = Field(
        "full",
        description="`full`: ss_* training metadata, hashes and modelspec.*; `minimal`: only the keys loaders need.",
    )
    title: str | None = Field(None, description="modelspec.title shown by UIs. Default: the run's name.")
    trigger_phrase: str | None = Field(
        None, description="modelspec.trigger_phrase: the words that call up the style."
    )

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or "\\" in value or value.startswith(".")):
            raise ValueError("must be a plain file name without directories")
        return value.removesuffix(".safetensors") if value else value


class MergedExportOptions(ParityOptions):
    """``[[export]] kind = "merged"``: the whole diffusers pipeline with the LoRA fused into its weights."""
