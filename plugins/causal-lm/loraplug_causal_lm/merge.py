"""The trained model with its adapter folded in, built beside it: the trained model is never modified.

Exports that deploy a single model start from :func:`merged_model` — ``merged`` here, and every
exporter of other plugins (``onnx``, ``int8``…) through the deployable view (deploy.py) — so a LoRA
update is folded in one way everywhere, once per run, and checked once (:func:`measure_merge`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loraplug import LoraplugError, MergeCheck, ModelBundle, RunContext
from loraplug.toolkit import DTYPE_NAMES, parity_tolerance
from loraplug_causal_lm.model import load_causal_lm
from loraplug_causal_lm.options import CausalLMOptions


@dataclass
class MergedModel:
    """A merged causal LM in float32, in eval mode.

    :param module: the transformers model, LoRA (and ``modules_to_save``) folded in.
    :param tokenizer: the base's tokenizer.
    :param trained_dtype: the dtype the trained model computed in (what ``dtype = "auto"`` saves).
    :param notes: what the user should know about how it was made.
    """

    module: Any
    tokenizer: Any
    trained_dtype: str
    notes: list[str] = field(default_factory=list)


def _dequantized_base(options: CausalLMOptions, ctx: RunContext) -> tuple[Any, Any, str]:
    """The base quantized exactly as for training, then dequantized: the weights the trained model saw."""
    import torch

    from loraplug_causal_lm.quantized import compute_dtype

    dtype = compute_dtype(options)
    # Quantized on the device training used (the first GPU, else the CPU), so the codes are the same.
    base, tokenizer = load_causal_lm(options, ctx.cache_dir)
    base = base.dequantize(dtype=getattr(torch, dtype))
    # transformers leaves these flags set after dequantize(); peft and accelerate read them.
    base.is_loaded_in_4bit = base.is_loaded_in_8bit = False
    return base.to("cpu", torch.float32), tokenizer, dtype


def quantized_merge_refused(options: CausalLMOptions) -> LoraplugError:
    """Why ``dequantize = false`` is refused: a merge into the 4/8-bit weights loses the update."""
    from loraplug_causal_lm.quantized import PEFT_2321

    return LoraplugError(
        f"Refusing to merge the adapter into the {options.quantization} base: {PEFT_2321}",
        fix="Leave `dequantize = true` (merge into the base dequantized to its compute dtype), or export the adapter "
        'alone (kind = "peft") and load it on the quantized base',
    )


def merged_model(model: ModelBundle, ctx: RunContext, *, dequantize: bool = True) -> MergedModel:
    """Fold the trained adapter into a freshly loaded float32 base.

    A base trained quantized (QLoRA) is loaded quantized again, dequantized to its compute dtype and
    only then merged; merging into the quantized weights themselves is refused (peft#2321).
    """
    from peft import PeftModel

    from loraplug_causal_lm.quantized import is_quantized

    options = ctx.recipe.model.options
    assert isinstance(options, CausalLMOptions)  # noqa: S101
    notes: list[str] = []
    if is_quantized(model.module):
        if not dequantize:
            raise quantized_merge_refused(options)
        base, tokenizer, trained_dtype = _dequantized_base(options, ctx)
        notes.append(
            f"The base was trained quantized ({options.quantization}): it was dequantized to {trained_dtype} before "
            "merging, so the merged weights are the values the trained model computed with plus the LoRA update"
        )
    else:
        # The merge runs on the CPU in float32, where flash-attention does not: transformers' default kernel.
        base, tokenizer = load_causal_lm(
            options.model_copy(update={"attn_implementation": None}), ctx.cache_dir, dtype="float32"
        )
        trained_dtype = str(next(model.module.get_base_model().parameters()).dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory(prefix="loraplug-merge-") as adapter_dir:
        model.module.save_pretrained(adapter_dir, safe_serialization=True)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload(safe_merge=True)
    return MergedModel(merged.eval(), tokenizer, trained_dtype, notes)


def computes_in(trained: Any) -> tuple[str, ...]:
    """The floating dtypes of ``trained``'s parameters: a bfloat16 base with float32 LoRA computes in bfloat16."""
    found = {str(p.dtype).removeprefix("torch.") for p in trained.parameters() if p.is_floating_point()}
    return tuple(sorted(found & set(DTYPE_NAMES)))


def measure_merge(merged: MergedModel, trained: Any, logits: Callable[[Any], Any]) -> MergeCheck:
    """The merged model's logits against the trained model's, like with like, measured once.

    ``logits`` computes a model's logits on the probe (float32, on the CPU). A quantized trained model
    computes through bitsandbytes' kernels in whatever precision they pick (``bnb_4bit_compute_dtype``,
    8-bit activations for LLM.int8); its float32 merge cannot reproduce that rounding, and how large it is
    depends on the kernel and the host. So the merge is held to the trained model with each quantized
    layer computing in float32 on its weights dequantized as the merge dequantized them; the kernels'
    own share is reported beside it (``quantized_kernel_drift``) and not held against the merge.

    The default tolerance is the toolkit's for the dtype the reference computes in: float32 for a
    quantized base (dequantized, computed in float32), else the trained model's own parameters' — a
    bfloat16 base differs from its float32 merge by bfloat16 rounding alone.
    """
    from loraplug_causal_lm.quantized import dequantized_forward, is_quantized

    was_training = trained.training
    trained.eval()
    try:
        merged_logits = logits(merged.module)
        as_trained = logits(trained)
        reference = as_trained
        figures = {"max_abs_logit_diff_vs_trained": _max_abs_diff(merged_logits, as_trained)}
        quantized = is_quantized(trained)
        if quantized:
            with dequantized_forward(trained, merged.trained_dtype):
                reference = logits(trained)
            figures["max_abs_logit_diff_vs_dequantized"] = _max_abs_diff(merged_logits, reference)
            figures["quantized_kernel_drift"] = _max_abs_diff(as_trained, reference)
    finally:
        trained.train(was_training)
    difference = _max_abs_diff(merged_logits, reference)
    if quantized:
        return MergeCheck(
            difference,
            parity_tolerance("float32"),
            figures,
            subject="The merged model's logits",
            against="the trained model's computed on the same dequantized weights in float32: the merge does not "
            "reproduce the trained model",
            fix="Report it to the authors of loraplug-causal-lm with the run's recipe.toml, or raise the export's "
            "`tolerance` to keep the export anyway",
        )
    return MergeCheck(
        difference,
        parity_tolerance(*computes_in(trained)),
        figures,
        subject="The merged model's logits",
        against="the trained model's",
        fix="Raise the export's `tolerance` if the trained model ran in reduced precision, or report it",
    )


def check_parity(
    merged: MergedModel, trained: Any, logits: Callable[[Any], Any], *, tolerance: float | None = None
) -> dict[str, float]:
    """:func:`measure_merge`, held to ``tolerance`` (default: by the dtype computed in); raise when they differ."""
    return measure_merge(merged, trained, logits).verify(tolerance)


def _max_abs_diff(a: Any, b: Any) -> float:
    return float((a - b).abs().max())
