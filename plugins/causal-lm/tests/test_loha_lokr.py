"""LoHa and LoKr (peft's LyCORIS adapters) on a causal LM: trained, exported as a PEFT adapter and merged."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug.testing import run_cli
from loraplug_causal_lm.export import PROBE_TEXT
from loraplug_causal_lm.presets import preset_dir

PEFT_TYPES = {"loha": "LOHA", "lokr": "LOKR"}


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    ids = tokenizer(PROBE_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_tiny_run_exports_peft_and_merged(lm_recipe: Any, tmp_path: Path, kind: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_cli(
        "run", lm_recipe(adapter={"kind": kind}, train={"lr": 1e-2}, eval={"sample_prompts": []})
    )
    assert result.exit_code == 0, result.output
    exports = tmp_path / "runs" / "tiny" / "exports"
    peft_figures = json.loads((exports / "peft" / "export.json").read_text())["figures"]
    assert peft_figures["peft_type"] == PEFT_TYPES[kind] and peft_figures["lora_only"] is False
    assert peft_figures["max_abs_diff_vs_trained"] == 0  # read back with peft, tensor by tensor
    name = "LoHa" if kind == "loha" else "LoKr"
    assert f"a {name} adapter" in result.stdout  # not "modules_to_save"
    assert f"# {name} adapter for tiny-llama" in (exports / "peft" / "README.md").read_text()
    merged_figures = json.loads((exports / "merged" / "export.json").read_text())["figures"]
    assert merged_figures["max_abs_logit_diff_vs_trained"] <= 1e-3

    # What a user does with each: peft loads the adapter onto the base; the merged model agrees with it.
    base_dir = preset_dir("tiny-llama", Path(os.environ["LORAPLUG_CACHE"]))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_logits = _logits(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, str(exports / "peft")).eval()
    assert type(adapted.peft_config["default"]).__name__ == {"loha": "LoHaConfig", "lokr": "LoKrConfig"}[kind]
    adapted_logits = _logits(adapted, tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(exports / "merged", dtype=torch.float32)
    assert float((_logits(merged, tokenizer) - adapted_logits).abs().max()) <= 1e-3
    assert float((adapted_logits - base_logits).abs().max()) > 1e-2  # the adapter learned something


def test_lycoris_on_a_quantized_base_is_refused_clearly(lm_recipe: Any) -> None:
    pytest.importorskip("bitsandbytes")
    result = run_cli("run", lm_recipe(model={"quantization": "nf4"}, adapter={"kind": "loha"}, export=[]))
    assert result.exit_code == 2
    assert "LoHa cannot train on a quantized base" in result.stderr and "Traceback" not in result.output


def test_lokr_options_are_checked(lm_recipe: Any) -> None:
    result = run_cli(
        "recipe", "check", lm_recipe(adapter={"kind": "lokr", "decompose_factor": 0, "dropout": 0.1})
    )
    assert result.exit_code == 2
    assert "adapter.decompose_factor" in result.stderr and "unknown key `adapter.dropout`" in result.stderr
