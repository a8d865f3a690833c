"""tiny-flux end to end: flow-matching training with falling validation loss, and its diffusers and kohya files
loaded back by diffusers itself (FluxPipeline.load_lora_weights, whose kohya path is diffusers' own kohya-Flux
converter) drawing the images the trained model draws."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loraplug.testing import run_cli
from loraplug_diffusion.kohya import read_metadata
from loraplug_diffusion.testing import tiny_sd_recipe

PROMPT = "a teal square, navy background"
SEEDS = [5, 6]
FLUX_MODEL = {
    "kind": "flux",
    "pretrained": "tiny-flux",
    "dtype": "float32",
    "resolution": 32,
    "max_sequence_length": 16,
    "sample_steps": 2,
    "sample_images": 2,
    "sample_guidance_scale": 1.0,
}


def tiny_flux_recipe(
    tmp_path: Path, adapter: dict[str, Any], model: dict[str, Any] | None = None, **changes: Any
) -> Path:
    return tiny_sd_recipe(
        tmp_path,
        model={**FLUX_MODEL, **(model or {})},
        adapter={"kind": "lora", "r": 4, "alpha": 8, **adapter},
        **changes,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every layer group in both block kinds, ranks per group, both exports."""
    tmp = tmp_path_factory.mktemp("flux-run")
    recipe = tiny_flux_recipe(
        tmp,
        {"targets": ["attention", "mlp", "modulation"], "ranks": {"mlp": 2}},
        train={"max_steps": 16, "lr": 1e-2, "batch_size": 4},
        eval={"every_n_steps": 8, "sample_prompts": [PROMPT]},
        export=[{"kind": "diffusers"}, {"kind": "kohya", "trigger_phrase": "teal square"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny-sd"


def _base_pipeline() -> Any:
    from diffusers import FluxPipeline

    from loraplug_diffusion.flux_presets import FLUX_PRESETS

    pipeline = FluxPipeline.from_pretrained(FLUX_PRESETS[0].directory(Path(os.environ["LORAPLUG_CACHE"])))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _trained_pipeline(run_dir: Path) -> Any:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug_diffusion.flux_sample import pipeline_of

    _, _, model = load_run(run_dir, PluginHost.load(), Console(quiet=True))
    model.module.eval()
    return pipeline_of(model)


def _draw(pipeline: Any) -> np.ndarray:
    with torch.no_grad():
        images = pipeline(
            PROMPT,
            height=32,
            width=32,
            num_inference_steps=3,
            guidance_scale=2.0,
            max_sequence_length=16,
            num_images_per_prompt=len(SEEDS),
            generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        ).images
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_tiny_flux_transformer_is_wider_than_the_tokens_it_outputs() -> None:
    """As FLUX.1 (3,072 → 64). With a square proj_out behind the final LayerNorm (no affine), every output token
    lies on one ellipsoid whatever LoRA does in the blocks: tiny_flux_style.toml learnt the palette, never shapes."""
    from diffusers import FluxTransformer2DModel

    from loraplug_diffusion.flux_presets import TINY_FLUX

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**TINY_FLUX["transformer"])
    assert transformer.proj_out.in_features > transformer.proj_out.out_features


def test_tiny_flux_trains_with_falling_validation_loss_and_draws_grids(trained: Path) -> None:
    status = json.loads((trained / "run.json").read_text())
    assert status["status"] == "finished" and all(e["ok"] for e in status["exports"])
    assert status["data"]["latents cached"] == 8 and status["data"]["captions cached"] >= 1
    losses = [
        json.loads(line)["val_loss"]
        for line in (trained / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in json.loads(line)
    ]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    listed = json.loads((trained / "samples" / "step-000016.json").read_text())
    assert listed[0]["prompt"] == PROMPT and (trained / listed[0]["image"]).is_file()
    for name in ("diffusers", "kohya"):
        manifest = json.loads((trained / "exports" / name / "export.json").read_text())
        assert manifest["figures"]["max_abs_diff_vs_trained"] < 1e-4, manifest


def test_diffusers_export_loads_in_flux_pipeline_and_draws_the_trained_images(trained: Path) -> None:
    expected = _draw(_trained_pipeline(trained))
    assert np.abs(expected - _draw(_base_pipeline())).mean() > 1.0, "the LoRA should change the images"
    pipeline = _base_pipeline()
    pipeline.load_lora_weights(str(trained / "exports" / "diffusers"))
    assert np.abs(_draw(pipeline) - expected).max() <= 2


def test_kohya_file_has_sd_scripts_flux_keys_fused_qkv_and_metadata(trained: Path) -> None:
    from loraplug_diffusion.flux_kohya import add_kohya_deltas

    path = trained / "exports" / "kohya" / "tiny-sd.safetensors"
    tensors = load_file(str(path))
    names = {key.split(".")[0] for key in tensors}
    for index in (0, 1):
        for name in (
            "img_attn_qkv",
            "txt_attn_qkv",
            "img_attn_proj",
            "txt_attn_proj",
            "img_mlp_0",
            "img_mlp_2",
        ):
            assert f"lora_unet_double_blocks_{index}_{name}" in names
        for name in ("txt_mlp_0", "txt_mlp_2", "img_mod_lin", "txt_mod_lin"):
            assert f"lora_unet_double_blocks_{index}_{name}" in names
        for name in ("linear1", "linear2", "modulation_lin"):
            assert f"lora_unet_single_blocks_{index}_{name}" in names
    assert len(names) == 2 * 10 + 2 * 3
    # q/k/v fused: down is the three downs stacked (rank 3×4), up block-diagonal over 3 × 128 rows, scale 1.
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    down, up = tensors[f"{qkv}.lora_down.weight"], tensors[f"{qkv}.lora_up.weight"]
    assert down.shape == (12, 128) and up.shape == (384, 12) and float(tensors[f"{qkv}.alpha"]) == 12.0
    assert torch.all(up[:128, 4:] == 0) and torch.all(up[128:256, :4] == 0) and torch.all(up[256:, :8] == 0)
    # linear1 = to_q ‖ to_k ‖ to_v (attention, rank 4) ‖ proj_mlp (mlp, rank 2); rows 3 × 128 + 512.
    linear1 = "lora_unet_single_blocks_1_linear1"
    assert tensors[f"{linear1}.lora_down.weight"].shape == (14, 128)
    assert tensors[f"{linear1}.lora_up.weight"].shape == (896, 14)
    # Unfused: peft's tensors and alpha (alpha/r = 2 for every group).
    assert float(tensors["lora_unet_double_blocks_0_img_mlp_0.alpha"]) == 4.0
    assert tensors["lora_unet_double_blocks_0_img_mlp_0.lora_down.weight"].shape[0] == 2

    meta = read_metadata(path)
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_base_model_version"] == "flux1"
    assert (
        meta["modelspec.architecture"] == "flux-1-dev/lora"
        and meta["modelspec.trigger_phrase"] == "teal square"
    )

    # Read back as ComfyUI applies it (the fused update onto fused rows): the trained images.
    pipeline = _base_pipeline()
    assert add_kohya_deltas(pipeline.transformer, tensors) == len(names)
    assert np.abs(_draw(pipeline) - _draw(_trained_pipeline(trained))).max() <= 2


def test_kohya_file_loads_through_diffusers_kohya_flux_converter_with_the_trained_images(
    tmp_path: Path,
) -> None:
    """diffusers splits a single block's linear1 by FLUX.1's widths only, so at tiny size: double blocks."""
    recipe = tiny_flux_recipe(
        tmp_path,
        {"blocks": ["double"], "targets": ["attention", "mlp", "modulation"]},
        train={"max_steps": 4, "lr": 3e-2, "batch_size": 4},
        eval={"sample_prompts": []},
        export=[{"kind": "kohya", "metadata": "minimal"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny-sd"
    manifest = json.loads((run_dir / "exports" / "kohya" / "export.json").read_text())
    assert manifest["figures"]["read_back_with"] == "diffusers"
    expected = _draw(_trained_pipeline(run_dir))
    pipeline = _base_pipeline()
    pipeline.load_lora_weights(str(run_dir / "exports" / "kohya"), weight_name="tiny-sd.safetensors")
    assert np.abs(expected - _draw(_base_pipeline())).mean() > 1.0, "the LoRA should change the images"
    assert np.abs(_draw(pipeline) - expected).max() <= 2


#: black-forest-labs/FLUX.1-dev transformer/config.json.
FLUX_DEV = {
    "attention_head_dim": 128,
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
}


def _meta_flux_dev() -> Any:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**FLUX_DEV)


def test_every_kohya_flux_name_maps_to_modules_of_flux_dev_and_covers_every_block_linear() -> None:
    from loraplug_diffusion.flux_kohya import kohya_modules

    transformer = _meta_flux_dev()
    modules = kohya_modules(transformer)
    assert len(modules) == 19 * 10 + 38 * 3
    linears = {n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and "blocks." in n}
    mapped = [p for paths in modules.values() for p in paths]
    assert sorted(mapped) == sorted(linears)  # every block Linear exactly once, and nothing else
    widths = [
        transformer.get_submodule(p).out_features for p in modules["lora_unet_single_blocks_37_linear1"]
    ]
    assert widths == [3072, 3072, 3072, 12288]
    assert all(re.fullmatch(r"lora_unet_(double|single)_blocks_\d+_[a-z0-9_]+", n) for n in modules)


def test_fused_files_at_flux_dev_widths_split_back_exactly_in_diffusers_converter() -> None:
    """A LoRA on one double and one single block of FLUX.1-dev's shapes (ranks differ per member, proj_mlp
    untrained), fused as the export fuses it, through diffusers' own kohya-Flux converter: each member's
    update comes back exactly."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from loraplug_diffusion.flux_kohya import fuse, kohya_modules

    transformer = _meta_flux_dev()
    modules = kohya_modules(transformer)
    generator = torch.Generator().manual_seed(0)
    updates: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name in ("lora_unet_double_blocks_3_img_attn_qkv", "lora_unet_double_blocks_3_img_mlp_2",
                 "lora_unet_single_blocks_7_linear1"):  # fmt: skip
        members = []
        for rank, path in zip((2, 3, 1, 0), modules[name], strict=False):
            layer = transformer.get_submodule(path)
            if rank == 0:
                members.append((layer.out_features, None))
                continue
            a = torch.randn(rank, layer.in_features, generator=generator)
            b = torch.randn(layer.out_features, rank, generator=generator)
            members.append((layer.out_features, (a, b, 0.5)))
            updates[path] = b @ a * 0.5
        tensors.update({f"{name}.{k}": v for k, v in fuse(members).items()})
    converted = _convert_kohya_flux_lora_to_diffusers(dict(tensors))
    for path, update in updates.items():
        key = f"transformer.{path}"
        got = converted[f"{key}.lora_B.weight"] @ converted[f"{key}.lora_A.weight"]
        torch.testing.assert_close(got, update, rtol=1e-4, atol=1e-4)
    proj_mlp = "transformer.single_transformer_blocks.7.proj_mlp"
    assert torch.all(converted[f"{proj_mlp}.lora_B.weight"] @ converted[f"{proj_mlp}.lora_A.weight"] == 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="nf4 loads on a CUDA GPU")
def test_nf4_without_a_cuda_gpu_is_a_clear_error(tmp_path: Path) -> None:
    recipe = tiny_flux_recipe(tmp_path, {}, model={"quantization": "nf4"})
    result = run_cli("run", recipe)
    assert result.exit_code != 0
    assert 'model.quantization = "nf4" needs a CUDA GPU' in result.output, result.output
    assert "Traceback" not in result.output and "bug" not in result.output


def test_a_rank_for_a_group_the_adapter_does_not_train_is_a_recipe_error(tmp_path: Path) -> None:
    recipe = tiny_flux_recipe(tmp_path, {"targets": ["attention"], "ranks": {"modulation": 4}})
    result = run_cli("recipe", "check", recipe)
    assert result.exit_code == 2, result.output
    assert "ranks names modulation, which targets/blocks do not choose" in result.output
