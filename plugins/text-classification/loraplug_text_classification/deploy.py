"""The sequence classifier as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

The ``merged`` export and the modality-neutral ``onnx``, ``int8`` and ``bnb-*`` exports all take the
model from here; none of those plugins imports this one. What any decoder classifier's view shares
(the probe, example inputs, the merge) is ``loraplug_hf.classifier``'s. Imported by hook bodies only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loraplug import Deployable, MergeCheck, ModelBundle, RunContext
from loraplug.toolkit import dtype_name, parity_tolerance
from loraplug_hf import quiet_libraries
from loraplug_hf.classifier import (
    batch_logits,
    classification_scores,
    classifier_logits,
    logit_difference,
    merged_classifier,
    token_inputs,
)
from loraplug_text_classification.presets import LIBRARIES

#: Model types whose traced (ONNX) export this plugin's tests check; another family exports when the
#: onnx export says ``any_family = true`` (its parity check still guards the result).
VERIFIED_FAMILIES = ("llama", "gpt2")
#: Traced at one shape, checked at another batch size and length with a right-padded row: the check
#: proves the graph's axes are dynamic and that the classifier still reads the last real token.
EXPORT_SHAPE, CHECK_SHAPE, PADDED = (2, 8), (3, 13), 5


def from_pretrained(path: Path | str, **kwargs: Any) -> Any:
    """A saved classifier read back, as a user reads the merged export."""
    quiet_libraries(*LIBRARIES)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)


def base_dtype(trained: Any) -> str:
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    return dtype_name(base.dtype)


def example_inputs(model: ModelBundle, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inputs, check_inputs)``: the shapes to trace with, and other shapes with a padded row."""
    vocab = int(model.module.config.vocab_size)
    pad_id = int(model.components["tokenizer"].pad_token_id)
    generator = torch.Generator().manual_seed(seed)
    traced = token_inputs(vocab, pad_id, EXPORT_SHAPE, generator)
    return traced, token_inputs(vocab, pad_id, CHECK_SHAPE, generator, padded=PADDED)


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """``loraplug_deployable`` of the sequence-classifier model kind."""
    quiet_libraries(*LIBRARIES)
    trained = model.module
    dtype = base_dtype(trained)
    merged = merged_classifier(trained)
    inputs, checked = example_inputs(model, ctx.seed)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    family = str(getattr(merged.config, "model_type", "?"))
    tokenizer = model.components["tokenizer"]
    difference = logit_difference(trained, merged, checked)

    def save_beside(directory: Path) -> None:
        # The config carries the label names (id2label / label2id) and the pad id the head reads by.
        merged.config.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))

    return Deployable(
        module=merged,
        inputs=inputs,
        check_inputs=checked,
        probe=classifier_logits,
        output="logits",
        what=f"the merged {family} sequence classifier",
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        value_name="logit",
        dtype=dtype,
        compute_dtype=dtype,
        save_beside=save_beside,
        from_pretrained=from_pretrained,
        loads_with="AutoModelForSequenceClassification.from_pretrained(path)",
        batch_outputs=batch_logits,
        score=classification_scores,
        merge_check=MergeCheck(
            difference, parity_tolerance(dtype), {"max_abs_logit_diff_vs_trained": difference}
        ),
        export_unverified=None
        if family in VERIFIED_FAMILIES
        else f"the model family {family!r}; the sequence classifier's traced export is checked for "
        f"{', '.join(VERIFIED_FAMILIES)}",
        notes=["LoRA merged into a float32 copy; the classification head is the trained one"],
    )
