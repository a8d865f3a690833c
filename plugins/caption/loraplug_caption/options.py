"""Options of the caption kinds; imported when options are checked, so pydantic only."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from loraplug import Options
from loraplug.toolkit import pretrained_source

#: The tagger users of kohya's sd-scripts and of SD-Trainer know; any of SmilingWolf's wd-v1-4 /
#: wd-*-tagger-v3 repositories has the same layout (model.onnx, selected_tags.csv).
DEFAULT_TAGGER = "SmilingWolf/wd-vit-tagger-v3"
DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"


def _tag_list(value: Any) -> Any:
    """``"a, b"`` (what a command line gives) or ``["a", "b"]`` (TOML, the studio): a list of tags."""
    if isinstance(value, str):
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    return value


class Wd14Options(Options):
    """``loraplug data caption DIR --kind wd14``: a WD14-style tagger, run with onnxruntime."""

    pretrained: str = Field(
        DEFAULT_TAGGER,
        description="A Hugging Face Hub repository of a WD14-style tagger, or a local directory holding its "
        "model.onnx and selected_tags.csv (SmilingWolf/wd-v1-4-convnext-tagger-v2, SmilingWolf/wd-eva02-large-tagger-v3…).",
    )
    threshold: float = Field(
        0.35, ge=0, le=1, description="General tags with a confidence above this are written."
    )
    character_threshold: float = Field(
        0.85, ge=0, le=1, description="Character tags with a confidence above this are written."
    )
    undesired_tags: list[str] = Field(
        default_factory=list,
        description='Tags never written ("a, b" or a list); an underscore and a space are the same here.',
    )
    order: Literal["confidence", "alphabetical"] = Field(
        "confidence", description="Order of the tags: most confident first, or alphabetical."
    )
    replace_underscores: bool = Field(
        True, description="Write long_hair as long hair (kaomoji such as ^_^ are kept as they are)."
    )
    character_first: bool = Field(False, description="Write the character tags before the general ones.")
    rating: bool = Field(
        False, description="Also write the most likely rating tag (general, sensitive…), first."
    )

    _pretrained = field_validator("pretrained")(pretrained_source(()))
    _undesired = field_validator("undesired_tags", mode="before")(_tag_list)


class BlipOptions(Options):
    """``loraplug data caption DIR --kind blip``: a sentence per image from a BLIP captioning model."""

    pretrained: str = Field(
        DEFAULT_BLIP,
        description="A Hugging Face Hub repository of a BLIP captioning model (BlipForConditionalGeneration), "
        "or a local directory saved with save_pretrained (Salesforce/blip-image-captioning-large…).",
    )
    prompt: str = Field(
        "",
        description='Text the caption starts with, which BLIP continues ("a photograph of"); empty: unconditional.',
    )
    max_new_tokens: int = Field(40, ge=1, le=512, description="Longest caption, in tokens.")
    num_beams: int = Field(3, ge=1, le=16, description="Beam search width (1: greedy).")

    _pretrained = field_validator("pretrained")(pretrained_source(()))
