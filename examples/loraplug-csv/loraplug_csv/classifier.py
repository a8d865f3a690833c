"""The ``text-classifier`` model kind: a transformers sequence classifier, its LoRA through peft.

Everything a model kind needs besides its own modelling comes from :mod:`loraplug.toolkit`: the tiny
preset for ``--smoke`` and tests, finding ``model.pretrained``, the error for a model that does not
load, dtype names, quiet libraries. Imported by hook bodies only (it imports torch when called).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from loraplug import (
    Batch,
    DataBundle,
    LoraplugError,
    ModelBundle,
    PreparedData,
    Record,
    RunContext,
    Sample,
    StepResult,
)
from loraplug.toolkit import (
    Preset,
    encode_within_token_limits,
    local_dir,
    locate,
    model_load_error,
)
from loraplug_csv.options import ClassifierOptions, LoraOptions
from loraplug_hf import byte_level_tokenizer, quiet_libraries, save_tiny_llama

MODEL_KIND = "text-classifier"
#: The libraries whose warnings and progress bars stay out of loraplug's output.
LIBRARIES = ("transformers", "peft")

TINY_CLASSIFIER: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "seed": 0,
    "version": 1,
}


def build_tiny_classifier(target: Path) -> None:
    """``tiny-classifier``: a two-layer LLaMA classifier with a byte-level tokenizer, seeded weights."""
    quiet_libraries(*LIBRARIES)
    from transformers import LlamaForSequenceClassification

    save_tiny_llama(LlamaForSequenceClassification, byte_level_tokenizer(), TINY_CLASSIFIER, target)


PRESETS = (Preset("tiny-classifier", TINY_CLASSIFIER, build_tiny_classifier, marker="config.json"),)


def build(options: ClassifierOptions, ctx: RunContext) -> ModelBundle:
    """The base classifier, frozen, with a head of ``len(options.labels)`` outputs."""
    quiet_libraries(*LIBRARIES)
    from transformers import AutoTokenizer

    from loraplug_hf.classifier import classifier_with_new_head

    source = locate(options.pretrained, ctx.cache_dir, PRESETS)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        module = classifier_with_new_head(source, options.labels, options.dtype)
    except (OSError, ValueError) as exc:
        layout = "a transformers checkpoint (config.json, weights, tokenizer)"
        raise model_load_error(
            "text classifier", options.pretrained, source, exc, layout=layout, preset="tiny-classifier"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder classifiers read the last token that is not padding: they must know which id pads.
    module.config.pad_token_id = tokenizer.pad_token_id
    module.requires_grad_(False)
    return ModelBundle(
        kind=MODEL_KIND,
        module=module,
        components={"tokenizer": tokenizer},
        base=options.pretrained,
        base_dir=local_dir(source),
    )


def wrap(options: LoraOptions, model: ModelBundle) -> ModelBundle:
    """LoRA on ``options.target_modules``; peft trains the new classification head in full beside it."""
    from loraplug_hf.classifier import classifier_with_lora

    targets = list(options.target_modules)
    module = classifier_with_lora(
        model.module, r=options.r, alpha=options.alpha, dropout=options.dropout, target_modules=targets
    )
    return replace(model, module=module)


def label_index(record: Record, labels: Sequence[str]) -> int:
    """The position of ``record``'s label in ``model.labels``; a label the model lacks is the user's to fix."""
    label = record.get("label")
    if isinstance(label, int) and 0 <= label < len(labels):
        return label
    if isinstance(label, str) and label in labels:
        return labels.index(label)
    raise LoraplugError(
        f"Sample {record.get('id')} has the label {label!r}, which is not in model.labels",
        where=str(record.get("id")),
        fix=f"Add it to model.labels (now {', '.join(labels)}), or correct the row",
    )


def encode(tokenizer: Any, options: ClassifierOptions, record: Record) -> dict[str, Any]:
    """One sample: the text's ids cut to ``max_length``, its label's index, and its length before the cut."""
    ids = tokenizer(record["text"])["input_ids"]
    return {
        "id": record["id"],
        "input_ids": ids[: options.max_length],
        "label": label_index(record, options.labels),
        "tokens": len(ids),
    }


def collate(samples: list[dict[str, Any]], *, pad_id: int) -> Batch:
    """Right-padded ids with their attention mask, and one label per row."""
    import torch

    from loraplug_hf.classifier import pad_right

    ids, mask = pad_right([s["input_ids"] for s in samples], pad_id)
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([s["label"] for s in samples])}
    return Batch(
        inputs=inputs,
        num_targets=len(samples),
        num_tokens=int(mask.sum()),
        sample_ids=[s["id"] for s in samples],
    )


def prepare(
    model: ModelBundle, options: ClassifierOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    """Encode every record; ``[data.clean]``'s token limits drop samples here, counted in its report."""
    tokenizer = model.components["tokenizer"]

    def split(records: Sequence[Record], name: str) -> tuple[list[dict[str, Any]], list[int]]:
        # [data.clean]'s token limits count what they drop in the data report.
        return encode_within_token_limits(
            data, name, records, partial(encode, tokenizer, options), lambda s: s["tokens"]
        )

    if not isinstance(data.train, Sequence):
        raise LoraplugError(
            "The text classifier trains on a list of records, not a stream", where="data.kind"
        )
    train, kept = split(data.train, "train")
    val = split(data.val, "val")[0] if data.val is not None else None
    weights = [data.weights[i] for i in kept] if data.weights is not None else None
    return PreparedData(
        train=train,
        val=val,
        collate=partial(collate, pad_id=tokenizer.pad_token_id),
        sample_weights=weights,
        unit="tokens",
    )


def loss_sum(module: Any, batch: Batch) -> StepResult:
    """Cross-entropy summed over the batch's rows (the core divides by the rows of the whole step)."""
    import torch.nn.functional as F

    logits = module(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"]).logits
    loss = F.cross_entropy(logits.float(), batch.inputs["labels"], reduction="sum")
    return StepResult(loss_sum=loss, num_targets=batch.num_targets)


def predict(model: ModelBundle, options: ClassifierOptions, records: Sequence[Record]) -> list[int]:
    """The predicted label index of each record (its ``label`` is ignored), in batches of 16."""
    from loraplug_hf.classifier import text_logits

    texts = [r["text"] for r in records]
    tokenizer = model.components["tokenizer"]
    predictions: list[int] = (
        text_logits(model.module, tokenizer, texts, options.max_length).argmax(-1).tolist()
    )
    return predictions


def generate(model: ModelBundle, options: ClassifierOptions, prompts: Sequence[str]) -> list[Sample]:
    """``eval.prompts`` are texts to classify: each sample is the label the model gives it."""
    records = [{"id": f"prompt {i}", "text": p} for i, p in enumerate(prompts)]
    return [
        Sample(prompt=p, text=options.labels[i])
        for p, i in zip(prompts, predict(model, options, records), strict=True)
    ]


def accuracy(model: ModelBundle, options: ClassifierOptions, data: DataBundle) -> float:
    """The fraction of validation records whose label the model predicts."""
    if not data.val:
        raise LoraplugError(
            "The metric accuracy needs validation rows", where="eval.metrics", fix="Set data.val_fraction"
        )
    truth = [label_index(r, options.labels) for r in data.val]
    predicted = predict(model, options, data.val)
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
