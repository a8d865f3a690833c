"""The ``sequence-classifier`` model kind: ``AutoModelForSequenceClassification`` on a causal-LM base, LoRA through peft.

Imported by hook bodies only (it imports torch and transformers when called).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from loraplug import (
    Batch,
    DataBundle,
    LoraplugError,
    ModelBundle,
    PreparedData,
    Record,
    RunContext,
    StepResult,
)
from loraplug.toolkit import (
    encode_within_token_limits,
    local_dir,
    locate,
    model_load_error,
)
from loraplug_hf import quiet_libraries
from loraplug_text_classification.labels import label_index, resolve_labels
from loraplug_text_classification.options import LoraOptions, SequenceClassifierOptions
from loraplug_text_classification.presets import LIBRARIES, PRESETS

MODEL_KIND = "sequence-classifier"
#: Texts classified per forward pass outside training (metrics, samples, export checks).
PREDICT_BATCH = 16


def load_tokenizer(source: str, options: SequenceClassifierOptions) -> Any:
    """The base's tokenizer, with a pad token: causal LMs often have none, and the end-of-text token serves."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=options.revision, trust_remote_code=options.trust_remote_code
    )
    if tokenizer.pad_token is None:
        # Safe: the classifier reads the last token that is not padding, and the texts carry no end-of-text.
        if tokenizer.eos_token is None:
            raise LoraplugError(
                f"The tokenizer of {options.pretrained} has neither a pad token nor an end-of-text token to pad with",
                where="model.pretrained",
                fix="Use a base whose tokenizer defines pad_token or eos_token",
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build(options: SequenceClassifierOptions, ctx: RunContext) -> ModelBundle:
    """The base with a new head of one output per label, frozen; the labels named in its config."""
    quiet_libraries(*LIBRARIES)
    from loraplug_hf.classifier import classifier_with_new_head

    labels = resolve_labels(options, ctx.recipe.data.kind, ctx.recipe.data.options)
    source = locate(options.pretrained, ctx.cache_dir, PRESETS)
    try:
        tokenizer = load_tokenizer(source, options)
        module = classifier_with_new_head(
            source,
            labels,
            options.dtype,
            revision=options.revision,
            trust_remote_code=options.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        layout = "a transformers checkpoint (config.json, weights, tokenizer)"
        raise model_load_error(
            "sequence classifier", options.pretrained, source, exc, layout=layout, preset=PRESETS[0].name
        ) from exc
    # A decoder classifier reads the last token that is not padding: it must know which id pads.
    module.config.pad_token_id = tokenizer.pad_token_id
    module.requires_grad_(False)
    return ModelBundle(
        kind=MODEL_KIND,
        module=module,
        components={"tokenizer": tokenizer},
        base=options.pretrained,
        base_dir=local_dir(source),
    )


def labels_of(model: ModelBundle) -> list[str]:
    """The classifier's label names, in the order of its outputs (from its config)."""
    config = model.module.config
    return [config.id2label[i] for i in range(config.num_labels)]


def wrap(options: LoraOptions, model: ModelBundle) -> ModelBundle:
    """LoRA on ``target_modules``; peft's sequence-classification task trains the head in full and saves
    it with the adapter (``modules_to_save``)."""
    from loraplug_hf.classifier import classifier_with_lora

    module = classifier_with_lora(
        model.module,
        r=options.r,
        alpha=options.alpha,
        dropout=options.dropout,
        target_modules=options.target_modules,
        modules_to_save=options.modules_to_save,
    )
    return replace(model, module=module)


def class_weights(
    options: SequenceClassifierOptions, labels: Sequence[str], train: Sequence[Record]
) -> list[float]:
    """The loss weight of each label (``model.class_weights``); 1 each when unweighted."""
    setting = options.class_weights
    if setting == "none":
        return [1.0] * len(labels)
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(labels))
        if unknown:
            raise LoraplugError(
                f"model.class_weights names {', '.join(map(repr, unknown))}, which is not a label",
                where="model.class_weights",
                fix=f"The labels are {', '.join(labels)}",
            )
        return [float(setting.get(label, 1.0)) for label in labels]
    counts = Counter(label_index(record, labels) for record in train)
    # n / (classes × n_c): every class carries the same total weight, and the mean weight per sample is 1.
    return [len(train) / (len(labels) * counts[i]) if counts[i] else 0.0 for i in range(len(labels))]


def encode(tokenizer: Any, record: Record, labels: Sequence[str], max_length: int) -> dict[str, Any]:
    """One sample: the text's ids cut to ``max_length``, its label's index, its length before the cut."""
    ids = tokenizer(record["text"])["input_ids"]
    return {
        "id": record["id"],
        "input_ids": ids[:max_length],
        "label": label_index(record, labels),
        "tokens": len(ids),
    }


def collate(samples: list[dict[str, Any]], *, pad_id: int, weights: Sequence[float]) -> Batch:
    """Right-padded ids with their attention mask, one label per row, and each row's loss weight."""
    import torch

    from loraplug_hf.classifier import pad_right

    ids, mask = pad_right([s["input_ids"] for s in samples], pad_id)
    labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return Batch(
        inputs={
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "loss_weights": torch.tensor([weights[s["label"]] for s in samples], dtype=torch.float32),
        },
        num_targets=len(samples),
        num_tokens=int(mask.sum()),
        sample_ids=[s["id"] for s in samples],
    )


def prepare(
    model: ModelBundle, options: SequenceClassifierOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    """Encode every record; ``[data.clean]``'s token limits drop samples here, counted in its report."""
    tokenizer = model.components["tokenizer"]
    labels = labels_of(model)
    if not isinstance(data.train, Sequence):
        raise LoraplugError(
            "The sequence classifier trains on a list of records, not a stream",
            where="data.kind",
            fix="Use a data kind that reads its samples into memory (labelled-jsonl, labelled-csv)",
        )

    def split(records: Sequence[Record], name: str) -> tuple[list[dict[str, Any]], list[int]]:
        def encoded(record: Record) -> dict[str, Any]:
            return encode(tokenizer, record, labels, options.max_length)

        return encode_within_token_limits(data, name, records, encoded, lambda s: s["tokens"])

    train, kept = split(data.train, "train")
    val = split(data.val, "val")[0] if data.val is not None else None
    weights = class_weights(options, labels, data.train)
    truncated = sum(s["tokens"] > options.max_length for s in train)
    summary: dict[str, Any] = {"truncated texts": truncated} if truncated else {}
    if options.class_weights != "none":
        summary["class weights"] = {label: round(w, 4) for label, w in zip(labels, weights, strict=True)}
    return PreparedData(
        train=train,
        val=val,
        collate=partial(collate, pad_id=tokenizer.pad_token_id, weights=weights),
        sample_weights=[data.weights[i] for i in kept] if data.weights is not None else None,
        summary=summary,
    )


def loss_sum(module: Any, batch: Batch) -> StepResult:
    """Cross-entropy summed over the rows, each weighted by its class (the core divides by the step's rows)."""
    import torch.nn.functional as F

    inputs = batch.inputs
    logits = module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    losses = F.cross_entropy(logits.float(), inputs["labels"], reduction="none")
    return StepResult(loss_sum=(losses * inputs["loss_weights"]).sum(), num_targets=batch.num_targets)


def logits(model: ModelBundle, texts: Sequence[str], max_length: int) -> Any:
    """The class logits of ``texts`` (float32, on the CPU), ``PREDICT_BATCH`` texts per forward pass."""
    from loraplug_hf.classifier import text_logits

    tokenizer = model.components["tokenizer"]
    return text_logits(model.module, tokenizer, texts, max_length, per_pass=PREDICT_BATCH)
