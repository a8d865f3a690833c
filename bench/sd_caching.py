"""What caching VAE latents and text-encoder outputs buys: steps/s, and peak memory.

Two loops over the same images, through loraplug-diffusion's own code (data kind, LoRA injection,
prepare_data, train_step) and the core's training loop:

* ``cached``: latents and caption encodings computed once before training (the default);
* ``uncached``: the VAE and the text encoder run in every step, as diffusers'
  ``train_text_to_image_lora.py`` does (``model.cache_latents = false``, ``cache_text_encoder_outputs = false``).

Two models:

* ``tiny``: the tiny-sd preset at 64 px on the bundled drawings, batch 8;
* ``sd15``: an SD-1.5-shaped model built from its configs with random weights (UNet 860M, VAE 84M,
  CLIP ViT-L text encoder 123M), 512 px, batch 1, LoCon on, gradient checkpointing — a few steps.

Each (model, variant) runs in a fresh process, so its peak memory is its own. Seconds per step are
the median over the measured steps; the first step (allocations, warm-up) is not measured.

    python bench/sd_caching.py tiny            # about 3 minutes on 2 CPU cores
    python bench/sd_caching.py sd15 --steps 3  # about 15 minutes on 2 CPU cores; a GPU is much faster
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "recipes" / "data" / "shapes"

SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "pretrained": "tiny-sd",
        "resolution": 64,
        "batch_size": 8,
        "adapter": {"r": 16, "alpha": 16, "conv": True},
        "gradient_checkpointing": False,
    },
    "sd15": {
        "pretrained": "bench/sd15-shaped-random",  # never downloaded: the components are built from configs
        "resolution": 512,
        "batch_size": 1,
        "adapter": {"r": 16, "alpha": 8, "conv": True, "conv_r": 8, "conv_alpha": 4},
        "gradient_checkpointing": True,
    },
}


def sd15_components(tokenizer_size: int) -> dict[str, Any]:
    """Stable Diffusion 1.5's architecture with random weights (no download)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loraplug_diffusion.presets import _build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    tokenizer = _build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(tokenizer_size, len(tokenizer)),
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    for part in (unet, vae, text_encoder):
        part.requires_grad_(False)
        part.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "noise_scheduler": scheduler}


def images_for(shape: str, folder: Path, count: int) -> Path:
    """The bundled drawings at the model's resolution (nearest-neighbour upscaled, captions copied)."""
    from PIL import Image

    side = SETTINGS[shape]["resolution"]
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(SHAPES.glob("*.png"))[:count]:
        Image.open(source).convert("RGB").resize((side, side), Image.NEAREST).save(folder / source.name)
        (folder / source.with_suffix(".txt").name).write_text(source.with_suffix(".txt").read_text())
    return folder


def run_one(shape: str, variant: str, steps: int) -> dict[str, Any]:
    import torch
    from accelerate.utils import set_seed
    from rich.console import Console

    from loraplug import ModelBundle
    from loraplug.context import RunContext
    from loraplug.pipeline import build_stages, make_accelerator
    from loraplug.plugins import PluginHost
    from loraplug.recipe import load_recipe
    from loraplug.testing import write_recipe
    from loraplug.training.loop import train
    from loraplug.training.progress import ProgressDisplay
    from loraplug.training.sinks import Sinks
    from loraplug_diffusion.model import DiffusionModule

    settings = SETTINGS[shape]
    console = Console(quiet=True)
    work = Path(tempfile.mkdtemp(prefix=f"sd-bench-{shape}-"))
    count = 32 if shape == "tiny" else max(4, steps + 1)
    cached = variant == "cached"
    recipe_path = write_recipe(
        work / "bench.toml",
        {
            "run": {"name": f"{shape}-{variant}", "output_dir": str(work / "runs"), "seed": 0},
            "data": {"kind": "imagefolder", "path": str(images_for(shape, work / "images", count))},
            "model": {
                "kind": "stable-diffusion",
                "pretrained": settings["pretrained"],
                "resolution": settings["resolution"],
                "cache_latents": cached,
                "cache_text_encoder_outputs": cached,
                "gradient_checkpointing": settings["gradient_checkpointing"],
            },
            "adapter": {"kind": "lora", **settings["adapter"]},
            "train": {"max_steps": steps + 1, "batch_size": settings["batch_size"], "lr": 1e-4, "log_every_n_steps": 1000},
        },
    )
    host = PluginHost.load()
    recipe = load_recipe(recipe_path, host)
    accelerator = make_accelerator(recipe, console)
    ctx = RunContext(recipe=recipe, run_dir=work / "runs", cache_dir=work / "cache", seed=0, device=accelerator.device, info=lambda m: None, warn=lambda m: None)
    set_seed(0)
    data = host.call_stage("data", "imagefolder", "stable-diffusion", options=recipe.data.options, ctx=ctx)
    started = time.monotonic()
    if shape == "tiny":
        model = build_stages(host, recipe, ctx)
    else:
        parts = sd15_components(49408)
        if settings["gradient_checkpointing"]:
            parts["unet"].enable_gradient_checkpointing()
        base = ModelBundle(kind="stable-diffusion", module=DiffusionModule(parts["unet"]), components=parts, base=settings["pretrained"])
        set_seed(0)
        model = host.call_stage("adapter", "lora", "stable-diffusion", options=recipe.adapter.options, model=base, ctx=ctx)
    load_seconds = time.monotonic() - started
    started = time.monotonic()
    prepared = host.call_model_hook("loraplug_prepare_data", "stable-diffusion", model=model, options=recipe.model.options, data=data, ctx=ctx)
    cache_seconds = time.monotonic() - started
    stamps: list[float] = []
    train(
        accelerator=accelerator,
        step_fn=host.bound_model_hook("loraplug_train_step", "stable-diffusion"),
        model=model,
        prepared=prepared,
        recipe=recipe,
        ctx=ctx,
        sinks=Sinks([]),
        display=lambda total: ProgressDisplay(console, total, enabled=False),
        on_step_end=lambda step: stamps.append(time.monotonic()),
    )
    per_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))  # the first step is warm-up
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "model": shape,
        "variant": variant,
        "measured_steps": len(stamps) - 1,
        "batch_size": settings["batch_size"],
        "resolution": settings["resolution"],
        "seconds_per_step": per_step,
        "steps_per_second": 1 / per_step,
        "images_per_second": settings["batch_size"] / per_step,
        "cache_build_seconds": cache_seconds if cached else 0.0,
        "model_build_seconds": load_seconds,
        "peak_rss_gib": peak,
        "peak_gpu_gib": gpu_peak,
        "device": str(accelerator.device),
    }


def environment() -> dict[str, str]:
    import torch

    versions = {name: metadata.version(name) for name in ("torch", "diffusers", "transformers", "peft", "accelerate")}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return {
        "python": platform.python_version(),
        **versions,
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "torch_threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    by = {(r["model"], r["variant"]): r for r in results}
    lines = [
        "| model | variant | s/step | images/s | one-time cache build | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} ({r['resolution']} px, batch {r['batch_size']}) | {r['variant']} | {r['seconds_per_step']:.3f} "
            f"| {r['images_per_second']:.2f} | {r['cache_build_seconds']:.1f} s | {r['peak_rss_gib']:.2f} GiB |"
        )
    for shape in sorted({r["model"] for r in results}):
        if (shape, "cached") in by and (shape, "uncached") in by:
            cached, uncached = by[(shape, "cached")], by[(shape, "uncached")]
            lines.append("")
            lines.append(
                f"{shape}: caching is {uncached['seconds_per_step'] / cached['seconds_per_step']:.2f}× the steps/s; "
                f"peak RSS {cached['peak_rss_gib'] / uncached['peak_rss_gib']:.2f}× of uncached"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=None, help="Measured steps (after one warm-up step).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    steps = args.steps or (40 if args.model == "tiny" else 3)
    results = []
    for variant in ("cached", "uncached"):
        code = f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import sd_caching as b; print('RESULT ' + json.dumps(b.run_one({args.model!r}, {variant!r}, {steps})))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{args.model}/{variant} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(f"{args.model}/{variant}: {results[-1]['seconds_per_step']:.3f} s/step", flush=True)
    report = {"environment": environment(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["environment"], indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
