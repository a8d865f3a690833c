"""The onnx export of a Stable Diffusion UNet, against the diffusion plugin's ModelBundle contract:
kind "stable-diffusion", ``components["unet"]`` a UNet2DConditionModel with LoRA injected through peft.

The UNet here is a tiny one built from a config, so no preset is trained; the export is dispatched
through the plugin host, and the merged UNet comes from the diffusion plugin's deployable view, as in
a run (loraplug-onnx itself knows nothing of UNets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loraplug import LoraplugError, ModelBundle, RunContext
from loraplug.plugins import PluginHost
from loraplug_onnx.options import OnnxExportOptions


def tiny_unet(**config: Any) -> Any:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
        **config,
    )
    # Attention projections and the resnets' 3×3 convs, as the diffusion plugin adapts them.
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    )
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return unet


def export(unet: Any, out_dir: Path, **options: Any) -> Any:
    host = PluginHost.load()
    ctx = RunContext(recipe=None, run_dir=out_dir.parent, cache_dir=out_dir.parent, seed=0)  # type: ignore[arg-type]
    ctx.load_deployable = lambda model: host.deployable(model, ctx)  # what host.export sets up in a run
    bundle = ModelBundle(kind="stable-diffusion", module=unet, components={"unet": unet}, base="tiny-unet")
    out_dir.mkdir()
    return host.call_stage(
        "export",
        "onnx",
        "stable-diffusion",
        options=OnnxExportOptions(**options),
        model=bundle,
        out_dir=out_dir,
        ctx=ctx,
    )


def test_merged_unet_runs_in_onnxruntime_like_the_trained_unet(tmp_path: Path) -> None:
    import onnxruntime
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = tiny_unet()
    lora_layers = sum(isinstance(m, BaseTunerLayer) for m in unet.modules())
    result = export(unet, tmp_path / "onnx")

    assert result.figures["inputs"] == {
        "sample": ["batch", 4, "2*height", "2*width"],
        "timestep": ["batch"],
        "encoder_hidden_states": ["batch", "sequence", 16],
    }
    assert result.figures["opset"] == 20 and 0 <= result.figures["max_abs_diff"] < 1e-4
    assert f"merged {lora_layers} LoRA layers" in result.notes[0]
    # The trained UNet keeps its adapter: later exports of the run use it.
    assert sum(isinstance(m, BaseTunerLayer) for m in unet.modules()) == lora_layers
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["block_out_channels"] == [16, 32]

    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 10, 6, generator=generator)
    timestep = torch.tensor([321.0])
    context = torch.randn(1, 5, 16, generator=generator)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (noise,) = session.run(
        ["noise_pred"],
        {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": context.numpy()},
    )
    with torch.no_grad():
        trained = unet.eval()(sample, timestep, context).sample.numpy()
        unet.disable_adapters()
        with_adapter_off = unet(sample, timestep, context).sample.numpy()
    assert np.abs(noise - trained).max() < 1e-4
    assert np.abs(noise - with_adapter_off).max() > 1e-2  # the adapter is in the export


def test_unet_with_extra_conditioning_is_refused(tmp_path: Path) -> None:
    unet = tiny_unet(class_embed_type="timestep")
    with pytest.raises(LoraplugError, match="Stable Diffusion 1.x/2.x UNet"):
        export(unet, tmp_path / "onnx")
