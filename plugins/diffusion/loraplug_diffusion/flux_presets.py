"""``tiny-flux``: a small FLUX.1-dev-shaped model built from configs, saved as a diffusers FluxPipeline, cached on disk.

Written with ``save_pretrained`` and loaded back with ``from_pretrained`` like the real checkpoint, so tests and
``--smoke`` run the real loading path offline. Like FLUX.1-dev it has a guidance embedding, a CLIP text encoder
(pooled) and a T5 encoder (sequence), a 16-channel VAE with a shift and scaling factor, and the same scheduler
config. The transformer and encoders are random (seeded). The VAE is tiny-sd's hand-set colour VAE (presets.py)
widened to 16 latent channels: each latent channel is one of its four colour channels over 2, so the 16
channels hold the colour exactly (orthonormal columns) and samples show what the transformer learnt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplug.toolkit import Preset

TINY_FLUX: dict[str, Any] = {
    "transformer": {
        "patch_size": 1,
        "in_channels": 64,  # 16 latent channels × a 2×2 patch
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        # 8 heads × 16 = 128 wide, wider than a token's 64 outputs, as FLUX.1 (3072 → 64): with a square proj_out the
        # final LayerNorm (no affine) would pin every output token to one ellipsoid, and LoRA could not learn shapes.
        "num_attention_heads": 8,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6],  # sums to attention_head_dim
    },
    "clip": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4},
    # FLUX.1-dev's scheduler/scheduler_config.json.
    "scheduler": {
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
    # Non-trivial like FLUX.1-dev's 0.1159 / 0.3611 (a missing shift or scale shows in tests); the scale gives the
    # shapes images' latents a standard deviation near 1, as FLUX.1's does for photos.
    "vae": {"latent_channels": 16, "shift_factor": 0.0609, "scaling_factor": 4.0},
    "seed": 0,
    "version": 2,
}


def build_t5_tokenizer() -> Any:
    """A T5 (Unigram, SentencePiece-style) tokenizer over tiny-sd's words and single characters, offline."""
    from transformers import T5Tokenizer

    from loraplug_diffusion.presets import WORDS

    words = sorted({w for line in WORDS for w in line.split()})
    characters = sorted({c for w in words for c in w} | set("0123456789.,;:!?'\"-()"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in words]  # a whole word beats spelling it out
    vocab += [(c, -5.0) for c in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _widen_vae(vae4: Any) -> Any:
    """A 16-channel copy of the 4-channel colour VAE: latent channel c is colour channel c % 4, over 2."""
    import torch
    from diffusers import AutoencoderKL

    settings = TINY_FLUX["vae"]
    config = dict(vae4.config)
    replaced = ("latent_channels", "scaling_factor", "shift_factor", "use_quant_conv", "use_post_quant_conv")
    for key in ("_class_name", "_diffusers_version", *replaced):
        config.pop(key, None)
    vae = AutoencoderKL(
        **config,
        latent_channels=settings["latent_channels"],
        scaling_factor=settings["scaling_factor"],
        shift_factor=settings["shift_factor"],
        use_quant_conv=False,  # as FLUX.1's VAE (tiny-sd's quant convs are identities)
        use_post_quant_conv=False,
    )
    state = {k: v for k, v in vae4.state_dict().items() if "quant_conv" not in k}
    latent = settings["latent_channels"]
    copies = torch.arange(latent) % 4
    with torch.no_grad():
        mean_w, logvar_w = state["encoder.conv_out.weight"][:4], state["encoder.conv_out.weight"][4:]
        mean_b, logvar_b = state["encoder.conv_out.bias"][:4], state["encoder.conv_out.bias"][4:]
        half = latent // 4 / 2  # sqrt(copies): 4 copies each over 2 keep the columns orthonormal
        state["encoder.conv_out.weight"] = torch.cat([mean_w[copies] / half, logvar_w[copies]])
        state["encoder.conv_out.bias"] = torch.cat([mean_b[copies] / half, logvar_b[copies]])
        state["decoder.conv_in.weight"] = state["decoder.conv_in.weight"][:, copies] / half
    vae.load_state_dict(state)
    return vae


def _build(target: Path) -> None:
    from loraplug_diffusion.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from loraplug_diffusion.presets import TINY_SD, _build_tokenizer, colour_vae, tiny_clip_config

    clip_tokenizer = _build_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_FLUX["seed"])
        transformer = FluxTransformer2DModel(**TINY_FLUX["transformer"])
        clip = CLIPTextModel(tiny_clip_config(clip_tokenizer, TINY_FLUX["clip"]))
        vae = _widen_vae(colour_vae(TINY_SD["vae_levels"], TINY_SD["vae_channels"]))
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                pad_token_id=t5_tokenizer.pad_token_id,
                eos_token_id=t5_tokenizer.eos_token_id,
                feed_forward_proj="gated-gelu",  # T5 v1.1, as T5-XXL
                **TINY_FLUX["t5"],
            )
        )
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**TINY_FLUX["scheduler"]),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipeline.save_pretrained(target, safe_serialization=True)


#: The presets ``model.pretrained`` may name for Flux (their names are flux_options.FLUX_PRESETS).
FLUX_PRESETS = (Preset("tiny-flux", TINY_FLUX, _build, marker="model_index.json"),)
