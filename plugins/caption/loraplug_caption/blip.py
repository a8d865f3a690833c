"""Caption kind ``blip``: a sentence per image from a BLIP captioning model (transformers).

``BlipForConditionalGeneration`` and its ``BlipProcessor`` (image processor and BERT tokenizer) load
from the Hub or a directory saved with ``save_pretrained`` (Salesforce/blip-image-captioning-base
and -large have that layout). With a ``prompt`` the model continues it, and the caption starts with it,
as BLIP's conditional captioning does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from loraplug import LoraplugError
from loraplug_caption.hub import not_available
from loraplug_caption.options import BlipOptions

if TYPE_CHECKING:
    from PIL import Image

#: What a local BLIP directory holds besides the tokenizer files, for the error.
LAYOUT = ("config.json", "model.safetensors", "preprocessor_config.json (or processor_config.json)")


class BlipCaptioner:
    """A loaded BLIP model: ``caption(images)`` returns one sentence per image."""

    def __init__(self, options: BlipOptions, device: str | None) -> None:
        import torch

        from loraplug_hf import quiet_libraries

        quiet_libraries("transformers")
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.options = options
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.processor = BlipProcessor.from_pretrained(options.pretrained)
            self.model = BlipForConditionalGeneration.from_pretrained(options.pretrained)
        except (OSError, ValueError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            from pathlib import Path

            if Path(options.pretrained).is_dir():
                raise LoraplugError(
                    f"Could not load the BLIP captioning model from {options.pretrained}: {reason}",
                    where="--option pretrained",
                    fix=f"Point it at a directory saved with save_pretrained: {', '.join(LAYOUT)} and the tokenizer",
                ) from exc
            raise not_available(options.pretrained, (), reason, "blip") from exc
        self.model.to(self.device).eval()

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        pictures = [image.convert("RGB") for image in images]
        prompt = self.options.prompt.strip()
        if prompt:
            inputs = self.processor(images=pictures, text=[prompt] * len(pictures), return_tensors="pt")
        else:
            inputs = self.processor(images=pictures, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.options.max_new_tokens, num_beams=self.options.num_beams
            )
        return [text.strip() for text in self.processor.batch_decode(out, skip_special_tokens=True)]
