"""QLoRA: the frozen base stored in 4 or 8 bits through bitsandbytes, the adapter trained on top.

bitsandbytes (0.45+) runs on CPUs as well as CUDA GPUs, so the tiny presets train quantized in the
test suite. Everything here is imported by hook bodies only.
"""

from __future__ import annotations

from typing import Any

from loraplug import LoraplugError
from loraplug_causal_lm.options import BITSANDBYTES_INSTALL, CausalLMOptions

#: Why a merge never goes into the quantized weights themselves.
PEFT_2321 = (
    "merging into 4/8-bit weights rounds the merged weights back to the quantization grid, which loses most of "
    "the LoRA update and changes the outputs (peft#2321)"
)


def import_bitsandbytes(needed_for: str = "`model.quantization`", alternative: str = "remove `model.quantization`") -> Any:
    """bitsandbytes, or a clear error naming what to install."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise LoraplugError(
            f"{needed_for} needs bitsandbytes, which could not be imported ({exc})",
            fix=f"`{BITSANDBYTES_INSTALL}` (it runs on CPUs and CUDA GPUs), or {alternative}",
        ) from exc
    return bitsandbytes


def compute_dtype(options: CausalLMOptions) -> str:
    """The dtype a quantized base computes in: ``model.dtype``, or for ``auto`` bfloat16 where a CUDA GPU has it."""
    import torch

    if options.dtype != "auto":
        return options.dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def bnb_config(options: CausalLMOptions) -> Any:
    """The ``BitsAndBytesConfig`` for ``model.quantization``."""
    import torch
    from transformers import BitsAndBytesConfig

    import_bitsandbytes()
    if options.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype(options)),
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def is_quantized(module: Any) -> bool:
    """Whether ``module`` (a model or a PeftModel around one) holds bitsandbytes-quantized weights."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def prepare_for_training(model: Any, options: CausalLMOptions) -> Any:
    """peft's ``prepare_model_for_kbit_training``: frozen base, float32 norms, input grads for checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=options.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
