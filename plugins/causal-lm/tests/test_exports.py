"""The exports load in the tools users have, and compute what the trained model computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraplug.testing import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    from loraplug_causal_lm.testing import tiny_lm_recipe

    root = tmp_path_factory.mktemp("exports")
    os.chdir(root)
    recipe = tiny_lm_recipe(
        root, train={"max_steps": 6, "lr": 5e-3}, adapter={"modules_to_save": ["lm_head"]}
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


def _trained_logits(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost

    _, _, model = load_run(run_dir, PluginHost.load(), Console(quiet=True))
    model.module.eval()
    with torch.no_grad():
        return model.module(input_ids=ids).logits


PROBE = torch.tensor([[3, 50, 60, 70, 80, 90, 100, 2, 5, 40]])


def test_peft_export_loads_with_peft_and_matches(trained_run: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export = trained_run / "exports" / "peft"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "export.json"} <= {
        p.name for p in export.iterdir()
    }
    card = (export / "README.md").read_text()
    status = json.loads((trained_run / "run.json").read_text())
    assert f"- train_loss: {round(status['train_loss'], 4)}" in card
    assert f"- val_loss: {round(status['evaluations'][-1]['val_loss'], 4)}" in card
    config = json.loads((export / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, export).eval()
    with torch.no_grad():
        logits = model(input_ids=PROBE).logits
    torch.testing.assert_close(logits, _trained_logits(trained_run, PROBE), rtol=0, atol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(
        config["base_model_name_or_path"]
    )  # from_pretrained adapted `base`
    assert not torch.allclose(logits, untouched(input_ids=PROBE).logits, atol=1e-3)  # the adapter matters
    figures = json.loads((export / "export.json").read_text())["figures"]
    assert figures["max_abs_diff_vs_trained"] == 0.0
    from safetensors import safe_open

    with safe_open(export / "adapter_model.safetensors", "pt") as written:
        assert (
            figures["tensors_checked"] == len(list(written.keys())) > 2
        )  # LoRA A/B pairs and the saved lm_head


def test_peft_export_check_catches_a_tensor_that_differs(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    from rich.console import Console
    from safetensors.torch import load_file, save_file

    from loraplug import LoraplugError
    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug_causal_lm.export import _check_written_adapter

    _, _, model = load_run(trained_run, PluginHost.load(), Console(quiet=True))
    copy = shutil.copytree(trained_run / "exports" / "peft", tmp_path / "peft")
    _check_written_adapter(model, copy)  # the written adapter passes as it is
    tensors = load_file(copy / "adapter_model.safetensors")
    name = next(k for k in tensors if "lora_B" in k)
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, copy / "adapter_model.safetensors")
    with pytest.raises(LoraplugError, match="differs from the trained one by up to 1.00e-03"):
        _check_written_adapter(model, copy)


def test_merged_export_loads_with_transformers_and_matches(trained_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = trained_run / "exports" / "merged"
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        logits = model(input_ids=PROBE).logits
    torch.testing.assert_close(logits, _trained_logits(trained_run, PROBE), rtol=0, atol=1e-4)
    manifest = json.loads((export / "export.json").read_text())
    assert manifest["figures"]["max_abs_logit_diff_vs_trained"] < 1e-4
    assert {f["path"] for f in manifest["files"]} >= {"model.safetensors", "config.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])


def test_peft_export_with_a_module_saved_in_full_says_it_is_not_lora_only(trained_run: Path) -> None:
    manifest = json.loads((trained_run / "exports" / "peft" / "export.json").read_text())
    assert manifest["figures"]["lora_only"] is False
    assert manifest["figures"]["non_lora_tensors"] == ["lm_head.weight"]  # the recipe's modules_to_save
    note = next(n for n in manifest["notes"] if "not LoRA-only" in n)
    assert "lm_head.weight" in note and "convert_lora_to_gguf.py" in note and "`merged` export" in note


def test_an_adapter_of_lora_pairs_only_is_lora_only(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loraplug_causal_lm.export import non_lora_tensors

    pair = {"lora_A": torch.zeros(2, 8), "lora_B": torch.zeros(8, 2)}
    save_file(
        {f"base_model.model.model.layers.0.self_attn.q_proj.{k}.weight": v for k, v in pair.items()},
        tmp_path / "adapter_model.safetensors",
    )
    assert non_lora_tensors(tmp_path / "adapter_model.safetensors") == []


def test_merged_export_carries_no_machine_local_loading_keys(trained_run: Path) -> None:
    from transformers import AutoTokenizer

    export = trained_run / "exports" / "merged"
    for name in ("tokenizer_config.json", "config.json", "generation_config.json"):
        written = json.loads((export / name).read_text())
        assert not {"is_local", "local_files_only", "cache_dir", "_name_or_path", "name_or_path"} & set(
            written
        ), name
    assert AutoTokenizer.from_pretrained(export).pad_token == "<pad>"  # still loads, special tokens kept


def test_no_pickle_files_are_written(trained_run: Path) -> None:
    assert not [p for p in trained_run.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_generate_command_uses_the_trained_adapter(trained_run: Path) -> None:
    result = run_cli("generate", trained_run, "--prompt", "q: rain")
    assert result.exit_code == 0, result.output
    base = run_cli("generate", trained_run, "--prompt", "q: rain", "--base")
    assert base.exit_code == 0, base.output
    assert result.stdout.startswith("q: rain") and result.stdout != base.stdout


def test_generate_on_a_directory_that_is_no_run(tmp_path: Path) -> None:
    result = run_cli("generate", tmp_path, "--prompt", "x")
    assert result.exit_code == 2 and "is not a loraplug run directory" in result.stderr


def test_a_bfloat16_base_merges_within_the_tolerance_of_the_dtype_it_computes_in(tmp_path: Path) -> None:
    """A base loaded in bfloat16 computes in bfloat16, so its float32 merge differs from it by bfloat16's
    rounding alone (6.8e-3 on the quickstart), which a float32 tolerance (1e-3) refused: the check's
    default now comes from the dtype the trained model computes in."""
    from loraplug_causal_lm.testing import trained_tiny_run

    run_dir = trained_tiny_run(
        tmp_path,
        model={"dtype": "bfloat16"},
        train={"max_steps": 2},
        eval={"sample_prompts": []},
        export=[{"kind": "merged"}],
    )
    figures = json.loads((run_dir / "exports" / "merged" / "export.json").read_text())["figures"]
    assert figures["dtype"] == "bfloat16" and figures["tolerance"] == 6e-2
    assert 1e-3 < figures["max_abs_logit_diff_vs_trained"] < 6e-2  # above float32's tolerance: refused before
