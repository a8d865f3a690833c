"""QLoRA: the frozen base stored in 4 or 8 bits through bitsandbytes, the adapter trained on top.

bitsandbytes (0.45+) runs on CPUs as well as CUDA GPUs, so the tiny presets train quantized in the
test suite. Everything here is imported by hook bodies only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loraplug import LoraplugError
from loraplug.toolkit import BITSANDBYTES_INSTALL, torch_dtype
from loraplug_causal_lm.options import CausalLMOptions

#: Why a merge never goes into the quantized weights themselves.
PEFT_2321 = (
    "merging into 4/8-bit weights rounds the merged weights back to the quantization grid, which loses most of "
    "the LoRA update and changes the outputs (peft#2321)"
)


def import_bitsandbytes(
    needed_for: str = "`model.quantization`", alternative: str = "remove `model.quantization`"
) -> Any:
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
    from transformers import BitsAndBytesConfig

    import_bitsandbytes()
    if options.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(compute_dtype(options)),
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def is_quantized(module: Any) -> bool:
    """Whether ``module`` (a model or a PeftModel around one) holds bitsandbytes-quantized weights."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def prepare_for_training(model: Any, options: CausalLMOptions) -> Any:
    """peft's ``prepare_model_for_kbit_training``: frozen base, float32 norms, input grads for checkpointing."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=options.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    keep_training_kernels(model)
    return model


def keep_training_kernels(model: Any) -> None:
    """Keep every 4-bit layer of ``model`` on the kernel it trains with, on every CPU.

    On a CPU with AVX512-BF16, bitsandbytes (0.48+) repacks a 4-bit layer the first time it runs in eval
    mode, for an inference-only kernel: the block scales are rounded to bfloat16 in place, the layer then
    computes in bfloat16 whatever ``bnb_4bit_compute_dtype`` says, and back in training it passes no
    gradient to its input (the kernel has no backward). A run evaluates at step 0, so without this the
    rest of its training silently backpropagated through no 4-bit layer, and its outputs depended on
    the host's instruction set.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # The flag bitsandbytes sets from the CPU's features at construction and reads on every forward.
            module.support_avx512bf16_for_cpu = False


@contextmanager
def dequantized_forward(model: Any, dtype: str) -> Iterator[None]:
    """Within: every bitsandbytes layer of ``model`` computes in float32 on its weights dequantized to ``dtype``.

    The weights are dequantized by transformers' own helper, as ``model.dequantize(dtype)`` does for the
    merge, so this is the trained model computed the way its merged export computes: what is left
    between the two is the merge itself, not the rounding of bitsandbytes' kernels (``bnb_4bit_compute_dtype``,
    LLM.int8's 8-bit activations), which a float model cannot reproduce.
    """
    import bitsandbytes as bnb
    import torch
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    target = torch_dtype(dtype)
    layers = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]

    def float32_forward(layer: Any) -> Any:
        def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
            weight = dequantize_bnb_weight(layer.weight, getattr(layer, "state", None)).to(target).float()
            bias = None if layer.bias is None else layer.bias.float()
            return torch.nn.functional.linear(x.float(), weight, bias).to(x.dtype)

        return forward

    # An accelerate hook may already have replaced a layer's forward on the instance: put back what was there.
    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = float32_forward(layer)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
