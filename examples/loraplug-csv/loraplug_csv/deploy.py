"""The text classifier as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

This is all a model kind writes to be exported by ``onnx`` and ``int8`` (and, being a transformers
model saved with ``save_pretrained``, ``bnb-8bit`` / ``bnb-4bit``): those plugins never import this one.
Imported by the ``loraplug_deployable`` hook body only (it imports torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loraplug import Deployable, MergeCheck, ModelBundle, RunContext
from loraplug.toolkit import dtype_name, parity_tolerance
from loraplug_csv.classifier import LIBRARIES
from loraplug_hf import quiet_libraries
from loraplug_hf.classifier import (
    batch_logits,
    classification_scores,
    classifier_logits,
    logit_difference,
    merged_classifier,
    token_inputs,
)

#: transformers model types whose traced ONNX export the example's tests check (the tiny-classifier
#: preset is a LLaMA); another family is exported only when the onnx export says ``any_family = true``.
VERIFIED_FAMILIES = ("llama",)
#: Traced at one shape, checked at another batch size and length with a right-padded row, so the check
#: proves the graph's axes are dynamic and that padding is honoured.
EXPORT_SHAPE, CHECK_SHAPE, PADDED = (2, 8), (3, 13), 4


def from_pretrained(path: Path | str, **kwargs: Any) -> Any:
    quiet_libraries(*LIBRARIES)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)


def merge_check(trained: Any, merged: Any, inputs: dict[str, Any], dtype: str) -> MergeCheck:
    """The merged copy against the trained model on ``inputs``, once; the trained model is left as it was."""
    difference = logit_difference(trained, merged, inputs)
    return MergeCheck(difference, parity_tolerance(dtype), {"max_abs_logit_diff_vs_trained": difference})


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """``loraplug_deployable`` of the text-classifier model kind."""
    trained = model.module
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    dtype = dtype_name(base.dtype)
    quiet_libraries(*LIBRARIES)
    merged = merged_classifier(trained)
    tokenizer = model.components["tokenizer"]
    vocab, pad_id = int(merged.config.vocab_size), int(tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(ctx.seed)
    inputs = token_inputs(vocab, pad_id, EXPORT_SHAPE, generator)
    check_inputs = token_inputs(vocab, pad_id, CHECK_SHAPE, generator, padded=PADDED)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    family = getattr(merged.config, "model_type", "?")

    def save_beside(directory: Path) -> None:
        merged.config.save_pretrained(str(directory))  # with the labels (id2label), which a user needs
        tokenizer.save_pretrained(str(directory))

    return Deployable(
        module=merged,
        inputs=inputs,
        check_inputs=check_inputs,
        probe=classifier_logits,
        output="logits",
        what=f"the merged {family} classifier",
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        value_name="logit",
        dtype=dtype,
        compute_dtype=dtype,
        save_beside=save_beside,
        from_pretrained=from_pretrained,
        loads_with="AutoModelForSequenceClassification.from_pretrained(path)",
        batch_outputs=batch_logits,
        score=classification_scores,
        merge_check=merge_check(trained, merged, check_inputs, dtype),
        export_unverified=None
        if family in VERIFIED_FAMILIES
        else f"the model family {family!r}; the text classifier's exports are checked for {', '.join(VERIFIED_FAMILIES)}",
        notes=["LoRA merged into a float32 copy; the classification head is the trained one"],
    )
