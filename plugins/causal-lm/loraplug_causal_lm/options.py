"""Option models for every kind this plugin serves; imported at start-up, so pydantic only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from loraplug import InputFile, Options

#: Presets built from a config and cached locally; see presets.py.
PRESETS = ("tiny-llama",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class JsonlOptions(Options):
    """``[data] kind = "jsonl"``."""

    path: InputFile = Field(description="JSONL file: {prompt, response} or {messages: [{role, content}]} per line.")
    val_path: InputFile | None = Field(None, description="A separate validation file in the same format.")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="Hold out this fraction of `path` for validation (seeded).")
    on_error: Literal["error", "skip"] = Field("error", description="A malformed line stops the run, or is skipped and counted.")


def resolve_pretrained(value: str, info: ValidationInfo) -> str:
    """A preset name, a hub id, or a local directory (made absolute); a missing local path is an error."""
    if value in PRESETS:
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    candidates = [path] if path.is_absolute() else [p for p in (Path(base) / path if base else None, Path.cwd() / path) if p]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.absolute())
    looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1 or not _HUB_ID.match(value)
    if looks_local:
        if not (info.context or {}).get("check_files", True):
            return str(candidates[0].absolute())
        raise PydanticCustomError(
            "path_missing",
            "model directory not found: {path} (a hub id looks like org/name; presets: {presets})",
            {"path": str(candidates[0].absolute()), "presets": ", ".join(PRESETS)},
        )
    return value


class CausalLMOptions(Options):
    """``[model] kind = "causal-lm"``."""

    pretrained: str = Field(description="Hub id, local directory, or preset `tiny-llama`.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Dtype = Field("auto", description="Weights dtype; `auto` keeps the checkpoint's.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own Python code.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None, description="Attention kernel; default: transformers' choice."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    max_length: PositiveInt = Field(1024, description="Tokens per sample; longer samples are truncated and counted. With packing, also the length of a packed row.")
    packing: bool | None = Field(
        None,
        description="Pack several samples into each row of max_length tokens, each attending only to itself (per-sample "
        "position ids, block-diagonal mask). Default: on where supported — sdpa, eager or flash-attention, a list of "
        "samples, no balance_by/weight_by, and a start-up check that packed logits equal unpacked ones; true makes an "
        "unsupported case an error.",
    )
    train_on_prompt: bool = Field(False, description="Also learn the prompt tokens (default: only responses).")
    sample_max_new_tokens: PositiveInt = Field(64, description="Tokens generated for each sample prompt.")

    _pretrained = field_validator("pretrained")(resolve_pretrained)


class LoraOptions(Options):
    """``[adapter] kind = "lora"`` for causal LMs, through peft's ``LoraConfig``."""

    r: PositiveInt = Field(8, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or `all-linear` (every linear layer but the output head)."
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    init: Literal["default", "gaussian"] = Field("default", description="Initialisation of the LoRA A matrix.")
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full and saved with the adapter.")


class PeftExportOptions(Options):
    """``[[export]] kind = "peft"``."""

    model_card: bool = Field(True, description="Write a README.md model card beside the adapter.")


class MergedExportOptions(Options):
    """``[[export]] kind = "merged"``."""

    dtype: Dtype = Field("auto", description="Dtype of the saved weights; the merge itself is done in float32.")
    check_parity: bool = Field(True, description="Compare the merged model's logits with the trained model's.")
    tolerance: float = Field(1e-3, gt=0, description="Largest logit difference accepted by the parity check.")
