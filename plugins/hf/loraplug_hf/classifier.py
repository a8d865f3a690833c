"""What every sequence classifier built on a transformers decoder shares, for its training batches and its
deployable view (:class:`loraplug.Deployable`): right-padded rows, the logits every export is compared by,
example token inputs, the merged float32 copy, the figures a quantized copy is compared with, and the
whole deployable view built from those (:func:`classifier_deployable`).

Imports torch (import this module from hook bodies, not at a plugin's start-up); transformers only in
:func:`from_pretrained`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loraplug import Batch, Deployable, MergeCheck
from loraplug.toolkit import dtype_name, parity_tolerance, torch_dtype
from loraplug_hf import attach_peft, quiet_libraries

#: The libraries whose warnings and progress bars stay out of loraplug's output.
LIBRARIES = ("transformers", "peft")

__all__ = [
    "batch_logits",
    "classification_scores",
    "classifier_deployable",
    "classifier_logits",
    "classifier_with_new_head",
    "classifier_with_lora",
    "example_inputs",
    "from_pretrained",
    "logit_difference",
    "merged_classifier",
    "pad_right",
    "text_logits",
    "token_inputs",
    "weights_dtype",
]

#: Example inputs: traced at one shape, checked at another batch size and length whose first row is
#: right-padded, so the check proves the graph's axes are dynamic and that the padding is honoured.
EXPORT_SHAPE, CHECK_SHAPE, PADDED = (2, 8), (3, 13), 4


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded on the right with ``pad_id`` to the longest."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def classifier_logits(module: Any, inputs: dict[str, Any]) -> Any:
    """The class logits in float32, one row per text: a classifier's ``Deployable.probe``."""
    return module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()


def token_inputs(
    vocab: int, pad_id: int, shape: tuple[int, int], generator: torch.Generator, padded: int = 0
) -> dict[str, Any]:
    """Random ids that are never the pad id (a decoder classifier finds a text's end by it), with their
    attention mask; the first row's last ``padded`` positions padded as :func:`pad_right` pads them."""
    input_ids = torch.randint(0, vocab, shape, generator=generator)
    input_ids[input_ids == pad_id] = (pad_id + 1) % vocab
    attention_mask = torch.ones(shape, dtype=torch.long)
    if padded:
        input_ids[0, -padded:] = pad_id
        attention_mask[0, -padded:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def text_logits(
    module: Any, tokenizer: Any, texts: Sequence[str], max_length: int, per_pass: int = 16
) -> Any:
    """The class logits of ``texts`` (float32, on the CPU), each cut to ``max_length`` tokens and
    right-padded with the tokenizer's pad token, ``per_pass`` texts per forward pass."""
    device = next(module.parameters()).device
    rows = []
    for start in range(0, len(texts), per_pass):
        chunk = [tokenizer(text)["input_ids"][:max_length] for text in texts[start : start + per_pass]]
        ids, mask = pad_right(chunk, tokenizer.pad_token_id)
        rows.append(
            classifier_logits(module, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}).cpu()
        )
    return torch.cat(rows) if rows else torch.zeros((0, module.config.num_labels))


@torch.no_grad()
def batch_logits(module: Any, batch: Batch) -> Any:
    """The logits of a batch of the run's prepared data, on the CPU: a classifier's ``Deployable.batch_outputs``."""
    device = next(module.parameters()).device
    inputs = {name: batch.inputs[name].to(device) for name in ("input_ids", "attention_mask")}
    return classifier_logits(module, inputs).cpu()


@torch.no_grad()
def classification_scores(module: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Accuracy and mean cross-entropy over labelled batches (``labels``): a classifier's ``Deployable.score``."""
    right, loss, rows = 0, 0.0, 0
    for batch in batches:
        logits = batch_logits(module, batch)
        labels = batch.inputs["labels"].cpu()
        right += int((logits.argmax(dim=-1) == labels).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        rows += len(labels)
    return {"accuracy": right / max(rows, 1), "cross_entropy": loss / max(rows, 1)}


def merged_classifier(trained: Any) -> Any:
    """The trained classifier with its LoRA merged, in float32 on the CPU, in eval mode; ``trained`` is untouched.

    peft's ``merge_and_unload`` also puts the trained head (its ``modules_to_save`` copy) in place of the
    wrapper around the original one, so the copy is a plain transformers model.
    """
    module = copy.deepcopy(trained).to("cpu", torch.float32)
    if hasattr(module, "merge_and_unload"):
        module = module.merge_and_unload()
    return module.eval()


def logit_difference(trained: Any, other: Any, inputs: dict[str, Any]) -> float:
    """The largest logit difference of ``other`` (on the CPU) from ``trained`` on ``inputs``; ``trained``'s
    train/eval mode is left as it was."""
    was_training = trained.training
    trained.eval()
    try:
        device = next(trained.parameters()).device
        with torch.no_grad():
            expected = classifier_logits(trained, {k: v.to(device) for k, v in inputs.items()}).cpu()
            return float((classifier_logits(other, inputs) - expected).abs().max())
    finally:
        trained.train(was_training)


def weights_dtype(trained: Any) -> str:
    """The recipe name of the dtype of a (peft-wrapped) model's base weights."""
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    return dtype_name(base.dtype)


def example_inputs(vocab: int, pad_id: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inputs, check_inputs)`` of a deployable classifier: the shapes to trace with, and other shapes
    with a padded row (seeded, so every export of a run is checked on the same inputs)."""
    generator = torch.Generator().manual_seed(seed)
    traced = token_inputs(vocab, pad_id, EXPORT_SHAPE, generator)
    return traced, token_inputs(vocab, pad_id, CHECK_SHAPE, generator, padded=PADDED)


def from_pretrained(path: Path | str, **kwargs: Any) -> Any:
    """``AutoModelForSequenceClassification.from_pretrained``: a saved classifier read back as a user reads it."""
    quiet_libraries(*LIBRARIES)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)


def classifier_with_new_head(source: str, labels: Sequence[str], dtype: str, **kwargs: Any) -> Any:
    """The checkpoint at ``source`` as a sequence classifier with a head of one output per label, the
    labels named in its config; a head of another size already there is replaced by a new one.

    :param dtype: a recipe dtype name, or ``"auto"`` for the checkpoint's own.
    :param kwargs: more ``from_pretrained`` arguments (``revision``, ``trust_remote_code``).
    """
    return from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
        dtype="auto" if dtype == "auto" else torch_dtype(dtype),
        **kwargs,
    )


def classifier_with_lora(
    module: Any,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: Any,
    modules_to_save: Sequence[str] | None = None,
) -> Any:
    """``module`` wrapped in peft LoRA of the sequence-classification task, which trains the
    classification head in full beside the LoRA and saves it with the adapter (``modules_to_save``:
    more modules trained and saved so)."""
    quiet_libraries(*LIBRARIES)
    from peft import LoraConfig, TaskType

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    return attach_peft(module, config)


def classifier_deployable(
    trained: Any, tokenizer: Any, *, seed: int, verified_families: Sequence[str], what: str = "classifier"
) -> Deployable:
    """A sequence classifier's deployable view (``loraplug_deployable``): the LoRA merged into a float32
    copy with the trained head, token inputs, logits, its config (labels, pad id) and tokenizer saved beside.

    :param trained: the trained (peft) model; it is left as it was.
    :param tokenizer: its tokenizer, with a pad token.
    :param seed: for the example inputs (``ctx.seed``).
    :param verified_families: the model types whose traced (ONNX) export the plugin's tests check; another
        family is exported only when the export says so (``export_unverified``).
    :param what: the model, for messages (``"the merged llama <what>"``).
    """
    quiet_libraries(*LIBRARIES)
    dtype = weights_dtype(trained)
    merged = merged_classifier(trained)
    inputs, checked = example_inputs(int(merged.config.vocab_size), int(tokenizer.pad_token_id), seed)
    difference = logit_difference(trained, merged, checked)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    family = str(getattr(merged.config, "model_type", "?"))

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
        what=f"the merged {family} {what}",
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
        if family in verified_families
        else f"the model family {family!r}; the {what}'s traced export is checked for {', '.join(verified_families)}",
        notes=["LoRA merged into a float32 copy; the classification head is the trained one"],
    )
