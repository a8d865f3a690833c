"""SDXL's kohya names on the real SDXL UNet's shape, its size conditioning from real crops, and caching."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from loraplug.testing import run_cli
from loraplug_diffusion.images import place, to_tensor_placed
from loraplug_diffusion.testing import SDXL_UNET_CONFIG, draw_images, tiny_sd_recipe


def sdxl_model(**changes: object) -> dict[str, object]:
    """The [model] section of a tiny-sdxl recipe (tiny_sd_recipe replaces its stable-diffusion one)."""
    return {
        "kind": "stable-diffusion-xl",
        "pretrained": "tiny-sdxl",
        "resolution": 32,
        "sample_steps": 2,
        "sample_images": 2,
        "sample_guidance_scale": 1.0,
        **changes,
    }


def test_every_kohya_key_of_the_real_sdxl_unet_maps_back_to_its_module_through_diffusers() -> None:
    """Every Linear/Conv2d of an SDXL-shaped UNet (meta device) gets an SGM key that diffusers' own kohya
    conversion (_maybe_map_sgm_blocks_to_diffusers, then to PEFT) sends back to that same module."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_unet_state_dict_to_peft

    from loraplug_diffusion.sdxl_kohya import sdxl_kohya_name

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    modules = {n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    names = {sdxl_kohya_name(unet.config, "lora_unet", path): path for path in modules}
    assert len(names) == len(modules) == 794
    # sd-scripts' names, as sdxl_model_util's conversion map and its LoRA files spell them.
    for expected in (
        "lora_unet_input_blocks_0_0",  # conv_in
        "lora_unet_input_blocks_1_0_in_layers_2",  # down_blocks.0.resnets.0.conv1
        "lora_unet_input_blocks_3_0_op",  # down_blocks.0.downsamplers.0.conv
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",  # depth 10 at the lowest level
        "lora_unet_input_blocks_7_0_skip_connection",
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_out_0",
        "lora_unet_middle_block_2_emb_layers_1",
        "lora_unet_output_blocks_0_1_proj_in",
        "lora_unet_output_blocks_2_2_conv",  # up_blocks.0.upsamplers.0.conv: SDXL's slot .2
        "lora_unet_output_blocks_8_0_out_layers_3",
        "lora_unet_out_2",  # conv_out
        "lora_unet_label_emb_0_0",  # add_embedding.linear_1
        "lora_unet_time_embed_2",
    ):
        assert expected in names, expected
    state = {}
    for name in names:
        state |= {f"{name}.lora_down.weight": torch.zeros(1, 1), f"{name}.lora_up.weight": torch.zeros(1, 1)}
        state[f"{name}.alpha"] = torch.tensor(1.0)
    converted, alphas = StableDiffusionXLPipeline.lora_state_dict(state, unet_config=unet.config)
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    assert {key.rsplit(".lora_", 1)[0] for key in peft} == modules
    assert len(alphas) == len(modules)


def test_add_time_ids_come_from_the_real_resize_and_crop() -> None:
    from PIL import Image

    from loraplug_diffusion.sdxl_model import time_ids

    # 120×50 into a 64×32 bucket: resized to 77×32 to cover it, centre crop 6 px from the left.
    placement = place((120, 50), (64, 32), crop="center", flip=False, rng=None)
    assert placement.resized == (77, 32) and (placement.top, placement.left) == (0, 6)
    assert time_ids(placement, (64, 32)).tolist() == [50, 120, 0, 6, 32, 64]
    # A flip mirrors the crop: 77 - 6 - 64 = 7 from the left of the flipped image.
    flipped = place((120, 50), (64, 32), crop="center", flip=True, rng=None)
    assert time_ids(flipped, (64, 32)).tolist() == [50, 120, 0, 7, 32, 64]

    # The tensor path reports the crop it really took: the pixels at its offset are the crop's.
    from torchvision.transforms.v2 import functional as F

    image = Image.new("RGB", (120, 50))
    image.putdata([(x * 2, y * 5, 0) for y in range(50) for x in range(120)])
    for crop, flip in (("center", False), ("center", True), ("random", False), ("random", True)):
        tensor, got = to_tensor_placed(image, (32, 48), crop=crop, flip=flip, rng=random.Random(4))
        assert got == place((120, 50), (32, 48), crop=crop, flip=flip, rng=random.Random(4))
        resized = F.resize(
            F.to_image(image),
            [got.resized[1], got.resized[0]],
            interpolation=F.InterpolationMode.BICUBIC,
            antialias=True,
        )
        if flip:
            resized = F.horizontal_flip(resized)
        expected = resized[:, got.top : got.top + 48, got.left : got.left + 32].float() / 127.5 - 1
        assert torch.allclose(tensor, expected, atol=1e-5), (crop, flip)


def _losses(run_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"], [
        r["val_loss"] for r in rows if r["split"] == "eval"
    ]


def test_cached_and_uncached_sdxl_training_see_the_same_numbers(tmp_path: Path) -> None:
    """Cached latents, both encoders' states and pooled embeddings, and the cached path's add_time_ids
    (computed from the crop without decoding) equal what the step computes from pixels and captions."""
    images = tmp_path / "images"
    draw_images(images, 3, size=(70, 34), seed=1)
    for path in draw_images(tmp_path / "tall", 3, size=(34, 70), seed=2):
        path.rename(images / f"tall-{path.name}")
        path.with_suffix(".txt").rename(images / f"tall-{path.stem}.txt")
    runs = {}
    for name, model in {
        "cached": {},
        "off": {"cache_latents": False, "cache_text_encoder_outputs": False},
    }.items():
        recipe = tiny_sd_recipe(
            tmp_path,
            run={"name": name},
            model=sdxl_model(buckets=True, bucket_step=16, flip=True, caption_dropout=0.5, **model),
            eval={"sample_prompts": []},
        )
        result = run_cli("run", recipe)
        assert result.exit_code == 0, result.output
        runs[name] = tmp_path / "runs" / name
    summary = json.loads((runs["cached"] / "run.json").read_text())["data"]
    assert summary["latents cached"] == 6 and summary["buckets"] == 2 and summary["captions cached"] >= 2
    train, val = _losses(runs["cached"])
    other_train, other_val = _losses(runs["off"])
    assert len(train) == 2 and len(val) == 2
    assert other_train == pytest.approx(train, rel=1e-4)
    assert other_val == pytest.approx(val, rel=1e-4)
