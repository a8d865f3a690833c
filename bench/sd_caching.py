"""What caching VAE latents and text-encoder outputs buys: steps/s, and peak memory.

Two loops over the same images, through loraplug-diffusion's own code (data kind, LoRA injection,
prepare_data, train_step) and the core's training loop:

* ``cached``: latents and caption encodings computed once before training (the default);
* ``uncached``: the VAE and the text encoder run in every step, as diffusers'
  ``train_text_to_image_lora.py`` does (``model.cache_latents = false``, ``cache_text_encoder_outputs = false``).

Two models:

* ``tiny``: the tiny-sd preset at 64 px on the bundled drawings, batch 8;
* ``sd15``: an SD-1.5-shaped model built from its configs with random weights (UNet 860M, VAE 84M,
  CLIP ViT-L text encoder 123M), 512 px, batch 1, LoCon on, gradient checkpointing — a few steps;
* ``sdxl``: an SDXL-shaped model built from stabilityai/stable-diffusion-xl-base-1.0's configs with
  random weights (UNet 2.6B, CLIP ViT-L 123M and OpenCLIP bigG 695M text encoders, VAE 84M), the frozen
  parts in bfloat16 (the VAE in float32, as training runs it), batch 1, LoCon on, gradient
  checkpointing — at a small resolution (``--resolution``, default 256 px) so it fits a CPU.

Each (model, variant) runs in a fresh process, so its peak memory is its own. Seconds per step are
the median over the measured steps; the first step (allocations, warm-up) is not measured. On a shared
machine whose load drifts, ``--paired`` also runs both variants on one model in one process, a step of
each in turn, so both see the same load (timing only).

    python bench/sd_caching.py tiny                      # about 2 minutes on 2 CPU cores
    python bench/sd_caching.py sd15 --steps 3 --paired   # about 40 minutes on 2 CPU cores; minutes on a GPU
    python bench/sd_caching.py sdxl --steps 2 --paired-only --resolution 128   # SDXL-shaped, small scale
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
from dataclasses import dataclass
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
    "sdxl": {
        "kind": "stable-diffusion-xl",
        "pretrained": "bench/sdxl-shaped-random",  # never downloaded: the components are built from configs
        "resolution": 256,
        "batch_size": 1,
        "adapter": {"r": 16, "alpha": 8, "conv": True, "conv_r": 8, "conv_alpha": 4},
        "gradient_checkpointing": True,
    },
}

#: Its text_encoder/ (CLIP ViT-L/14) and text_encoder_2/ (OpenCLIP bigG/14, with projection) configs.
SDXL_TEXT_ENCODERS: dict[str, dict[str, Any]] = {
    "text_encoder": {
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "hidden_act": "quick_gelu", "projection_dim": 768,
    },
    "text_encoder_2": {
        "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
        "num_hidden_layers": 32, "hidden_act": "gelu", "projection_dim": 1280,
    },
}  # fmt: skip
#: Its vae/config.json (SD's VAE architecture, retrained; scaling factor 0.13025).
SDXL_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}


def sdxl_components(dtype: str = "bfloat16") -> dict[str, Any]:
    """SDXL base's architecture with random weights (no download); the frozen parts built directly in
    ``dtype`` (a float32 SDXL UNet alone is 10 GiB), the VAE in float32."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loraplug_diffusion.presets import _build_tokenizer
    from loraplug_diffusion.testing import SDXL_UNET_CONFIG

    torch.manual_seed(0)
    tokenizer = _build_tokenizer()
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        encoders = {
            name: model(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **config))
            for (name, config), model in zip(
                SDXL_TEXT_ENCODERS.items(), (CLIPTextModel, CLIPTextModelWithProjection), strict=True
            )
        }
    finally:
        torch.set_default_dtype(default)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    for part in (unet, vae, *encoders.values()):
        part.requires_grad_(False)
        part.eval()
    return {
        "unet": unet,
        "vae": vae,
        **encoders,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "noise_scheduler": scheduler,
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
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    for part in (unet, vae, text_encoder):
        part.requires_grad_(False)
        part.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "noise_scheduler": scheduler,
    }


def images_for(shape: str, folder: Path, count: int) -> Path:
    """The bundled drawings at the model's resolution (nearest-neighbour upscaled, captions copied)."""
    from PIL import Image

    side = SETTINGS[shape]["resolution"]
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(SHAPES.glob("*.png"))[:count]:
        Image.open(source).convert("RGB").resize((side, side), Image.NEAREST).save(folder / source.name)
        (folder / source.with_suffix(".txt").name).write_text(source.with_suffix(".txt").read_text())
    return folder


@dataclass
class Setup:
    """One model, and the same images prepared once per variant."""

    shape: str
    host: Any
    accelerator: Any
    model: Any
    recipes: dict[str, Any]
    contexts: dict[str, Any]
    prepared: dict[str, Any]
    cache_seconds: dict[str, float]
    model_seconds: float


def variant_recipes(
    host: Any, work: Path, shape: str, variants: list[str], images: Path, steps: int, **model: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The accelerator, and each variant's recipe and RunContext: ``cached`` caches latents and text
    encodings, ``uncached`` encodes in every step; ``model`` adds to or overrides the model table."""
    from rich.console import Console

    from loraplug.context import RunContext
    from loraplug.pipeline import make_accelerator
    from loraplug.recipe import load_recipe
    from loraplug.testing import write_recipe

    settings = SETTINGS[shape]
    recipes, contexts = {}, {}
    for variant in variants:
        cached = variant == "cached"
        path = write_recipe(
            work / f"{variant}.toml",
            {
                "run": {"name": f"{shape}-{variant}", "output_dir": str(work / "runs"), "seed": 0},
                "data": {"kind": "imagefolder", "path": str(images)},
                "model": {
                    "kind": settings.get("kind", "stable-diffusion"),
                    "pretrained": settings["pretrained"],
                    "resolution": settings["resolution"],
                    "cache_latents": cached,
                    "cache_text_encoder_outputs": cached,
                    "gradient_checkpointing": settings["gradient_checkpointing"],
                    **model,
                },
                "adapter": {"kind": "lora", **settings["adapter"]},
                "train": {
                    "max_steps": steps,
                    "batch_size": settings["batch_size"],
                    "lr": 1e-4,
                    "log_every_n_steps": 1000,
                },
            },
        )
        recipes[variant] = load_recipe(path, host)
    accelerator = make_accelerator(recipes[variants[0]], Console(quiet=True))
    for variant in variants:
        contexts[variant] = RunContext(
            recipe=recipes[variant], run_dir=work / "runs", cache_dir=work / "cache", seed=0,
            device=accelerator.device, info=lambda m: None, warn=lambda m: None,
        )  # fmt: skip
    return accelerator, recipes, contexts


def prepare_variants(
    host: Any, model: Any, kind: str, recipes: dict[str, Any], contexts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Each variant's images loaded and prepared for ``model`` (cached or not), and the seconds preparing took."""
    prepared, cache_seconds = {}, {}
    for variant, recipe in recipes.items():
        ctx = contexts[variant]
        data = host.call_stage("data", "imagefolder", kind, options=recipe.data.options, ctx=ctx)
        started = time.monotonic()
        prepared[variant] = host.call_model_hook(
            "loraplug_prepare_data",
            kind,
            model=model,
            options=recipe.model.options,
            data=data,
            ctx=ctx,
        )
        cache_seconds[variant] = time.monotonic() - started
    return prepared, cache_seconds


def setup(shape: str, variants: list[str], steps: int) -> Setup:
    from accelerate.utils import set_seed

    from loraplug import ModelBundle
    from loraplug.pipeline import build_stages
    from loraplug.plugins import PluginHost
    from loraplug_diffusion.model import DiffusionModule

    settings = SETTINGS[shape]
    kind = settings.get("kind", "stable-diffusion")
    work = Path(tempfile.mkdtemp(prefix=f"sd-bench-{shape}-"))
    images = images_for(shape, work / "images", 32 if shape == "tiny" else max(4, steps + 1))
    host = PluginHost.load()
    accelerator, recipes, contexts = variant_recipes(host, work, shape, variants, images, steps)
    first = variants[0]
    set_seed(0)
    started = time.monotonic()
    if shape == "tiny":
        model = build_stages(host, recipes[first], contexts[first])
    elif shape == "sdxl":
        from loraplug_diffusion.sdxl_model import SdxlModule

        parts = sdxl_components()
        parts["unet"].enable_gradient_checkpointing()
        module = SdxlModule(parts["unet"])
        module.frozen_text_encoders = (parts["text_encoder"], parts["text_encoder_2"])
        base = ModelBundle(kind=kind, module=module, components=parts, base=settings["pretrained"])
        set_seed(0)
        model = host.call_stage(
            "adapter", "lora", kind, options=recipes[first].adapter.options, model=base, ctx=contexts[first]
        )
    else:
        parts = sd15_components(49408)
        if settings["gradient_checkpointing"]:
            parts["unet"].enable_gradient_checkpointing()
        base = ModelBundle(
            kind="stable-diffusion",
            module=DiffusionModule(parts["unet"]),
            components=parts,
            base=settings["pretrained"],
        )
        set_seed(0)
        model = host.call_stage(
            "adapter",
            "lora",
            "stable-diffusion",
            options=recipes[first].adapter.options,
            model=base,
            ctx=contexts[first],
        )
    model_seconds = time.monotonic() - started
    prepared, cache_seconds = prepare_variants(host, model, kind, recipes, contexts)
    return Setup(shape, host, accelerator, model, recipes, contexts, prepared, cache_seconds, model_seconds)


def step_times(bench: Setup, variant: str, steps: int) -> list[float]:
    """Seconds of each of ``steps`` optimizer steps of the core's loop, the first included."""
    from rich.console import Console

    from loraplug.training.loop import train
    from loraplug.training.progress import ProgressDisplay
    from loraplug.training.sinks import Sinks

    recipe = bench.recipes[variant]
    recipe.train.max_steps = steps
    stamps = [time.monotonic()]
    train(
        accelerator=bench.accelerator,
        step_fn=bench.host.bound_model_hook(
            "loraplug_train_step", SETTINGS[bench.shape].get("kind", "stable-diffusion")
        ),
        model=bench.model,
        prepared=bench.prepared[variant],
        recipe=recipe,
        ctx=bench.contexts[variant],
        sinks=Sinks([]),
        evaluate=lambda module: {},  # no validation set: nothing to evaluate
        display=lambda total, start: ProgressDisplay(Console(quiet=True), total, enabled=False),
        on_step_end=lambda step: stamps.append(time.monotonic()),
    )
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def _result(shape: str, variant: str, bench: Setup, times: list[float]) -> dict[str, Any]:
    import torch

    settings = SETTINGS[shape]
    per_step = statistics.median(times)
    return {
        "model": shape,
        "variant": variant,
        "measured_steps": len(times),
        "batch_size": settings["batch_size"],
        "resolution": settings["resolution"],
        "seconds_per_step": per_step,
        "steps_per_second": 1 / per_step,
        "images_per_second": settings["batch_size"] / per_step,
        "cache_build_seconds": bench.cache_seconds[variant] if variant == "cached" else 0.0,
        "model_build_seconds": bench.model_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB -> GiB (Linux)
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "device": str(bench.accelerator.device),
    }


def run_one(shape: str, variant: str, steps: int, resolution: int | None = None) -> dict[str, Any]:
    """One variant alone in this process (so the peak memory is its own); the first step is warm-up."""
    SETTINGS[shape]["resolution"] = resolution or SETTINGS[shape]["resolution"]
    bench = setup(shape, [variant], steps + 1)
    return _result(shape, variant, bench, step_times(bench, variant, steps + 1)[1:])


def run_paired(shape: str, rounds: int, resolution: int | None = None) -> list[dict[str, Any]]:
    """Both variants on one model, one step each in turn, so a machine whose load drifts slows both alike.

    Each turn is a whole one-step run of the core's loop (optimizer set-up included, which is negligible
    next to an SD-1.5 step). Peak memory: the process's peak after the cached variant's warm-up step
    (model, cache and one cached step), then after the uncached one's (which adds the VAE and text
    encoders running in the step) — ``peak_rss_gib`` of each variant, reported as ``paired_peak``.
    """
    SETTINGS[shape]["resolution"] = resolution or SETTINGS[shape]["resolution"]
    variants = ["cached", "uncached"]
    bench = setup(shape, variants, 1)
    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, float] = {}
    for variant in variants:
        step_times(bench, variant, 1)  # warm-up
        peaks[variant] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    for _ in range(rounds):
        for variant in variants:
            times[variant] += step_times(bench, variant, 1)
    results = [_result(shape, v, bench, times[v]) for v in variants]
    for result in results:
        result["peak_rss_gib"] = None
        result["paired_peak_rss_gib"] = peaks[result["variant"]]
        result["paired"] = True
    return results


def environment() -> dict[str, str]:
    import torch

    versions = {
        name: metadata.version(name) for name in ("torch", "diffusers", "transformers", "peft", "accelerate")
    }
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "python": platform.python_version(),
        **versions,
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "torch_threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    by = {(r["model"], r["variant"], bool(r.get("paired"))): r for r in results}
    lines = [
        "| model | variant | s/step | images/s | one-time cache build | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} ({r['resolution']} px, batch {r['batch_size']}) | {r['variant']}{' (paired)' if r.get('paired') else ''} "
            f"| {r['seconds_per_step']:.3f} "
            f"| {r['images_per_second']:.2f} | {r['cache_build_seconds']:.1f} s | "
            + (
                f"{r['peak_rss_gib']:.2f} GiB |"
                if r["peak_rss_gib"] is not None
                else f"{r['paired_peak_rss_gib']:.2f} GiB (paired: process peak so far) |"
                if r.get("paired_peak_rss_gib")
                else "— (paired run) |"
            )
        )
    for shape, paired in sorted({(r["model"], bool(r.get("paired"))) for r in results}):
        if (shape, "cached", paired) in by and (shape, "uncached", paired) in by:
            cached, uncached = by[(shape, "cached", paired)], by[(shape, "uncached", paired)]
            lines.append("")
            memory = (
                f"; peak RSS {cached['peak_rss_gib'] / uncached['peak_rss_gib']:.2f}× of uncached"
                if cached["peak_rss_gib"] and uncached["peak_rss_gib"]
                else ""
            )
            how = " (paired: steps alternated in one process)" if paired else ""
            lines.append(
                f"{shape}{how}: caching gives {uncached['seconds_per_step'] / cached['seconds_per_step']:.2f}× the steps/s{memory}"
            )
    return "\n".join(lines)


def _in_fresh_process(call: str) -> Any:
    code = f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import sd_caching as b; print('RESULT ' + json.dumps(b.{call}))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{call} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", choices=list(SETTINGS))
    parser.add_argument(
        "--steps", type=int, default=None, help="Measured steps per variant (after one warm-up step)."
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="Also alternate both variants' steps in one process (timing only).",
    )
    parser.add_argument(
        "--paired-only",
        action="store_true",
        help="Only the paired run: one model build instead of three (the SDXL-shaped model on a CPU).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results as JSON here.")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Train at this side length instead of the model's default.",
    )
    args = parser.parse_args()
    steps = args.steps or (40 if args.model == "tiny" else 3)
    results = []
    for variant in () if args.paired_only else ("cached", "uncached"):
        results.append(_in_fresh_process(f"run_one({args.model!r}, {variant!r}, {steps}, {args.resolution})"))
        print(f"{args.model}/{variant}: {results[-1]['seconds_per_step']:.3f} s/step", flush=True)
    if args.paired or args.paired_only:
        paired = _in_fresh_process(f"run_paired({args.model!r}, {steps}, {args.resolution})")
        results += paired
        print(
            "paired: " + ", ".join(f"{r['variant']} {r['seconds_per_step']:.3f} s/step" for r in paired),
            flush=True,
        )
    report = {"environment": environment(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["environment"], indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
