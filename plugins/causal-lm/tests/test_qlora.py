"""QLoRA: ``[model] quantization`` trains LoRA on a bitsandbytes-quantized base (on the CPU here), and
its merged export is the dequantized base plus the update — never a merge into quantized weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from loraplug.testing import run_cli

PROBE = torch.tensor([[3, 50, 60, 70, 80, 90, 100, 2, 5, 40]])


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loraplug_causal_lm.testing import trained_tiny_run

    return trained_tiny_run(
        tmp_path_factory.mktemp("qlora"),
        model={
            "quantization": "nf4",
            "dtype": "float32",
        },  # the 4-bit layers compute in float32 on every host (auto: bf16 on GPUs)
        train={"max_steps": 4, "lr": 5e-3},
        export=[{"kind": "peft"}, {"kind": "merged"}],
    )


def _trained(run_dir: Path) -> torch.nn.Module:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost

    _, _, model = load_run(run_dir, PluginHost.load(), Console(quiet=True))
    return model.module.eval()


def test_nf4_base_trains_the_adapter_on_4bit_weights(nf4_run: Path) -> None:
    import bitsandbytes as bnb

    trained = _trained(nf4_run)
    base_layer = trained.get_base_model().model.layers[0].mlp.up_proj.base_layer
    assert isinstance(base_layer, bnb.nn.Linear4bit) and base_layer.weight.quant_type == "nf4"
    lora_b = [p for name, p in trained.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: training moved it
    metrics = [json.loads(line) for line in (nf4_run / "metrics.jsonl").read_text().splitlines()]
    val_losses = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(val_losses) >= 2 and val_losses[-1] < val_losses[0]  # it learned


def test_merged_export_of_an_nf4_run_is_the_dequantized_base_plus_the_update(nf4_run: Path) -> None:
    from transformers import AutoModelForCausalLM

    export = nf4_run / "exports" / "merged"
    manifest = json.loads((export / "export.json").read_text())
    assert any("dequantized to float32 before merging" in note for note in manifest["notes"])
    figures = manifest["figures"]
    assert (
        figures["max_abs_logit_diff_vs_trained"] < 1e-4
        and figures["max_abs_logit_diff_vs_dequantized"] < 1e-4
    )
    assert (
        figures["quantized_kernel_drift"] < 1e-4
    )  # float32 compute dtype, on every CPU (AVX512-BF16 or not)
    config = json.loads((export / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float checkpoint
    merged = AutoModelForCausalLM.from_pretrained(export).eval()
    assert type(merged.model.layers[0].mlp.up_proj) is torch.nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=PROBE).logits, _trained(nf4_run)(input_ids=PROBE).logits, rtol=0, atol=1e-4
        )


def test_merging_into_the_quantized_weights_is_refused_with_the_reason(nf4_run: Path) -> None:
    before = json.loads((nf4_run / "exports" / "merged" / "export.json").read_text())
    result = run_cli("export", nf4_run, "--kind", "merged", "dequantize=false", "--overwrite")
    assert result.exit_code == 2
    assert "Refusing to merge the adapter into the nf4 base" in result.stderr and "peft#2321" in result.stderr
    assert json.loads((nf4_run / "exports" / "merged" / "export.json").read_text()) == before


def test_a_4bit_base_computing_in_bfloat16_merges_and_its_kernel_rounding_is_not_held_against_the_merge(
    tmp_path: Path,
) -> None:
    from loraplug_causal_lm.testing import trained_tiny_run

    # `model.dtype = "bfloat16"` is the 4-bit layers' compute dtype (the default on GPUs): the trained model
    # rounds its activations to bfloat16, which the float32 merge does not, by an amount that depends on
    # the kernel and the host. Compared with the trained model as computed, a correct merge was refused.
    run_dir = trained_tiny_run(
        tmp_path,
        model={"quantization": "nf4", "dtype": "bfloat16"},
        eval={"sample_prompts": []},
        export=[{"kind": "merged"}],
    )
    figures = json.loads((run_dir / "exports" / "merged" / "export.json").read_text())["figures"]
    assert figures["max_abs_logit_diff_vs_dequantized"] < 1e-4 < figures["quantized_kernel_drift"]
    assert figures["max_abs_logit_diff_vs_trained"] <= figures["quantized_kernel_drift"] + 1e-4
    assert figures["dtype"] == "bfloat16"


def test_a_merge_into_the_4bit_weights_fails_the_parity_check(nf4_run: Path) -> None:
    from peft import PeftModel
    from rich.console import Console

    from loraplug import LoraplugError
    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug_causal_lm.export import _probe_logits
    from loraplug_causal_lm.merge import MergedModel, check_parity, merged_model
    from loraplug_causal_lm.model import load_causal_lm

    _, ctx, model = load_run(nf4_run, PluginHost.load(), Console(quiet=True))
    correct = merged_model(model, ctx)
    probe = lambda m: _probe_logits(m, correct.tokenizer)  # noqa: E731
    assert check_parity(correct, model.module, probe)["max_abs_logit_diff_vs_dequantized"] < 1e-4
    # What `dequantize = false` would make (peft#2321): the update merged into the 4-bit weights, rounded back
    # to the nf4 grid, then dequantized to a float model.
    base, tokenizer = load_causal_lm(ctx.recipe.model.options, ctx.cache_dir)
    with pytest.warns(UserWarning, match="rounding errors"):  # peft knows
        rounded = PeftModel.from_pretrained(base, nf4_run / "exports" / "peft").merge_and_unload()
    rounded = rounded.dequantize(dtype=torch.float32)
    with pytest.raises(LoraplugError, match="the merge does not reproduce the trained model"):
        check_parity(MergedModel(rounded, tokenizer, "float32"), model.module, probe)


def test_an_eval_pass_leaves_the_4bit_layers_passing_gradients(nf4_run: Path) -> None:
    # bitsandbytes repacks a 4-bit layer for an inference-only bfloat16 kernel on its first eval forward on
    # CPUs with AVX512-BF16, and that kernel has no backward: training after the step-0 evaluation then got
    # no gradient through any 4-bit layer. (On a CPU without AVX512-BF16 this passes either way.)
    trained = _trained(nf4_run)

    def gradients() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)  # the same dropout masks
        trained.train()
        trained.zero_grad()
        trained(input_ids=PROBE, labels=PROBE).loss.backward()
        return {name: p.grad.clone() for name, p in trained.named_parameters() if p.grad is not None}

    before = gradients()
    trained.eval()
    with torch.no_grad():
        trained(input_ids=PROBE)
    after = gradients()
    assert before.keys() == after.keys() and any("layers.0." in name for name in before)
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_int8_base_trains_and_merges_within_its_tolerance(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    from loraplug_causal_lm.testing import trained_tiny_run

    run_dir = trained_tiny_run(
        tmp_path,
        model={"quantization": "int8"},
        train={"max_steps": 2},
        eval={"sample_prompts": []},
        export=[{"kind": "merged"}],
    )
    trained = _trained(run_dir)
    assert isinstance(trained.get_base_model().model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear8bitLt)
    figures = json.loads((run_dir / "exports" / "merged" / "export.json").read_text())["figures"]
    # LLM.int8 multiplies 8-bit activations, which the merged float model does not: that rounding is the
    # kernel's, reported apart; the merge is held to the trained model computed on its dequantized weights.
    assert figures["quantized_kernel_drift"] > 0 and figures["max_abs_logit_diff_vs_dequantized"] < 1e-4
    assert figures["tolerance"] == 1e-3


def test_quantization_without_bitsandbytes_fails_at_recipe_check(
    lm_recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "bitsandbytes", None
    )  # what `import bitsandbytes` sees when it is not installed
    result = run_cli("recipe", "check", lm_recipe(model={"quantization": "nf4"}))
    assert result.exit_code == 2
    assert "`model.quantization` = 'nf4': QLoRA needs bitsandbytes, which is not installed" in result.stderr
