"""``tiny-llama``: a small LLaMA with a byte-level tokenizer, built from a config, cached on disk.

It is written with ``save_pretrained`` and loaded back with ``from_pretrained`` like any checkpoint,
so tests and ``--smoke`` exercise the real loading path, offline. Its weights are random but fixed
(seeded), so every machine builds the same base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplug.toolkit import Preset
from loraplug_hf import byte_level_tokenizer, save_tiny_llama

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]

# Each turn is "<|role|>content</s>", so an assistant turn ends in EOS and the model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "seed": 0,
    "version": 1,
}


def _build_tokenizer() -> Any:
    return byte_level_tokenizer(
        SPECIAL_TOKENS, bos="<s>", eos="</s>", pad="<pad>", chat_template=CHAT_TEMPLATE
    )


def _build(target: Path) -> None:
    from loraplug_causal_lm.quiet import quiet_libraries

    quiet_libraries()
    from transformers import LlamaForCausalLM

    save_tiny_llama(LlamaForCausalLM, _build_tokenizer(), TINY_LLAMA, target)


#: The presets ``model.pretrained`` may name (their names are options.PRESETS).
TINY_PRESETS = (Preset("tiny-llama", TINY_LLAMA, _build, marker="config.json"),)


def preset_dir(name: str, cache_dir: Path) -> Path:
    """The directory of preset ``name``, built on first use."""
    for preset in TINY_PRESETS:
        if preset.name == name:
            return preset.directory(cache_dir)
    raise KeyError(name)
