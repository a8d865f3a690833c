"""The text classifier as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

This is all a model kind writes to be exported by ``onnx`` and ``int8`` (and, being a transformers
model saved with ``save_pretrained``, ``bnb-8bit`` / ``bnb-4bit``): those plugins never import this one.
Imported by the ``loraplug_deployable`` hook body only (it imports torch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loraplug import Batch, Deployable, MergeCheck, ModelBundle, RunContext
from loraplug.toolkit import dtype_name, parity_tolerance
from loraplug_csv.classifier import LIBRARIES
from loraplug_hf import quiet_libraries

#: transformers model types whose traced ONNX export the example's tests check (the tiny-classifier
#: preset is a LLaMA); another family is exported only when the onnx export says ``any_family = true``.
VERIFIED_FAMILIES = ("llama",)
#: Traced at one shape, checked at another batch size and length with a right-padded row, so the check
#: proves the graph's axes are dynamic and that padding is honoured.
EXPORT_SHAPE, CHECK_SHAPE, PADDED = (2, 8), (3, 13), 4


def probe(module: Any, inputs: dict[str, Any]) -> Any:
    """The class logits, one row per text: what every export of a classifier is compared by."""
    return module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()


def token_inputs(
    vocab: int, pad_id: int, shape: tuple[int, int], generator: torch.Generator, padded: int = 0
) -> dict[str, Any]:
    """Random token ids (never the pad id: a decoder classifier reads the last token that is not padding)
    with their attention mask; the first row's last ``padded`` positions padded as the collate pads them."""
    input_ids = torch.randint(0, vocab, shape, generator=generator)
    input_ids[input_ids == pad_id] = (pad_id + 1) % vocab
    attention_mask = torch.ones(shape, dtype=torch.long)
    if padded:
        input_ids[0, -padded:] = pad_id
        attention_mask[0, -padded:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _on(module: Any, batch: Batch) -> dict[str, Any]:
    device = next(module.parameters()).device
    return {name: batch.inputs[name].to(device) for name in ("input_ids", "attention_mask")}


@torch.no_grad()
def batch_logits(module: Any, batch: Batch) -> Any:
    """The logits of a batch of the run's prepared data (one row per text, so no padding to leave out)."""
    return probe(module, _on(module, batch)).cpu()


@torch.no_grad()
def scores(module: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the batches' labelled rows: what int8 compares before and after."""
    right, loss, rows = 0, 0.0, 0
    for batch in batches:
        logits = batch_logits(module, batch)
        labels = batch.inputs["labels"].cpu()
        right += int((logits.argmax(dim=-1) == labels).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        rows += len(labels)
    return {"accuracy": right / max(rows, 1), "cross_entropy": loss / max(rows, 1)}


def from_pretrained(path: Path | str, **kwargs: Any) -> Any:
    quiet_libraries(*LIBRARIES)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)


def merged_copy(trained: Any) -> Any:
    """The trained classifier with its LoRA merged in (and its trained head kept): a float32 copy on the CPU."""
    quiet_libraries(*LIBRARIES)
    module = copy.deepcopy(trained).to("cpu", torch.float32)
    # A peft model: merging also puts the trained head copy in place of peft's wrapper around it.
    if hasattr(module, "merge_and_unload"):
        module = module.merge_and_unload()
    return module.eval()


def merge_check(trained: Any, merged: Any, inputs: dict[str, Any], dtype: str) -> MergeCheck:
    """The merged copy against the trained model on ``inputs``, once; the trained model is left as it was."""
    was_training = trained.training
    trained.eval()
    try:
        device = next(trained.parameters()).device
        with torch.no_grad():
            as_trained = probe(trained, {k: v.to(device) for k, v in inputs.items()}).cpu()
            difference = float((probe(merged, inputs) - as_trained).abs().max())
    finally:
        trained.train(was_training)
    return MergeCheck(difference, parity_tolerance(dtype), {"max_abs_logit_diff_vs_trained": difference})


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """``loraplug_deployable`` of the text-classifier model kind."""
    trained = model.module
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    dtype = dtype_name(base.dtype)
    merged = merged_copy(trained)
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
        probe=probe,
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
        score=scores,
        merge_check=merge_check(trained, merged, check_inputs, dtype),
        export_unverified=None
        if family in VERIFIED_FAMILIES
        else f"the model family {family!r}; the text classifier's exports are checked for {', '.join(VERIFIED_FAMILIES)}",
        notes=["LoRA merged into a float32 copy; the classification head is the trained one"],
    )
