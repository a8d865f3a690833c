"""A tiny-sd run end to end — LoRA, LoCon and text-encoder LoRA — and its exports loaded by diffusers itself."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loraplug.testing import run_cli
from loraplug_diffusion.kohya import read_metadata
from loraplug_diffusion.testing import sd_pixels, tiny_sd_recipe

SEEDS = [11, 12]
PROMPT = "a teal square, navy background"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run with every kind of LoRA layer and every export; the tests below read it."""
    tmp = tmp_path_factory.mktemp("sd-run")
    recipe = tiny_sd_recipe(
        tmp,
        adapter={"conv": True, "conv_r": 2, "conv_alpha": 1.0, "text_encoder": True, "text_encoder_lr": 5e-3},
        train={"max_steps": 3},
        export=[
            {"kind": "diffusers"},
            {"kind": "kohya", "trigger_phrase": "teal square"},
            {"kind": "merged"},
        ],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    (tmp / "output.txt").write_text(result.output)
    return tmp / "runs" / "tiny-sd"


def _draw(pipeline: Any, seeds: list[int] = SEEDS) -> np.ndarray:
    return sd_pixels(pipeline, PROMPT, seeds)


def _trained_pipeline(run_dir: Path) -> Any:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug_diffusion.sample import pipeline_of

    _, _, model = load_run(run_dir, PluginHost.load(), Console(quiet=True))
    model.module.eval()
    return pipeline_of(model)


def _base_pipeline(path: Path | None = None) -> Any:
    import os

    from diffusers import StableDiffusionPipeline

    from loraplug_diffusion.presets import preset_dir

    source = path or preset_dir("tiny-sd", Path(os.environ["LORAPLUG_CACHE"]))
    pipeline = StableDiffusionPipeline.from_pretrained(
        source, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_run_writes_adapter_sample_grids_and_checked_exports(trained: Path) -> None:
    status = json.loads((trained / "run.json").read_text())
    assert status["status"] == "finished" and all(e["ok"] for e in status["exports"])
    assert status["data"]["latents cached"] == 8
    assert (
        "captions cached" not in status["data"]
    )  # the text encoder trains, so its outputs change every step
    for step in (0, 3):
        listed = json.loads((trained / "samples" / f"step-{step:06d}.json").read_text())
        grid = trained / listed[0]["image"]
        assert listed[0]["prompt"] == PROMPT and grid.is_file()
        from PIL import Image

        assert Image.open(grid).size == (32 * 2, 32)  # sample_images side by side
    assert any((trained / "tb").iterdir())
    for name in ("diffusers", "kohya", "merged"):
        manifest = json.loads((trained / "exports" / name / "export.json").read_text())
        assert manifest["figures"]["max_abs_diff_vs_trained"] < 1e-4, manifest


def test_throughput_is_shown_in_images_per_second(trained: Path) -> None:
    output = (trained.parents[1] / "output.txt").read_text()
    assert re.search(r"done 3 steps in [\d.]+ s \([\d.,]+ images/s\)", output), output
    assert "tok/s" not in output and "tokens/s" not in output


def test_diffusers_and_kohya_exports_draw_what_the_trained_model_draws(trained: Path) -> None:
    expected = _draw(_trained_pipeline(trained))
    base = _draw(_base_pipeline())
    assert np.abs(expected - base).mean() > 1.0, (
        "the LoRA should change the images, or this test proves nothing"
    )

    diffusers_pipeline = _base_pipeline()
    diffusers_pipeline.load_lora_weights(str(trained / "exports" / "diffusers"))
    assert np.abs(_draw(diffusers_pipeline) - expected).max() <= 2

    kohya_file = trained / "exports" / "kohya" / "tiny-sd.safetensors"
    kohya_pipeline = _base_pipeline()
    kohya_pipeline.load_lora_weights(
        str(kohya_file.parent), weight_name=kohya_file.name
    )  # diffusers' kohya conversion
    assert np.abs(_draw(kohya_pipeline) - expected).max() <= 2


def test_merged_export_is_a_pipeline_that_draws_what_the_trained_model_draws(trained: Path) -> None:
    merged = _base_pipeline(trained / "exports" / "merged")
    assert not any("lora" in name for name, _ in merged.unet.named_parameters())
    assert np.abs(_draw(merged) - _draw(_trained_pipeline(trained))).max() <= 2


def test_kohya_file_has_sd_scripts_keys_shapes_and_metadata(trained: Path) -> None:
    path = trained / "exports" / "kohya" / "tiny-sd.safetensors"
    tensors = load_file(str(path))
    names = {key.split(".")[0] for key in tensors}
    assert all(re.fullmatch(r"lora_(unet|te)_[a-z0-9_]+", n) for n in names)
    for name in names:
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= tensors.keys()
    attention = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    conv3 = "lora_unet_down_blocks_0_resnets_0_conv1"
    conv1 = "lora_unet_down_blocks_1_attentions_0_proj_in"
    text = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert {
        attention,
        conv3,
        conv1,
        text,
        "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
    } <= names
    assert (
        tensors[f"{attention}.lora_down.weight"].shape[0] == 4 and float(tensors[f"{attention}.alpha"]) == 4.0
    )
    # A 3×3 conv: down is a conv of the layer's kernel at rank conv_r, up a 1×1 conv; alpha conv_alpha.
    assert tensors[f"{conv3}.lora_down.weight"].shape[0] == 2 and tensors[f"{conv3}.lora_down.weight"].shape[
        2:
    ] == (3, 3)
    assert (
        tensors[f"{conv3}.lora_up.weight"].shape[1:] == (2, 1, 1) and float(tensors[f"{conv3}.alpha"]) == 1.0
    )
    assert (
        tensors[f"{conv1}.lora_down.weight"].shape[2:] == (1, 1) and float(tensors[f"{conv1}.alpha"]) == 4.0
    )
    assert tensors[f"{text}.alpha"].ndim == 0

    meta = read_metadata(path)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_text_encoder_lr"] == "0.005" and meta["ss_num_train_images"] == "6"
    assert (
        meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
        and meta["modelspec.trigger_phrase"] == "teal square"
    )
    assert "[adapter]" in meta["loraplug.recipe"]
    assert meta["ss_steps"] == "3"
    buckets = json.loads(meta["ss_bucket_info"])["buckets"]
    assert sum(b["count"] for b in buckets.values()) == 6 and all(
        b["resolution"] == [32, 32] for b in buckets.values()
    )
    tags = json.loads(meta["ss_tag_frequency"])["train"]
    assert sum(tags.values()) >= 6 and all(tag == tag.strip() and tag for tag in tags)
    # Re-exported from the finished run, the dataset facts are read again, not lost.
    again = run_cli("export", trained, "--kind", "kohya", "--name", "kohya-again")
    assert again.exit_code == 0, again.output
    meta_again = read_metadata(trained / "exports" / "kohya-again" / "tiny-sd.safetensors")
    for key in ("ss_bucket_info", "ss_tag_frequency", "ss_steps"):
        assert meta_again[key] == meta[key], key
    # The sd-webui-additional-networks hashes, recomputed here the way sd-scripts does.
    import hashlib

    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as handle:
        ordered = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    blob = save(ordered, {k: v for k, v in meta.items() if k.startswith("ss_")})
    offset = 8 + int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[offset:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def test_text_encoder_lr_goes_through_lr_scales(trained: Path) -> None:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost

    _, _, model = load_run(trained, PluginHost.load(), Console(quiet=True))
    assert model.lr_scales == {"text_encoder.": 0.5}
    names = [n for n, p in model.module.named_parameters() if p.requires_grad]
    assert any(n.startswith("text_encoder.") and "lora_A" in n for n in names)
    assert any(n.startswith("unet.") and "conv1.lora_A" in n for n in names)
    import peft

    assert peft.get_peft_model_state_dict(model.components["unet"])  # the contract ONNX/other exports rely on


def test_generate_command_adds_a_grid_and_keeps_the_old_ones(trained: Path) -> None:
    before = {p: p.read_bytes() for p in (trained / "samples").glob("grid-*.png")}
    result = run_cli("generate", trained, "--prompt", "a red square")
    assert result.exit_code == 0, result.output
    new = list((trained / "samples" / "generate").glob("grid-*.png"))
    assert len(new) == 1
    assert all(p.read_bytes() == data for p, data in before.items())


def test_conv_target_the_model_lacks_is_one_clear_error(tmp_path: Path) -> None:
    recipe = tiny_sd_recipe(
        tmp_path, adapter={"conv": True, "conv_modules": ["conv9"]}, eval={"sample_prompts": []}
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 2, result.output
    assert "adapter.conv_modules names 'conv9'" in result.stderr and "conv1" in result.stderr
    assert "Traceback" not in result.output


def test_an_export_that_does_not_match_the_trained_model_fails_alone(tmp_path: Path) -> None:
    recipe = tiny_sd_recipe(
        tmp_path,
        eval={"sample_prompts": []},
        export=[{"kind": "kohya", "dtype": "float16", "tolerance": 1e-9}, {"kind": "diffusers"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 2, result.output
    assert "export 'kohya' failed" in result.stderr and "differ by up to" in result.stderr
    run_dir = tmp_path / "runs" / "tiny-sd"
    assert (run_dir / "adapter" / "adapter.safetensors").is_file() and (
        run_dir / "exports" / "diffusers" / "export.json"
    ).is_file()
    assert not (run_dir / "exports" / "kohya").exists()


def test_a_16_bit_base_trains_float32_lora_and_its_exports_pass_parity(tmp_path: Path) -> None:
    recipe = tiny_sd_recipe(
        tmp_path,
        model={"dtype": "bfloat16"},
        eval={"sample_prompts": []},
        export=[
            {"kind": "diffusers"},
            {"kind": "kohya", "dtype": "float16"},
            {"kind": "merged", "dtype": "bfloat16"},
        ],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny-sd"
    weights = load_file(str(run_dir / "adapter" / "adapter.safetensors"))
    assert {t.dtype for t in weights.values()} == {
        torch.float32
    }  # the LoRA trained in float32 on a bf16 base
    for name in ("diffusers", "kohya", "merged"):
        figure = json.loads((run_dir / "exports" / name / "export.json").read_text())["figures"][
            "max_abs_diff_vs_trained"
        ]
        assert 0 < figure < 6e-2, (name, figure)
    assert {
        t.dtype for t in load_file(str(run_dir / "exports" / "kohya" / "tiny-sd.safetensors")).values()
    } == {torch.float16}
