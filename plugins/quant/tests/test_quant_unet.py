"""int8 of a model that is not saved with save_pretrained: a Stable Diffusion UNet, through the diffusion
plugin's deployable view. loraplug-quant knows nothing of UNets: torchao quantizes the merged module's
linear layers and the file loads back into the UNet's own architecture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug import LoraplugError, ModelBundle, RunContext
from loraplug.plugins import PluginHost


def tiny_unet() -> Any:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )  # fmt: skip
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return unet


def export(kind: str, unet: Any, out_dir: Path) -> Any:
    from loraplug_quant.options import Bnb8bitExportOptions, Int8ExportOptions

    host = PluginHost.load()
    ctx = RunContext(recipe=None, run_dir=out_dir.parent, cache_dir=out_dir.parent, seed=0)  # type: ignore[arg-type]
    ctx.load_deployable = lambda model: host.deployable(model, ctx)  # what host.export sets up in a run
    bundle = ModelBundle(kind="stable-diffusion", module=unet, components={"unet": unet}, base="tiny-unet")
    options = Int8ExportOptions() if kind == "int8" else Bnb8bitExportOptions()
    out_dir.mkdir()
    return host.call_stage(
        "export", kind, "stable-diffusion", options=options, model=bundle, out_dir=out_dir, ctx=ctx
    )


def test_int8_of_a_unet_loads_back_into_the_unet_with_int8_weights(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    unet = tiny_unet()
    result = export("int8", unet, tmp_path / "int8")
    figures = result.figures
    assert figures["measured_on"] == "the model's example inputs"  # no run data here: the deployable's inputs
    assert 0 < figures["max_abs_drift"] < 0.05 and figures["size_ratio"] < 1
    assert figures["merge_check"]["max_abs_diff_vs_trained"] < 1e-4

    path = str(tmp_path / "int8" / "model.safetensors")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    state, rest = unflatten_tensor_state_dict(load_file(path), metadata)
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    reloaded = UNet2DConditionModel.from_config(config)
    reloaded.load_state_dict({**state, **rest}, assign=True)
    attention = reloaded.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert "Int8" in type(attention.to_q.weight).__name__

    generator = torch.Generator().manual_seed(1)
    sample, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 5, 16, generator=generator)
    with torch.no_grad():
        trained = unet.eval()(sample, torch.tensor([321.0]), context).sample
        got = reloaded.eval()(sample, torch.tensor([321.0]), context).sample
    assert 0 < float((got - trained).abs().max()) < 0.05  # the adapter is in it, quantized


def test_bitsandbytes_kinds_refuse_a_unet(tmp_path: Path) -> None:
    with pytest.raises(LoraplugError, match="quantizes through transformers' from_pretrained"):
        export("bnb-8bit", tiny_unet(), tmp_path / "bnb")
