"""``--smoke`` in the recipe's own model family: a shrunk random model of its architecture.

When the recipe's model has its config and tokenizer on this machine — a local directory, or a hub id
already in the Hugging Face cache (looked up with ``local_files_only``, never downloaded) — ``--smoke``
sets ``model.shrink``: the run builds a model of that architecture with few layers and a small width,
random weights (seeded) and the real tokenizer and chat template, so ``adapter.target_modules``, the chat
template and the family's code are all checked. Otherwise it falls back to the ``tiny-llama`` preset and
says so. :func:`smoke_overrides` decides without importing torch or transformers: recipe checks call it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from loraplug import LoraplugError

#: What every smoke run sets: float32 on CPU, and an attention kernel every machine has.
SMOKE_SETTINGS: dict[str, Any] = {"dtype": "float32", "attn_implementation": "sdpa"}
FALLBACK_PRESET = "tiny-llama"
#: One of these beside config.json means the tokenizer is there too.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

LAYERS = 2
HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 128
EXPERTS = 4
#: The size fields of transformers' configs under their families' names, and the shrunk value of each.
#: Anything else (model_type, vocabulary, norms, rope, activation, module names) is kept as it is.
SHRUNK: dict[str, int] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers"), LAYERS),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "word_embed_proj_dim"), HIDDEN),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"), INTERMEDIATE),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size"), INTERMEDIATE // 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads"), HEADS),
    **dict.fromkeys(("num_local_experts", "num_experts"), EXPERTS),
    "head_dim": HEAD_DIM,
}
#: Key/value head counts: grouped-query attention keeps being grouped, multi-query keeps one head.
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv")
#: Experts chosen per token: at most 2 of the shrunk EXPERTS.
EXPERTS_PER_TOKEN = ("num_experts_per_tok", "top_k")
#: The directory a shrunk model is built into is named by a hash of this request; bump on build changes.
VERSION = 1


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def local_source(pretrained: str, base_dir: Path | None = None, revision: str | None = None) -> Path | None:
    """The local directory holding ``pretrained``'s config.json and tokenizer — the directory itself, or a hub
    id's snapshot in the Hugging Face cache — or ``None`` when they are not on this machine."""
    path = Path(pretrained).expanduser()
    candidates = (
        [path] if path.is_absolute() else [p for p in (base_dir and base_dir / path, Path.cwd() / path) if p]
    )
    for candidate in candidates:
        if (candidate / "config.json").is_file() and has_tokenizer(candidate):
            return candidate.absolute()
    if path.is_absolute() or pretrained.startswith((".", "~")) or pretrained.count("/") > 1:
        return None  # a path, not a hub id
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(pretrained, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return snapshot if has_tokenizer(snapshot) else None


def smoke_overrides(table: Mapping[str, Any], base_dir: Path) -> tuple[dict[str, Any], str | None]:
    """What ``--smoke`` sets in ``[model]`` (``KindSpec.smoke`` of causal-lm), and what it tells the user."""
    from loraplug_causal_lm.options import PRESETS

    pretrained = table.get("pretrained")
    if not isinstance(pretrained, str) or pretrained in PRESETS:
        return {
            "pretrained": pretrained if pretrained in PRESETS else FALLBACK_PRESET,
            **SMOKE_SETTINGS,
        }, None
    revision = table.get("revision") if isinstance(table.get("revision"), str) else None
    if local_source(pretrained, base_dir, revision) is not None:
        # The recipe's own attention where every machine has it (None: transformers' choice for the family —
        # sdpa where it has it; gemma2 and bloom do not); eager for GPU-only kernels (flash-attention).
        attention = table.get("attn_implementation")
        kept = {} if attention in (None, "sdpa", "eager") else {"attn_implementation": "eager"}
        return {"shrink": True, "dtype": "float32", **kept}, None
    note = (
        f"--smoke: the config and tokenizer of {pretrained!r} are not on this machine (neither a local directory "
        "with config.json and a tokenizer nor in the Hugging Face cache), so this smoke run uses the tiny-llama "
        "preset instead: adapter.target_modules and the chat template are checked on LLaMA, not on the recipe's "
        "own architecture. Download its config and tokenizer files (`hf download REPO config.json "
        "tokenizer.json tokenizer_config.json`) to smoke-test it in its own family"
    )
    return {"pretrained": FALLBACK_PRESET, **SMOKE_SETTINGS}, note


def shrink_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a transformers config as a dict) with its size fields shrunk, sub-models' configs too
    (a multimodal model's ``text_config`` and ``vision_config``).

    Per-layer lists (``layer_types``) are cut to the shrunk depth; key/value heads keep their grouping."""
    shrunk = dict(config)
    layers = next(
        (config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(config.get(k), int)),
        None,
    )
    heads = next(
        (config[k] for k in ("num_attention_heads", "n_head", "num_heads") if isinstance(config.get(k), int)),
        None,
    )
    for key, value in SHRUNK.items():
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            shrunk[key] = min(value, config[key]) if key in ("num_local_experts", "num_experts") else value
    for key in KV_HEADS:
        kv = config.get(key)
        if isinstance(kv, int) and not isinstance(kv, bool) and heads:
            shrunk[key] = HEADS if kv >= heads else 1 if kv == 1 else HEADS // 2
    for key in EXPERTS_PER_TOKEN:
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            shrunk[key] = min(config[key], 2)
    for key, value in config.items():
        if isinstance(value, list) and layers and len(value) == layers:
            shrunk[key] = value[:LAYERS]
        elif (
            isinstance(value, dict) and "model_type" in value
        ):  # a sub-model's config: text_config, vision_config
            shrunk[key] = shrink_config(value)
    return shrunk


def shrunk_dir(pretrained: str, revision: str | None, trust_remote_code: bool, cache_dir: Path) -> Path:
    """The directory of ``pretrained``'s shrunk random model under ``cache_dir``, built on first use."""
    import hashlib

    from loraplug.toolkit import build_once

    source = local_source(pretrained, None, revision)
    if source is None:
        raise LoraplugError(
            f"model.shrink needs the config and tokenizer of {pretrained!r} on this machine, and they are not "
            "(neither a local directory with config.json and a tokenizer nor in the Hugging Face cache)",
            where="model.shrink",
            fix="Download its config and tokenizer files, or set model.shrink = false",
        )
    # Named by what it is built from: the config and tokenizer files (not the weights, which it never reads).
    digest = hashlib.sha256(json.dumps([VERSION, trust_remote_code]).encode())
    for file in sorted(
        p for p in source.iterdir() if p.is_file() and p.suffix in (".json", ".model", ".txt", ".jinja")
    ):
        if not file.name.endswith(".index.json"):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    final = cache_dir / "presets" / f"shrunk-{digest.hexdigest()[:12]}"
    request = final.with_name(f"{final.name}.request.json")
    if not (final / "config.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = request.with_name(f"{request.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps({"source": str(source), "trust_remote_code": trust_remote_code}))
        os.replace(temporary, request)
    return build_once(final, build_shrunk, marker="config.json")


def build_shrunk(target: Path) -> None:
    """Write the shrunk model its request file names into ``target`` (a module-level function: distributed
    runs build in a subprocess, see ``loraplug.toolkit.build_once``)."""
    from loraplug_causal_lm.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from loraplug_hf import save_seeded

    name = target.name.lstrip(".").split(".tmp-")[0]
    request = json.loads((target.parent / f"{name}.request.json").read_text())
    source, remote = request["source"], request["trust_remote_code"]
    config = AutoConfig.from_pretrained(source, trust_remote_code=remote)
    shrunk = type(config).from_dict(shrink_config(config.to_dict()))
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
    make = partial(AutoModelForCausalLM.from_config, shrunk, trust_remote_code=remote, dtype=torch.float32)
    save_seeded(make, tokenizer, 0, target)


def describe(directory: Path) -> str:
    """``llama, 2 layers, hidden 64`` for the shrunk model in ``directory`` (read from its config.json)."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    layers = next((text[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in text), "?")
    width = next((text[k] for k in ("hidden_size", "n_embd", "d_model") if k in text), "?")
    return f"{config.get('model_type', '?')}, {layers} layers, hidden {width}"
