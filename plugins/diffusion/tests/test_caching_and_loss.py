"""Caching changes nothing but speed; the loss options and augmentations run and say what they turn off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraplug.testing import run_cli
from loraplug_diffusion.testing import draw_images, tiny_sd_recipe


def _losses(run_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"], [
        r["val_loss"] for r in rows if r["split"] == "eval"
    ]


def test_cached_and_uncached_training_see_the_same_numbers(tmp_path: Path) -> None:
    """Latents and text encodings from the cache (memory or disk) equal those computed every step."""
    runs = {}
    settings = {
        "memory": {},
        "disk": {"cache_to_disk": True},
        "disk again": {"cache_to_disk": True},
        "off": {"cache_latents": False, "cache_text_encoder_outputs": False},
    }
    for name, model in settings.items():
        recipe = tiny_sd_recipe(
            tmp_path,
            run={"name": name.replace(" ", "-")},
            model={"flip": True, "caption_dropout": 0.5, **model},
            eval={"sample_prompts": []},
        )
        result = run_cli("run", recipe)
        assert result.exit_code == 0, result.output
        runs[name] = tmp_path / "runs" / name.replace(" ", "-")
    summaries = {n: json.loads((d / "run.json").read_text())["data"] for n, d in runs.items()}
    captions = {p.read_text().strip() for p in (tmp_path / "images").glob("*.txt")}
    assert summaries["memory"]["latents cached"] == 8
    assert summaries["memory"]["captions cached"] == len(captions) + 1  # and the empty caption, for dropout
    assert summaries["disk"]["latents reused from disk"] == 0
    assert summaries["disk again"]["latents reused from disk"] == 8
    assert "latents cached" not in summaries["off"] and "captions cached" not in summaries["off"]

    train, val = _losses(runs["memory"])
    assert len(train) == 2 and len(val) == 2
    for name in ("disk", "disk again", "off"):
        other_train, other_val = _losses(runs[name])
        assert other_train == pytest.approx(train, rel=1e-4), name
        assert other_val == pytest.approx(val, rel=1e-4), name


def test_loss_options_buckets_and_random_augmentations_train(tmp_path: Path) -> None:
    images = tmp_path / "images"
    draw_images(images, 4, size=(64, 32), seed=1)
    for path in draw_images(tmp_path / "tall", 4, size=(32, 64), seed=2):
        path.rename(images / f"tall-{path.name}")
        path.with_suffix(".txt").rename(images / f"tall-{path.stem}.txt")
    recipe = tiny_sd_recipe(
        tmp_path,
        model={
            "prediction_type": "v_prediction",
            "min_snr_gamma": 5.0,
            "noise_offset": 0.1,
            "buckets": True,
            "bucket_step": 16,
            "crop": "random",
            "shuffle_tags": True,
            "keep_tokens": 1,
            "gradient_checkpointing": True,
        },
        adapter={"conv": True},
        eval={"sample_prompts": []},
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert 'crop = "random"' in result.output and "shuffle_tags" in result.output  # why the caches are off
    status = json.loads((tmp_path / "runs" / "tiny-sd" / "run.json").read_text())
    assert (
        status["data"]["buckets"] == 2 and "latents cached" in status["data"]
    )  # validation images still cached
    assert all(isinstance(loss, float) for _, loss in status["val_losses"])
    # Every injected layer trained — gradient checkpointing included (a reentrant checkpoint would leave
    # the LoRA inside checkpointed blocks without gradients, and its up matrices at zero).
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "runs" / "tiny-sd" / "adapter" / "adapter.safetensors"))
    ups = {name: tensor for name, tensor in weights.items() if ".lora_B." in name}
    assert any("resnets.0.conv1" in name for name in ups)
    assert all(tensor.abs().sum() > 0 for tensor in ups.values()), [
        n for n, t in ups.items() if t.abs().sum() == 0
    ]


def test_min_snr_weights_follow_the_formula() -> None:
    from diffusers import DDPMScheduler

    from loraplug_diffusion.compute import min_snr_weights

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    steps = torch.tensor([10, 300, 900])
    alphas = scheduler.alphas_cumprod[steps]
    snr = alphas / (1 - alphas)
    assert torch.allclose(min_snr_weights(scheduler, steps, 5.0), torch.clamp(snr, max=5.0) / snr)
    scheduler.register_to_config(prediction_type="v_prediction")
    assert torch.allclose(min_snr_weights(scheduler, steps, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))
