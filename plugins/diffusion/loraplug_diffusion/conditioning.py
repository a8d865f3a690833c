"""How a Stable Diffusion family turns captions into what its UNet is conditioned on.

SD 1.x/2.x: one CLIP text encoder's last hidden states. SDXL: two encoders' penultimate states and a
pooled embedding, plus per-sample size values (``time_ids``) computed from each crop. Preparation and
the collate function work through this, so caching, dropout and offloading are the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from loraplug import ModelBundle
from loraplug_diffusion.cache import fingerprint
from loraplug_diffusion.model import encode_text, tokenize, trains_text_encoder

#: Names of a cached text entry's tensors -> the batch inputs they become.
CACHED_INPUTS = {"states": "encoder_hidden_states", "pooled": "pooled"}


@dataclass
class TextSide:
    """A family's text conditioning.

    :param encoders: the frozen text encoders by component name (placed and offloaded with the VAE).
    :param trains: whether a text encoder trains (so nothing text-side can be cached).
    :param encode: captions -> cached features (``states``, and ``pooled`` for SDXL), batched.
    :param tokenize: captions -> token-id inputs of the training step (``input_ids``, ``input_ids_2``).
    :param size_conditioning: the step needs ``time_ids`` (SDXL's ``add_time_ids``) per sample.
    """

    encoders: dict[str, Any]
    trains: bool
    encode: Callable[[list[str]], dict[str, torch.Tensor]]
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    size_conditioning: bool

    def fingerprint(self) -> str:
        """A hash of every encoder's config and weights: the text cache's directory on disk."""
        return "-".join(fingerprint(e, e.config.to_dict()) for e in self.encoders.values())


def text_side(model: ModelBundle) -> TextSide:
    if model.kind == "flux":  # T5's sequence and CLIP's pooled output (flux_model.py)
        from loraplug_diffusion.flux_model import text_side as flux_text_side

        return flux_text_side(model)
    from loraplug_diffusion.sdxl_model import SDXL_KIND

    if model.kind == SDXL_KIND:
        from loraplug_diffusion.sdxl_model import (
            TEXT_ENCODERS,
            encode_captions,
            tokenize_both,
            trained_text_encoders,
        )

        return TextSide(
            encoders={name: model.components[name] for name in TEXT_ENCODERS},
            trains=bool(trained_text_encoders(model)),
            encode=lambda captions: encode_captions(model, captions),
            tokenize=lambda captions: tokenize_both(model, captions),
            size_conditioning=True,
        )
    text_encoder, tokenizer = model.components["text_encoder"], model.components["tokenizer"]
    return TextSide(
        encoders={"text_encoder": text_encoder},
        trains=trains_text_encoder(model),
        encode=lambda captions: {"states": encode_text(text_encoder, tokenize(tokenizer, captions))},
        tokenize=lambda captions: {"input_ids": tokenize(tokenizer, captions)},
        size_conditioning=False,
    )
