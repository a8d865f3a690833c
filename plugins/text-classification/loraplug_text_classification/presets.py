"""Tiny causal-LM bases of two families for the classifier, built from configs and cached on disk.

Each is a causal LM saved with ``save_pretrained`` (as a real base checkpoint is), so loading it with
``AutoModelForSequenceClassification`` adds a new classification head exactly as it does for a hub
model. ``tiny-gpt2-classifier``'s tokenizer has no pad token, as GPT-2's has not: it proves the
classifier pads with the end-of-text token. Weights are random but seeded.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from loraplug.toolkit import Preset
from loraplug_hf import byte_level_tokenizer, quiet_libraries, save_seeded, save_tiny_llama

LIBRARIES = ("transformers", "peft")

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "seed": 0,
    "version": 1,
}

TINY_GPT2: dict[str, Any] = {
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 512,
    "seed": 0,
    "version": 1,
}

END_OF_TEXT = "<|endoftext|>"


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("seed", "version")}


def build_tiny_llama(target: Path) -> None:
    """``tiny-llama-classifier``: a two-layer LLaMA causal LM with a byte-level tokenizer (it has a pad token)."""
    quiet_libraries(*LIBRARIES)
    from transformers import LlamaForCausalLM

    save_tiny_llama(LlamaForCausalLM, byte_level_tokenizer(), TINY_LLAMA, target)


def build_tiny_gpt2(target: Path) -> None:
    """``tiny-gpt2-classifier``: a two-layer GPT-2 causal LM whose tokenizer, like GPT-2's, has no pad token."""
    quiet_libraries(*LIBRARIES)
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_level_tokenizer((END_OF_TEXT,), bos=END_OF_TEXT, eos=END_OF_TEXT, pad=None)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eot, eos_token_id=eot, **_settings(TINY_GPT2))
    save_seeded(partial(GPT2LMHeadModel, config), tokenizer, TINY_GPT2["seed"], target)


#: The presets ``model.pretrained`` may name (options.PRESETS lists their names).
PRESETS = (
    Preset("tiny-llama-classifier", TINY_LLAMA, build_tiny_llama),
    Preset("tiny-gpt2-classifier", TINY_GPT2, build_tiny_gpt2),
)
