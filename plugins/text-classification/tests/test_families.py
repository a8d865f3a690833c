"""The classifier on every causal-LM family the causal-lm plugin trains: a base checkpoint of each (built
locally from a small config, its tokenizer without a pad token) loads as a sequence classifier, takes LoRA
with only the adapter and the head trainable, classifies a right-padded batch as it classifies each text
alone, and merges into a plain model that computes the same logits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug import RunContext
from loraplug.plugins import PluginHost
from loraplug.testing import write_recipe
from loraplug.toolkit import check_recipe

#: Small settings per transformers model type (one layer, width 32).
ATTENTION = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
GQA = {**ATTENTION, "intermediate_size": 64, "num_key_value_heads": 2}
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": GQA,
    "mistral": GQA,
    "mixtral": {**GQA, "num_local_experts": 2, "num_experts_per_tok": 1},
    "qwen2": GQA,
    "qwen3": {**GQA, "head_dim": 8},
    "gemma2": {**GQA, "head_dim": 8},
    "gemma3_text": {**GQA, "head_dim": 8},
    "phi3": GQA,
    "gpt2": {"n_embd": 32, "n_layer": 1, "n_head": 4},
    "gpt_neox": {**ATTENTION, "intermediate_size": 64},
    "opt": {**ATTENTION, "ffn_dim": 64, "word_embed_proj_dim": 32},
    "falcon": ATTENTION,
    "bloom": {"hidden_size": 32, "n_layer": 1, "n_head": 4},
}
TEXTS = ["a longer text to classify", "short", "mid length one"]
END = "<|endoftext|>"
pytestmark = pytest.mark.slow


def _base(directory: Path, family: str) -> None:
    """A random causal LM of ``family`` saved as a checkpoint, with a tokenizer that has no pad token."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from loraplug_hf import byte_level_tokenizer

    tokenizer = byte_level_tokenizer((END,), bos=END, eos=END, pad=None)
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
        **FAMILIES[family],
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_causal_lm_family_becomes_a_classifier_with_lora(family: str, tmp_path: Path) -> None:
    from loraplug_hf.classifier import merged_classifier
    from loraplug_text_classification.model import build, logits, wrap

    _base(tmp_path / "base", family)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in TEXTS))
    path = write_recipe(
        tmp_path / "r.toml",
        {
            "run": {"name": "f", "output_dir": str(tmp_path / "runs")},
            "data": {"kind": "labelled-jsonl", "path": "d.jsonl"},
            "model": {
                "kind": "sequence-classifier",
                "pretrained": str(tmp_path / "base"),
                "labels": ["x", "y", "z"],
            },
            "adapter": {"kind": "lora", "r": 4},
        },
    )
    recipe = check_recipe(path, PluginHost.load())
    ctx = RunContext(recipe=recipe, run_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    model = wrap(recipe.adapter.options, build(recipe.model.options, ctx))

    trainable = [name for name, p in model.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or ".score." in name for name in trainable), trainable
    assert any(".score." in name for name in trainable)  # the head trains in full
    tokenizer = model.components["tokenizer"]
    assert tokenizer.pad_token == END and model.module.config.pad_token_id == 0
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, parameter in model.module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    model.module.eval()
    batched = logits(model, TEXTS, 64)
    alone = torch.cat([logits(model, [text], 64) for text in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-5), (batched - alone).abs().max()
    merged = merged_classifier(model.module)
    assert type(merged).__name__.endswith("ForSequenceClassification")
    as_merged = logits(replace(model, module=merged), TEXTS, 64)
    assert torch.allclose(as_merged, batched, atol=1e-4), (as_merged - batched).abs().max()
