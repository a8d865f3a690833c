"""What caching VAE latents and CLIP/T5 outputs buys for Flux: seconds per step, cached against uncached.

The Flux-shaped measurement of bench/sd_caching.py (whose loop, timing, report and environment it uses):
loraplug-diffusion's own code (imagefolder, the Flux LoRA, prepare_data, train_step) under the core's
training loop, with

* ``cached``: latents, T5 states and CLIP pooled outputs computed once before training (the default);
* ``uncached``: the VAE, CLIP and T5 run in every step (``cache_latents = false``,
  ``cache_text_encoder_outputs = false``).

The model is FLUX.1-dev's architecture with random weights, built from its configs (no download): the
transformer at FLUX.1-dev's widths (3,072, 24 heads, T5 width 4,096, pooled 768, guidance embedding),
T5 v1.1 XXL's widths, CLIP ViT-L and the 16-channel VAE. A full-depth transformer is 22 GiB in bf16 —
more than a 2-core, 23 GiB test machine holds — so ``--depth`` keeps the first N double and 2N single
blocks (FLUX.1-dev: 19 and 38) and the first 2N T5 layers (24): step time per block scales linearly, so
the transformer's share extrapolates by 57 / 3N. Frozen parts in bfloat16 (the VAE in float32), LoRA r 16
on attention and MLPs, gradient checkpointing, batch 1, a small resolution (``--resolution``). Both
variants run in one process, a step of each in turn (sd_caching's paired mode), so both see the same load.

    python bench/flux_caching.py --steps 2 --resolution 128 --depth 1   # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_caching as base  # noqa: E402 — the loop, timing and report this shares

#: black-forest-labs/FLUX.1-dev transformer/config.json.
FLUX_DEV: dict[str, Any] = {
    "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
    "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
#: Its text_encoder_2/ (T5 v1.1 XXL encoder), text_encoder/ (CLIP ViT-L) and vae/ configs.
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_layers": 24, "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
}  # fmt: skip
CLIP_L: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "hidden_act": "quick_gelu", "projection_dim": 768, "max_position_embeddings": 77,
}  # fmt: skip
FLUX_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 16,
    "use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.1159, "scaling_factor": 0.3611,
    "sample_size": 1024,
}  # fmt: skip
SCHEDULER: dict[str, Any] = {
    "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}  # fmt: skip

base.SETTINGS["flux"] = {
    "kind": "flux",
    "pretrained": "bench/flux-dev-shaped-random",  # never downloaded: the components are built from configs
    "resolution": 128,
    "batch_size": 1,
    "adapter": {"r": 16, "alpha": 16, "targets": ["attention", "mlp"]},
    "gradient_checkpointing": True,
}


def flux_components(depth: int, tokens: int, dtype: str = "bfloat16") -> dict[str, Any]:
    """FLUX.1-dev's architecture with random weights, ``depth`` double / 2·``depth`` single blocks."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from loraplug_diffusion.flux_presets import build_t5_tokenizer
    from loraplug_diffusion.presets import _build_tokenizer

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        transformer = FluxTransformer2DModel(
            **{**FLUX_DEV, "num_layers": depth, "num_single_layers": 2 * depth}
        )
        t5 = T5EncoderModel(T5Config(**{**T5_XXL, "num_layers": 2 * depth}))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **CLIP_L))
    finally:
        torch.set_default_dtype(default)
    vae = AutoencoderKL(**FLUX_VAE)
    for part in (transformer, t5, clip, vae):
        part.requires_grad_(False)
        part.eval()
    t5_tokenizer = build_t5_tokenizer()
    t5_tokenizer.model_max_length = tokens
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": clip,
        "text_encoder_2": t5,
        "tokenizer": _build_tokenizer(),
        "tokenizer_2": t5_tokenizer,
        "noise_scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER),
    }


def setup(depth: int, tokens: int) -> base.Setup:
    """sd_caching.setup's Flux counterpart: one Flux-shaped model, the images prepared once per variant."""
    import torch
    from accelerate.utils import set_seed

    from loraplug import ModelBundle
    from loraplug.plugins import PluginHost
    from loraplug_diffusion.flux_model import FluxModule

    settings = base.SETTINGS["flux"]
    work = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    images = base.images_for("flux", work / "images", 4)
    host = PluginHost.load()
    accelerator, recipes, contexts = base.variant_recipes(
        host,
        work,
        "flux",
        ["cached", "uncached"],
        images,
        1,
        pretrained="tiny-flux",  # the recipe's model is never built: flux_components is
        dtype="bfloat16",
        max_sequence_length=tokens,
    )
    set_seed(0)
    started = time.monotonic()
    parts = flux_components(depth, tokens)
    parts["transformer"].enable_gradient_checkpointing()
    bundle = ModelBundle(
        kind="flux",
        module=FluxModule(parts["transformer"], torch.bfloat16),
        components=parts,
        base=settings["pretrained"],
    )
    model = host.call_stage(
        "adapter",
        "lora",
        "flux",
        options=recipes["cached"].adapter.options,
        model=bundle,
        ctx=contexts["cached"],
    )
    model_seconds = time.monotonic() - started
    prepared, cache_seconds = base.prepare_variants(host, model, "flux", recipes, contexts)
    return base.Setup(
        "flux", host, accelerator, model, recipes, contexts, prepared, cache_seconds, model_seconds
    )


def run_paired(rounds: int, resolution: int, depth: int, tokens: int) -> list[dict[str, Any]]:
    """Both variants, one step each in turn after a warm-up step each (sd_caching.run_paired's scheme)."""
    base.SETTINGS["flux"]["resolution"] = resolution
    bench = setup(depth, tokens)
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    for variant in times:
        base.step_times(bench, variant, 1)  # warm-up
    for _ in range(rounds):
        for variant in times:
            times[variant] += base.step_times(bench, variant, 1)
    results = [base._result("flux", v, bench, times[v]) for v in times]
    for result in results:
        result.update(paired=True, depth=depth, t5_tokens=tokens, peak_rss_gib=None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=2, help="Measured steps per variant (after one warm-up)."
    )
    parser.add_argument("--resolution", type=int, default=128, help="Training side length in pixels.")
    parser.add_argument(
        "--depth", type=int, default=1, help="Double blocks kept (single blocks: twice as many)."
    )
    parser.add_argument("--tokens", type=int, default=128, help="T5 tokens per caption (FLUX.1-dev: 512).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    results = run_paired(args.steps, args.resolution, args.depth, args.tokens)
    report = {"environment": base.environment(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["environment"], indent=2))
    print(base.markdown(results))


if __name__ == "__main__":
    main()
