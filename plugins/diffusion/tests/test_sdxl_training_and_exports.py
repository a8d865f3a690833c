"""A tiny-sdxl run end to end — LoRA, LoCon and both text encoders' LoRA — and its exports loaded by diffusers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from loraplug.testing import run_cli
from loraplug_diffusion.kohya import read_metadata
from loraplug_diffusion.testing import sd_pixels, tiny_sd_recipe

SEEDS = [11, 12]
PROMPT = "a teal square, navy background"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run with every kind of LoRA layer and every export; the tests below read it."""
    tmp = tmp_path_factory.mktemp("sdxl-run")
    recipe = tiny_sd_recipe(
        tmp,
        run={"name": "tiny-sdxl"},
        model={
            "kind": "stable-diffusion-xl",
            "pretrained": "tiny-sdxl",
            "resolution": 32,
            "flip": True,
            "sample_steps": 2,
            "sample_images": 2,
            "sample_guidance_scale": 1.0,
        },
        adapter={"conv": True, "conv_r": 2, "conv_alpha": 1.0, "text_encoder": True, "text_encoder_lr": 5e-3},
        train={"max_steps": 4},
        export=[{"kind": "diffusers"}, {"kind": "kohya"}, {"kind": "merged"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny-sdxl"


def _draw(pipeline: Any) -> np.ndarray:
    return sd_pixels(pipeline, PROMPT, SEEDS)


def _base_pipeline(path: Path | None = None) -> Any:
    from diffusers import StableDiffusionXLPipeline

    from loraplug_diffusion.presets import preset_dir

    source = path or preset_dir("tiny-sdxl", Path(os.environ["LORAPLUG_CACHE"]))
    pipeline = StableDiffusionXLPipeline.from_pretrained(source, add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_tiny_sdxl_learns_and_writes_checked_exports_with_kohya_sdxl_names(trained: Path) -> None:
    status = json.loads((trained / "run.json").read_text())
    assert status["status"] == "finished" and all(e["ok"] for e in status["exports"])
    losses = [loss for _, loss in status["val_losses"]]
    assert len(losses) == 2 and losses[-1] < losses[0], losses
    for step in (0, 4):
        listed = json.loads((trained / "samples" / f"step-{step:06d}.json").read_text())
        assert (trained / listed[0]["image"]).is_file()
    for name in ("diffusers", "kohya", "merged"):
        manifest = json.loads((trained / "exports" / name / "export.json").read_text())
        assert manifest["figures"]["max_abs_diff_vs_trained"] < 1e-4, manifest

    kohya = trained / "exports" / "kohya" / "tiny-sdxl.safetensors"
    with safe_open(str(kohya), framework="pt") as handle:
        stems = {key.split(".")[0] for key in handle.keys()}  # noqa: SIM118 — safe_open has no __iter__
    assert {s.split("_text_model")[0] for s in stems if s.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in stems
    assert "lora_unet_output_blocks_2_2_conv" in stems  # LoCon on the upsampler, SGM slot .2
    assert not [s for s in stems if "down_blocks" in s or "up_blocks" in s or "mid_block" in s]
    metadata = read_metadata(kohya)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_v2"] == "False"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    diffusers_file = trained / "exports" / "diffusers" / "pytorch_lora_weights.safetensors"
    with safe_open(str(diffusers_file), framework="pt") as handle:
        prefixes = {key.split(".")[0] for key in handle.keys()}  # noqa: SIM118
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}


def test_every_export_draws_what_the_trained_model_draws(trained: Path) -> None:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug_diffusion.sample import pipeline_of

    _, _, model = load_run(trained, PluginHost.load(), Console(quiet=True))
    model.module.eval()
    expected = _draw(pipeline_of(model))
    assert np.abs(expected - _draw(_base_pipeline())).mean() > 1.0, "the LoRA should change the images"

    for export, weight_name in (("diffusers", None), ("kohya", "tiny-sdxl.safetensors")):
        pipeline = _base_pipeline()
        pipeline.load_lora_weights(str(trained / "exports" / export), weight_name=weight_name)
        assert np.abs(_draw(pipeline) - expected).max() <= 2, export
    merged = _base_pipeline(trained / "exports" / "merged")
    assert np.abs(_draw(merged) - expected).max() <= 2, "merged"
