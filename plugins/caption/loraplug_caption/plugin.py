"""The hook implementations of loraplug-caption; onnxruntime and transformers load inside the hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from loraplug import KindSpec, hookimpl

if TYPE_CHECKING:
    from pydantic import BaseModel

    from loraplug import CaptionContext, Captioner


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "caption",
            "wd14",
            "loraplug_caption.options:Wd14Options",
            "booru-style tags from a WD14 tagger (SmilingWolf/wd-vit-tagger-v3…), run with onnxruntime",
        )
    )
    register(
        KindSpec(
            "caption",
            "blip",
            "loraplug_caption.options:BlipOptions",
            "a sentence per image from BLIP (Salesforce/blip-image-captioning-base…), with transformers",
        )
    )


@hookimpl
def loraplug_build_captioner(kind: str, options: BaseModel, ctx: CaptionContext) -> Captioner:
    if kind == "wd14":
        from loraplug_caption.options import Wd14Options
        from loraplug_caption.wd14 import Wd14Tagger

        assert isinstance(options, Wd14Options)  # noqa: S101 — the core checked them against Wd14Options
        return Wd14Tagger(options, ctx.device)
    from loraplug_caption.blip import BlipCaptioner
    from loraplug_caption.options import BlipOptions

    assert isinstance(options, BlipOptions)  # noqa: S101
    return BlipCaptioner(options, ctx.device)
