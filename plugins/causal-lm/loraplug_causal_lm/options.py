"""Option models for every kind this plugin serves; imported at start-up, so pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from loraplug import InputDir, InputFile, Options
from loraplug import NoOptions as NoOptions  # named by path in plugin.py
from loraplug.toolkit import BITSANDBYTES_INSTALL, pretrained_source, require_package
from loraplug_hf.peft_options import LokrSettings

#: Presets built from a config and cached locally; see presets.py.
PRESETS = ("tiny-llama",)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
#: ``[model] quantization``: how the frozen base is stored for QLoRA (through bitsandbytes).
Quantization = Literal["nf4", "int8"]


def require_bitsandbytes(value: str | None) -> str | None:
    if value is not None:
        require_package("bitsandbytes", "QLoRA", BITSANDBYTES_INSTALL)
    return value


class JsonlOptions(Options):
    """``[data] kind = "jsonl"``."""

    path: InputFile = Field(
        description="JSONL file: {prompt, response} or {messages: [{role, content}]} per line."
    )
    val_path: InputFile | None = Field(None, description="A separate validation file in the same format.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of `path` for validation (seeded)."
    )
    on_error: Literal["error", "skip"] = Field(
        "error",
        description="A malformed line (or one longer than 64 MiB) stops the run, or is skipped and counted.",
    )


class CausalLMOptions(Options):
    """``[model] kind = "causal-lm"``."""

    pretrained: str = Field(description="Hub id, local directory, or preset `tiny-llama`.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    shrink: bool = Field(
        False,
        description="Train a shrunk random model of `pretrained`'s architecture (2 layers, width 64, its own module "
        "names, tokenizer and chat template) instead of its weights, which are not read: what `--smoke` sets when the "
        "model's config and tokenizer are on this machine (a local directory, or the Hugging Face cache).",
    )
    dtype: Dtype = Field("auto", description="Weights dtype; `auto` keeps the checkpoint's.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own Python code.")
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] | None = Field(
        None,
        description="Attention kernel; default: transformers' choice (sdpa). With packing, flex_attention skips the "
        "masked blocks of each packed row (CUDA only: PyTorch has no FlexAttention backward on the CPU); "
        "see docs/performance.md for when it pays.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    max_length: PositiveInt = Field(
        1024,
        description="Tokens per sample; longer samples are truncated and counted. With packing, also the length of a packed row.",
    )
    packing: bool | None = Field(
        None,
        description="Pack several samples into each row of max_length tokens, each attending only to itself (per-sample "
        "position ids, block-diagonal mask). Default: on where supported — sdpa, eager, flex or flash-attention, a list of "
        "samples, no balance_by/weight_by, and a start-up check that packed logits equal unpacked ones; true makes an "
        "unsupported case an error.",
    )
    train_on_prompt: bool = Field(
        False, description="Also learn the prompt tokens (default: only responses)."
    )
    loss_chunk_tokens: NonNegativeInt | Literal["auto"] = Field(
        "auto",
        description="Compute the loss this many target tokens at a time: the output head is applied to each chunk "
        "and recomputed in the backward, so memory does not grow with vocabulary × tokens (a 128k vocabulary's "
        "float32 logits of 8k tokens are 4 GiB), at the cost of one more pass of the head. The loss and gradients "
        "are the full logits' to float32 rounding. `auto`: chunks of 2^26 ÷ vocabulary tokens (523 for Llama 3) "
        "when a micro-batch's logits would hold more than 2^27 numbers, else the full logits — also where chunking "
        "is not exact (an architecture that changes its logits in a way loraplug does not know, FSDP, DeepSpeed), "
        "with a warning; a number there is an error. 0: always the full logits. Where the output head is a plain "
        "weight matrix (no LoRA on it, not in `modules_to_save`, no soft-capping or scaling), `auto` hands the "
        "summed loss to a fused kernel that computes each chunk's gradients in its forward instead of running the "
        "head again: Liger Kernel's on CUDA when `liger-kernel` is installed (extra `liger`), else torch's "
        "`linear_cross_entropy` in float32; a number always uses loraplug's own chunks. The run's log names the "
        "kernel.",
    )
    sample_max_new_tokens: PositiveInt = Field(64, description="Tokens generated for each sample prompt.")
    quantization: Quantization | None = Field(
        None,
        description="QLoRA: load the frozen base quantized with bitsandbytes — `nf4` (4-bit NormalFloat, double "
        "quantization) or `int8` (LLM.int8) — and prepare it with peft's `prepare_model_for_kbit_training`. "
        "Computation runs in `dtype` (`auto`: bfloat16 on a CUDA GPU that has it, else float32).",
    )

    _pretrained = field_validator("pretrained")(pretrained_source(PRESETS))
    _quantization = field_validator("quantization")(require_bitsandbytes)

    def optional_libraries(self) -> tuple[str, ...]:
        """What a run of this model imports of the libraries loraplug keeps out of plain runs (loraplug.optional)."""
        if self.trust_remote_code:
            return ("bitsandbytes", "torchao", "scipy")  # the repository's own code may import any of them
        return ("bitsandbytes",) if self.quantization else ()


class LoraOptions(Options):
    """``[adapter] kind = "lora"`` for causal LMs, through peft's ``LoraConfig``."""

    r: PositiveInt = Field(8, description="LoRA rank.")
    alpha: float = Field(
        16.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or `all-linear` (every linear layer but the output head).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    init: Literal["default", "gaussian"] = Field(
        "default", description="Initialisation of the LoRA A matrix."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter."
    )
    init_from: InputDir | None = Field(
        None,
        description="Start from an earlier LoRA adapter instead of B = 0: a PEFT adapter directory (adapter_config.json "
        "+ adapter_model.safetensors, e.g. an SFT run's exports/peft) with the same r, alpha and target modules. "
        "With train.objective = dpo it is also the reference (docs/preference.md).",
    )


class LycorisOptions(Options):
    """What LoHa and LoKr (LyCORIS' adapters, through peft) share."""

    r: PositiveInt = Field(8, description="Rank of each factor.")
    alpha: float = Field(8.0, gt=0, description="The update is scaled by alpha/r.")
    rank_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the rows of the update during training."
    )
    module_dropout: float = Field(
        0.0, ge=0, lt=1, description="Probability of skipping a layer's whole update during a training step."
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or `all-linear` (every linear layer but the output head).",
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter."
    )


class LohaOptions(LycorisOptions):
    """``[adapter] kind = "loha"`` for causal LMs, through peft's ``LoHaConfig``: ΔW = (A₁B₁) ⊙ (A₂B₂) · alpha/r."""


class LokrOptions(LokrSettings, LycorisOptions):
    """``[adapter] kind = "lokr"`` for causal LMs, through peft's ``LoKrConfig``: ΔW = W₁ ⊗ (A₂B₂) · alpha/r."""


class PeftExportOptions(Options):
    """``[[export]] kind = "peft"``."""

    model_card: bool = Field(True, description="Write a README.md model card beside the adapter.")
    check_parity: bool = Field(
        True,
        description="Read the written adapter back with peft and compare every tensor with the trained one.",
    )


class MergedExportOptions(Options):
    """``[[export]] kind = "merged"``."""

    dtype: Dtype = Field(
        "auto", description="Dtype of the saved weights; the merge itself is done in float32."
    )
    check_parity: bool = Field(
        True, description="Compare the merged model's logits with the trained model's."
    )
    tolerance: float | None = Field(
        None,
        gt=0,
        description="Largest logit difference accepted by the parity check; default by the dtype the trained model "
        "computes in: 1e-3 for float32, 2e-2 for float16, 6e-2 for bfloat16. With a quantized base the "
        "merged model is compared with the trained model computing in float32 on its dequantized weights, so the "
        "rounding of bitsandbytes' kernels (compute dtype, LLM.int8's 8-bit activations) is reported apart "
        "(`quantized_kernel_drift`), not counted.",
    )
    dequantize: bool = Field(
        True,
        description="With a quantized base (`model.quantization`): merge into the base dequantized to the compute "
        "dtype. `false` asks to merge into the 4/8-bit weights themselves, which is refused: rounding the merged "
        "weights back to 4/8 bits loses most of the LoRA update (peft#2321).",
    )
