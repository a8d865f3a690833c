"""``tiny-llama``: a small LLaMA with a byte-level tokenizer, built from a config, cached on disk.

It is written with ``save_pretrained`` and loaded back with ``from_pretrained`` like any checkpoint,
so tests and ``--smoke`` exercise the real loading path, offline. Its weights are random but fixed
(seeded), so every machine builds the same base model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from loraplug.rundir import build_once

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )


def _build(target: Path) -> None:
    from loraplug_causal_lm.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    settings = {k: v for k, v in TINY_LLAMA.items() if k not in ("seed", "version")}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_LLAMA["seed"])
        model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def preset_dir(name: str, cache_dir: Path) -> Path:
    """The directory of preset ``name``, built on first use."""
    if name != "tiny-llama":
        raise KeyError(name)
    key = hashlib.sha256(json.dumps(TINY_LLAMA, sort_keys=True).encode()).hexdigest()[:12]
    return build_once(cache_dir / "presets" / f"{name}-{key}", _build, marker="config.json")
