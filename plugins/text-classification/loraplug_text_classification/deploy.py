"""The sequence classifier as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

The ``merged`` export and the modality-neutral ``onnx``, ``int8`` and ``bnb-*`` exports all take the
model from here; none of those plugins imports this one. Imported by hook bodies only (it imports torch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loraplug import Batch, Deployable, MergeCheck, ModelBundle, RunContext
from loraplug.toolkit import dtype_name, parity_tolerance
from loraplug_hf import quiet_libraries
from loraplug_text_classification.presets import LIBRARIES

#: Model types whose traced (ONNX) export this plugin's tests check; another family exports when the
#: onnx export says ``any_family = true`` (its parity check still guards the result).
VERIFIED_FAMILIES = ("llama", "gpt2")
#: Traced at one shape, checked at another batch size and length with a right-padded row: the check
#: proves the graph's axes are dynamic and that the classifier still reads the last real token.
EXPORT_SHAPE, CHECK_SHAPE, PADDED = (2, 8), (3, 13), 5


def probe(module: Any, inputs: dict[str, Any]) -> Any:
    """The class logits, one row per text: what every export of the classifier is compared by."""
    return module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()


def token_inputs(
    vocab: int, pad_id: int, shape: tuple[int, int], generator: torch.Generator, padded: int = 0
) -> dict[str, Any]:
    """Random ids that are never the pad id (the classifier finds a text's end by it), with their mask;
    the first row's last ``padded`` positions padded as the collate pads them."""
    input_ids = torch.randint(0, vocab, shape, generator=generator)
    input_ids[input_ids == pad_id] = (pad_id + 1) % vocab
    attention_mask = torch.ones(shape, dtype=torch.long)
    if padded:
        input_ids[0, -padded:] = pad_id
        attention_mask[0, -padded:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _on_device(module: Any, batch: Batch) -> dict[str, Any]:
    device = next(module.parameters()).device
    return {name: batch.inputs[name].to(device) for name in ("input_ids", "attention_mask")}


@torch.no_grad()
def batch_logits(module: Any, batch: Batch) -> Any:
    """The logits of a batch of the run's prepared data, on the CPU (one row per text: no padding to drop)."""
    return probe(module, _on_device(module, batch)).cpu()


@torch.no_grad()
def scores(module: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Accuracy and mean cross-entropy over labelled batches: what a quantized copy is compared by."""
    right, loss, rows = 0, 0.0, 0
    for batch in batches:
        logits = batch_logits(module, batch)
        labels = batch.inputs["labels"].cpu()
        right += int((logits.argmax(dim=-1) == labels).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        rows += len(labels)
    return {"accuracy": right / max(rows, 1), "cross_entropy": loss / max(rows, 1)}


def from_pretrained(path: Path | str, **kwargs: Any) -> Any:
    """A saved classifier read back, as a user reads the merged export."""
    quiet_libraries(*LIBRARIES)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)


def merged_copy(trained: Any) -> Any:
    """The trained classifier with its LoRA merged, in float32 on the CPU; the trained model is untouched.

    peft's ``merge_and_unload`` also puts the trained head (its ``modules_to_save`` copy) in place of the
    wrapper around the original one, so the copy is a plain transformers model.
    """
    module = copy.deepcopy(trained).to("cpu", torch.float32)
    if hasattr(module, "merge_and_unload"):
        module = module.merge_and_unload()
    return module.eval()


def compare(trained: Any, other: Any, inputs: dict[str, Any]) -> float:
    """The largest logit difference of ``other`` (on the CPU) from the trained model on ``inputs``."""
    was_training = trained.training
    trained.eval()
    try:
        device = next(trained.parameters()).device
        with torch.no_grad():
            expected = probe(trained, {k: v.to(device) for k, v in inputs.items()}).cpu()
            return float((probe(other, inputs) - expected).abs().max())
    finally:
        trained.train(was_training)


def base_dtype(trained: Any) -> str:
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    return dtype_name(base.dtype)


def check_inputs(model: ModelBundle, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inputs, check_inputs)``: the shapes to trace with, and other shapes with a padded row."""
    tokenizer = model.components["tokenizer"]
    vocab, pad_id = int(model.module.config.vocab_size), int(tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(seed)
    traced = token_inputs(vocab, pad_id, EXPORT_SHAPE, generator)
    return traced, token_inputs(vocab, pad_id, CHECK_SHAPE, generator, padded=PADDED)


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """``loraplug_deployable`` of the sequence-classifier model kind."""
    quiet_libraries(*LIBRARIES)
    trained = model.module
    dtype = base_dtype(trained)
    merged = merged_copy(trained)
    inputs, checked = check_inputs(model, ctx.seed)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    family = str(getattr(merged.config, "model_type", "?"))
    tokenizer = model.components["tokenizer"]
    difference = compare(trained, merged, checked)

    def save_beside(directory: Path) -> None:
        # The config carries the label names (id2label / label2id) and the pad id the head reads by.
        merged.config.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))

    return Deployable(
        module=merged,
        inputs=inputs,
        check_inputs=checked,
        probe=probe,
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
        score=scores,
        merge_check=MergeCheck(
            difference, parity_tolerance(dtype), {"max_abs_logit_diff_vs_trained": difference}
        ),
        export_unverified=None
        if family in VERIFIED_FAMILIES
        else f"the model family {family!r}; the sequence classifier's traced export is checked for "
        f"{', '.join(VERIFIED_FAMILIES)}",
        notes=["LoRA merged into a float32 copy; the classification head is the trained one"],
    )
