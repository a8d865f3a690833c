"""``tiny-sd``: a small Stable Diffusion built from configs, saved as a diffusers pipeline, cached on disk.

It is written with ``save_pretrained`` and loaded back with ``from_pretrained`` like any SD 1.x checkpoint,
so tests and ``--smoke`` exercise the real loading path, offline. The UNet and the CLIP text encoder have
random but fixed (seeded) weights. The VAE is set by hand instead: its encoder averages each 4×4 block
of pixels and maps the colour into four latent channels, its decoder inverts that and upsamples, with
every resnet block an identity. A random VAE would scramble colours, so samples from a model trained
on top of it would show nothing a person can judge; with this one they show what the UNet learnt.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from loraplug.toolkit import Preset
from loraplug_diffusion.sdxl_presets import TINY_SDXL_PRESET

TINY_SD: dict[str, Any] = {
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    # Three VAE levels: a 64 px image becomes 16×16 latents (SD's four levels make 1/8).
    "vae_levels": 3,
    "vae_channels": 16,
    "seed": 0,
    "version": 1,
}

#: Words the tiny tokenizer knows whole (everything else is spelt out in bytes): the captions of the
#: bundled image set and the usual prompt words, so a caption fits CLIP's 77 positions.
WORDS = (
    "a an the and of on in with at by to for from over under near",
    "circle circles square squares triangle triangles star stars ring rings dot dots stripe stripes",
    "wave waves shape shapes line lines block blocks sun moon hill hills tree trees house",
    "red orange yellow green teal blue navy purple pink white black cream grey gold",
    "small large big tiny flat bold soft poster style background pattern print retro minimal",
    "photo painting picture drawing illustration portrait landscape city mountain flower cat dog sky",
    "one two three four five several many single pair group",
)

#: Distance of the VAE's constant channels from zero; see _set_vae_weights.
_ANCHOR = 100.0
#: Shift that keeps the SiLU before each VAE output convolution in its linear range.
_SHIFT = 20.0


def _colour_to_latent() -> Any:
    """A 4×3 matrix with orthonormal columns: luminance (split over two channels) and two chroma axes."""
    import torch

    lum = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3)
    chroma1 = torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2)
    chroma2 = torch.tensor([1.0, 1.0, -2.0]) / math.sqrt(6)
    return torch.stack([lum / math.sqrt(2), chroma1, chroma2, lum / math.sqrt(2)])


def _build_tokenizer() -> Any:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in specials + alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    # For each known word, run BPE with the merges so far and append merges that finish the word. A
    # new merge ranks after every earlier one, so the words before it still tokenize as they did.
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w for line in WORDS for w in line.split()}):
        pieces = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _apply_merges(pieces, ranks)
    return CLIPTokenizer(vocab=vocab, merges=list(ranks), model_max_length=77)


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: merge the best-ranked adjacent pair until none applies."""
    while len(pieces) > 1:
        pairs = [(ranks[p], i) for i, p in enumerate(zip(pieces, pieces[1:], strict=False)) if p in ranks]
        if not pairs:
            break
        _, i = min(pairs)
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def _set_vae_weights(vae: Any, channels: int) -> None:
    """Make ``vae`` encode ``M @ rgb`` averaged over 4×4 blocks and decode ``Mᵀ @ z`` upsampled.

    Each GroupNorm group holds four channels ``[x, -x, +A, -A]``: their mean is exactly zero and their
    variance is dominated by the constant ±A, so the norms before the output convolutions pass ``x``
    through unchanged (to 1e-5); a shift keeps the SiLU after them linear. Every resnet's second
    convolution is zero, which makes the resnet an identity; down/upsampling convolutions average and
    copy per channel.
    """
    import torch

    matrix = _colour_to_latent()
    groups = channels // 4
    scale = math.sqrt(_ANCHOR**2 / 2)  # the std of a group, so norm * scale restores x

    def spread(conv: torch.nn.Conv2d, weights: torch.Tensor) -> None:
        """Write a per-position 1×1 mixing ``weights`` [out, in] into the centre tap of ``conv``."""
        conv.weight.zero_()
        conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = weights

    def expand_in(conv: torch.nn.Conv2d, to_colour: torch.Tensor) -> None:
        """conv_in: inputs -> channels [c, -c, +A, -A] per colour c = to_colour @ inputs."""
        mix = torch.zeros(channels, conv.in_channels)
        bias = torch.zeros(channels)
        for g in range(min(groups, 3)):
            mix[4 * g], mix[4 * g + 1] = to_colour[g], -to_colour[g]
            bias[4 * g + 2], bias[4 * g + 3] = _ANCHOR, -_ANCHOR
        spread(conv, mix)
        conv.bias.copy_(bias)

    def norm_out(norm: torch.nn.GroupNorm) -> None:
        norm.weight.fill_(scale)
        norm.bias.fill_(_SHIFT)

    def identity_resnets(module: torch.nn.Module) -> None:
        for name, sub in module.named_modules():
            if name.endswith("conv2") and isinstance(sub, torch.nn.Conv2d):
                sub.weight.zero_()
                sub.bias.zero_()

    with torch.no_grad():
        encoder, decoder = vae.encoder, vae.decoder
        expand_in(encoder.conv_in, torch.eye(3))
        identity_resnets(encoder)
        for block in encoder.down_blocks:
            for down in block.downsamplers or []:
                down.conv.weight.zero_()
                for c in range(channels):
                    down.conv.weight[c, c, :2, :2] = 0.25  # the 2×2 block average (padding is right/bottom)
                down.conv.bias.zero_()
        norm_out(encoder.conv_norm_out)
        mean = torch.zeros(8, channels)
        for g in range(3):
            mean[:4, 4 * g] = matrix[:, g]
        spread(encoder.conv_out, mean)
        encoder.conv_out.bias.copy_(
            torch.cat([-_SHIFT * matrix.sum(dim=1), torch.full((4,), -30.0)])
        )  # logvar -30: std 3e-7
        for conv in (vae.quant_conv, vae.post_quant_conv):
            spread(conv, torch.eye(conv.in_channels))
            conv.bias.zero_()

        expand_in(decoder.conv_in, matrix.T)
        identity_resnets(decoder)
        for block in decoder.up_blocks:
            for up in block.upsamplers or []:
                spread(up.conv, torch.eye(channels))
                up.conv.bias.zero_()
        norm_out(decoder.conv_norm_out)
        pick = torch.zeros(3, channels)
        for g in range(3):
            pick[g, 4 * g] = 1.0
        spread(decoder.conv_out, pick)
        decoder.conv_out.bias.fill_(-_SHIFT)


def tiny_clip_config(tokenizer: Any, settings: dict[str, Any]) -> Any:
    """A ``CLIPTextConfig`` of ``settings`` over ``tokenizer``'s vocabulary and special tokens, with CLIP's
    77 positions; its projection as wide as its hidden states unless ``settings`` says otherwise."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **{
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": settings["hidden_size"],
            **settings,
        }
    )


def colour_vae(levels: int, channels: int) -> Any:
    """The hand-set 4-channel colour VAE (see _set_vae_weights), ``levels`` halvings, ``channels`` wide.

    Built from torch's current random state (the weights _set_vae_weights leaves are never used).
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[channels] * levels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=channels // 4,
        sample_size=64,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )
    _set_vae_weights(vae, channels)
    return vae


def _build(target: Path) -> None:
    from loraplug_diffusion.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _build_tokenizer()
    levels, channels = TINY_SD["vae_levels"], TINY_SD["vae_channels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SD["seed"])
        unet = UNet2DConditionModel(**TINY_SD["unet"])
        text_encoder = CLIPTextModel(tiny_clip_config(tokenizer, TINY_SD["text_encoder"]))
        vae = colour_vae(levels, channels)
    # SD 1.x's noise schedule.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(target, safe_serialization=True)


#: The presets ``model.pretrained`` may name (their names are options.PRESETS).
TINY_PRESETS = (
    Preset("tiny-sd", TINY_SD, _build, marker="model_index.json"),
    TINY_SDXL_PRESET,
)


def preset_dir(name: str, cache_dir: Path) -> Path:
    """The directory of preset ``name``, built on first use."""
    for preset in TINY_PRESETS:
        if preset.name == name:
            return preset.directory(cache_dir)
    raise KeyError(name)
