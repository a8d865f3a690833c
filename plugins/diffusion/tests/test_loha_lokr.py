"""LoHa and LoKr on Stable Diffusion: the kohya file in LyCORIS' layout, the merged pipeline, and refusals.

The LyCORIS key names and the formula below are ComfyUI's (comfy/weight_adapter/loha.py and lokr.py,
``calculate_weight``) and AUTOMATIC1111's (extensions-builtin/Lora/network_hada.py, network_lokr.py,
network.py ``calc_scale``): the test rebuilds ΔW from the written tensors as those readers do, written
out here independently of loraplug_diffusion.lycoris, and holds it to peft's own ``get_delta_weight``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loraplug.testing import run_cli
from loraplug_diffusion.kohya import read_metadata
from loraplug_diffusion.lycoris import layer_tensors
from loraplug_diffusion.presets import preset_dir
from loraplug_diffusion.testing import tiny_sd_recipe

LOHA_KEYS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}


def comfyui_delta(w: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """ΔW as ComfyUI's LoHaAdapter / LoKrAdapter.calculate_weight compute it (strength 1), in float64."""
    w = {k: v.double() for k, v in w.items()}
    alpha = float(w["alpha"]) if "alpha" in w else None
    if "hada_w1_a" in w:  # LoHa: alpha / w1b.shape[0]
        scale = alpha / w["hada_w1_b"].shape[0] if alpha is not None else 1.0
        m1 = torch.mm(w["hada_w1_a"], w["hada_w1_b"])
        m2 = torch.mm(w["hada_w2_a"], w["hada_w2_b"])
        return scale * (m1 * m2).reshape(shape)
    dim = None  # LoKr: the rank of the factored matrix, w2's taking precedence; none factored: no alpha
    if "lokr_w1" in w:
        w1 = w["lokr_w1"]
    else:
        dim = w["lokr_w1_b"].shape[0]
        w1 = torch.mm(w["lokr_w1_a"], w["lokr_w1_b"])
    if "lokr_w2" in w:
        w2 = w["lokr_w2"]
    else:
        dim = w["lokr_w2_b"].shape[0]
        w2 = torch.mm(w["lokr_w2_a"], w["lokr_w2_b"])
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return scale * torch.kron(w1, w2).reshape(shape)


class Net(torch.nn.Module):
    """A linear layer, a 3×3 convolution and a 1×1 one, like the UNet's attention and resnet layers."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 48)
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.point = torch.nn.Conv2d(32, 16, 1)


CONFIGS = {
    "loha": lambda: __import__("peft").LoHaConfig(r=4, alpha=3, target_modules=["proj", "conv", "point"]),
    # w1 whole, w2 factored (peft's default for layers this size)
    "lokr": lambda: __import__("peft").LoKrConfig(r=2, alpha=3, target_modules=["proj", "conv", "point"]),
    # both factored
    "lokr-decompose-both": lambda: __import__("peft").LoKrConfig(
        r=1, alpha=5, decompose_both=True, decompose_factor=16, target_modules=["proj", "conv", "point"]
    ),
    # both whole: a rank as large as the factors, where readers apply no alpha at all
    "lokr-full": lambda: __import__("peft").LoKrConfig(
        r=16, alpha=3, target_modules=["proj", "conv", "point"]
    ),
    # alpha/rank per layer through the patterns the adapter's conv_r/conv_alpha use
    "lokr-patterns": lambda: __import__("peft").LoKrConfig(
        r=2,
        alpha=3,
        rank_pattern={"^conv$": 1},
        alpha_pattern={"^conv$": 7.0},
        target_modules=["proj", "conv", "point"],
    ),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_lycoris_tensors_rebuild_peft_delta_as_comfyui_reads_them(config: str) -> None:
    from peft import inject_adapter_in_model

    torch.manual_seed(0)
    net = inject_adapter_in_model(CONFIGS[config](), Net(), adapter_name="default")
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "hada_" in name or "lokr_" in name:
                param.normal_(0, 0.3)  # both factors non-zero, so a wrong pairing or scale shows
    seen_full = seen_factored = False
    for name in ("proj", "conv", "point"):
        layer = getattr(net, name)
        written = layer_tensors(layer, torch.float32)
        if config == "loha":
            assert set(written) == LOHA_KEYS
        else:
            assert "alpha" in written and set(written) - {"alpha"} <= {
                "lokr_w1",
                "lokr_w1_a",
                "lokr_w1_b",
                "lokr_w2",
                "lokr_w2_a",
                "lokr_w2_b",
            }
            assert ("lokr_w1" in written) != ("lokr_w1_a" in written and "lokr_w1_b" in written)
            assert ("lokr_w2" in written) != ("lokr_w2_a" in written and "lokr_w2_b" in written)
            seen_full |= "lokr_w1" in written and "lokr_w2" in written
            seen_factored |= "lokr_w1_a" in written and "lokr_w2_a" in written
        expected = layer.get_delta_weight("default").double()
        rebuilt = comfyui_delta(written, layer.get_base_layer().weight.shape)
        assert rebuilt.shape == expected.shape
        assert torch.allclose(rebuilt, expected, rtol=1e-5, atol=1e-6), (
            name,
            float((rebuilt - expected).abs().max()),
        )
        assert float(expected.abs().max()) > 1e-3  # a real update, not zeros that match anything
    if config == "lokr-full":
        assert seen_full  # the case whose scale is folded into lokr_w1
    if config == "lokr-decompose-both":
        assert seen_factored


def _run(tmp: Path, kind: str, **adapter: Any) -> tuple[Path, str]:
    recipe = tiny_sd_recipe(
        tmp,
        adapter={"kind": kind, "r": 4, "alpha": 4, "conv": True, "text_encoder": True, **adapter},
        train={"max_steps": 2, "lr": 5e-2},
        export=[{"kind": "kohya"}, {"kind": "merged"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny-sd", result.output


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_tiny_run_exports_kohya_in_lycoris_layout_and_merged(tmp_path: Path, kind: str) -> None:
    run_dir, output = _run(tmp_path, kind)
    figures = {
        name: json.loads((run_dir / "exports" / name / "export.json").read_text())["figures"]
        for name in ("kohya", "merged")
    }
    # Each export was loaded back (the kohya file by ComfyUI's formula) and predicts like the trained model.
    for name, figure in figures.items():
        assert figure["max_abs_diff_vs_trained"] <= 1e-3, (name, figure)

    path = run_dir / "exports" / "kohya" / "tiny-sd.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    suffixes = {key.split(".", 1)[1] for key in keys}
    assert all(key.startswith(("lora_unet_", "lora_te_text_model_")) for key in keys)
    assert any(key.startswith("lora_te_") for key in keys) and any(
        "_resnets_" in key for key in keys
    )  # text encoder, LoCon
    if kind == "loha":
        assert suffixes == LOHA_KEYS
    else:
        assert (
            "lokr_w1" in suffixes
            and "alpha" in suffixes
            and suffixes
            <= {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}
        )
    assert not any("lora_down" in key or "lora_up" in key for key in keys)
    metadata = read_metadata(path)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"])["algo"] == kind
    assert metadata["ss_optimizer"].startswith("torch.optim.AdamW(betas=(0.9, 0.999),")

    # Exporting the finished run again checks its adapter kind too: diffusers cannot take it.
    again = run_cli("export", run_dir, "--kind", "diffusers")
    assert again.exit_code == 2 and f"does not handle adapter kind {kind!r}" in again.stderr
    assert not (run_dir / "exports" / "diffusers").exists()

    assert "(LyCORIS format)" in output  # where the run's summary says the kohya file loads

    # The parity above is no accident of a zero update: the merged UNet moved away from the base.
    unet_file = Path("unet") / "diffusion_pytorch_model.safetensors"
    merged = load_file(str(run_dir / "exports" / "merged" / unet_file))
    base = load_file(str(preset_dir("tiny-sd", Path(os.environ["LORAPLUG_CACHE"])) / unet_file))
    moved = {
        k for k in base if "to_q" in k or "conv1" in k if float((merged[k] - base[k]).abs().max()) > 1e-4
    }
    assert any("to_q" in k for k in moved) and any("conv1" in k for k in moved)


def test_diffusers_export_refuses_loha_at_recipe_check(tmp_path: Path) -> None:
    recipe = tiny_sd_recipe(
        tmp_path, adapter={"kind": "loha"}, export=[{"kind": "merged"}, {"kind": "diffusers"}]
    )
    result = run_cli("recipe", "check", recipe)
    assert result.exit_code == 2
    assert "`export[1].kind` = 'diffusers'" in result.stderr
    assert "does not handle adapter kind 'loha'" in result.stderr
    handle = result.stderr.split("export kinds for stable-diffusion that handle loha: ", 1)[1].split("\n")[0]
    offered = {kind.strip(" .") for kind in handle.split(",")}
    assert {"kohya", "merged"} <= offered and "diffusers" not in offered, handle  # onnx/int8: any adapter
    assert "export[0]" not in result.stderr  # merged handles LoHa
