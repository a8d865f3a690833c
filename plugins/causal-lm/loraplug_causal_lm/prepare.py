"""Records → encoded samples (packed into rows where supported) and a collate function."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset

from loraplug import DataBundle, LoraplugError, ModelBundle, PreparedData, Record, RunContext
from loraplug.toolkit import TokenLimit, token_limit
from loraplug_causal_lm.encode import Encoded, Encoder, PadCollator, encode_all
from loraplug_causal_lm.options import CausalLMOptions
from loraplug_causal_lm.pack import PackedCollator, PackedRow, flex_training_blocker, pack, packs_exactly
from loraplug_causal_lm.pairs import prepare_pairs, wants_pairs

STREAM_BLOCKER = "the training data is a stream (rows are planned over the whole list of samples)"


def _check_text(record: Record) -> None:
    if "messages" not in record:
        raise LoraplugError(
            f"The causal-lm model needs text samples with messages, but sample {record.get('id', '?')} has "
            f"keys {', '.join(sorted(record))}",
            fix="Use a text data kind (jsonl, or webdataset with text samples) for a causal LM",
        )


class EncodedStream(IterableDataset):
    """A stream of records, encoded lazily."""

    def __init__(self, records: Iterable[Record], encoder: Encoder, limit: TokenLimit | None) -> None:
        super().__init__()
        self.records = records
        self.encoder = encoder
        self.limit = limit

    def __iter__(self) -> Iterator[Encoded]:
        for record in self.records:
            _check_text(record)
            sample = self.encoder.encode(record)
            if self.limit is not None and not self.limit.keep(record, sample.full_length):
                continue
            if sample.num_targets:
                yield sample


def packing_blocker(model: ModelBundle, data: DataBundle) -> str | None:
    """Why packing cannot be used for this list of samples, or ``None`` when it can (streams never pack)."""
    if data.weights is not None:
        return "data.balance_by / data.weight_by draw single samples, and a packed row holds several"
    return packs_exactly(model.module)


def prepare(model: ModelBundle, options: CausalLMOptions, data: DataBundle, ctx: RunContext) -> PreparedData:
    flex_blocker = flex_training_blocker(model.module)
    if flex_blocker:
        raise LoraplugError(
            f'model.attn_implementation = "flex_attention" cannot train on this machine: {flex_blocker}',
            where="model.attn_implementation",
            fix='Use "sdpa" (the default) to train on the CPU; keep "flex_attention" for CUDA GPUs',
        )
    if wants_pairs(data, ctx):  # preference pairs, for the dpo and orpo objectives
        return prepare_pairs(model, options, data, ctx)
    tokenizer = model.components["tokenizer"]
    encoder = Encoder(tokenizer, max_length=options.max_length, train_on_prompt=options.train_on_prompt)
    summary: dict[str, Any] = {}
    val: list[Encoded] | None = None
    if data.val:
        for record in data.val:
            _check_text(record)
        val = encode_all(encoder, list(data.val), token_limit(data, "val")).samples
    if not isinstance(data.train, Sequence):
        if options.packing:
            raise LoraplugError(
                f"model.packing = true, but {STREAM_BLOCKER}",
                where="model.packing",
                fix="Set model.packing = false (or leave it unset)",
            )
        stream = EncodedStream(data.train, encoder, token_limit(data, "train"))
        return PreparedData(
            train=stream, collate=PadCollator(tokenizer.pad_token_id), val=val, summary=summary
        )
    for record in data.train[:1]:
        _check_text(record)
    encoded = encode_all(encoder, list(data.train), token_limit(data, "train"))
    train = encoded.samples
    summary.update({k: v for k, v in encoded.counts.items() if v})
    if not train:
        raise LoraplugError(
            f"No training sample has a target token left after truncation to max_length={options.max_length}",
            fix="Raise model.max_length, or check that samples have responses",
        )
    blocker = None if options.packing is False else packing_blocker(model, data)
    if options.packing and blocker:
        raise LoraplugError(
            f"model.packing = true, but {blocker}",
            where="model.packing",
            fix="Set model.packing = false (or leave it unset)",
        )
    if options.packing is None and blocker:
        ctx.info(f"packing off: {blocker}")
    if options.packing is False or blocker:
        weights = [data.weights[i] for i in encoded.sources] if data.weights is not None else None
        return PreparedData(
            train=train,
            collate=PadCollator(tokenizer.pad_token_id),
            val=val,
            summary=summary,
            sample_weights=weights,
        )
    rows = pack(train, options.max_length)
    summary["packed rows"] = len(rows)
    summary["row fill"] = f"{_fill(rows, options.max_length):.0%}"
    ctx.info(f"packing: {len(train)} samples in {len(rows)} rows of up to {options.max_length} tokens")
    val_rows: list[PackedRow] | None = pack(val, options.max_length) if val else val  # type: ignore[assignment]
    return PreparedData(
        train=rows, collate=PackedCollator(tokenizer.pad_token_id), val=val_rows, summary=summary
    )


def _fill(rows: list[PackedRow], capacity: int) -> float:
    return sum(r.length for r in rows) / (len(rows) * capacity)
