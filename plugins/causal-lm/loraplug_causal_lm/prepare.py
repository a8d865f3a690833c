"""Records → encoded samples and a collate function, for lists and for streams."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from torch.utils.data import IterableDataset

from loraplug import DataBundle, LoraplugError, ModelBundle, PreparedData, Record
from loraplug_causal_lm.encode import Encoded, Encoder, PadCollator, encode_all
from loraplug_causal_lm.options import CausalLMOptions


def _check_text(record: Record) -> None:
    if "messages" not in record:
        raise LoraplugError(
            f"The causal-lm model needs text samples with messages, but sample {record.get('id', '?')} has "
            f"keys {', '.join(sorted(record))}",
            fix="Use a text data kind (jsonl, or webdataset with text samples) for a causal LM",
        )


class EncodedStream(IterableDataset):
    """A stream of records, encoded lazily."""

    def __init__(self, records: Iterable[Record], encoder: Encoder) -> None:
        super().__init__()
        self.records = records
        self.encoder = encoder

    def __iter__(self) -> Iterator[Encoded]:
        for record in self.records:
            _check_text(record)
            sample = self.encoder.encode(record)
            if sample.num_targets:
                yield sample


def prepare(model: ModelBundle, options: CausalLMOptions, data: DataBundle) -> PreparedData:
    tokenizer = model.components["tokenizer"]
    encoder = Encoder(tokenizer, max_length=options.max_length, train_on_prompt=options.train_on_prompt)
    collate = PadCollator(tokenizer.pad_token_id)
    summary: dict[str, int] = {}
    val = None
    if data.val:
        for record in data.val:
            _check_text(record)
        val, _ = encode_all(encoder, list(data.val))
    if not isinstance(data.train, Sequence):
        return PreparedData(train=EncodedStream(data.train, encoder), collate=collate, val=val, summary=summary)
    for record in data.train[:1]:
        _check_text(record)
    train, counts = encode_all(encoder, list(data.train))
    summary.update({k: v for k, v in counts.items() if v})
    if not train:
        raise LoraplugError(
            f"No training sample has a target token left after truncation to max_length={options.max_length}",
            fix="Raise model.max_length, or check that samples have responses",
        )
    return PreparedData(train=train, collate=collate, val=val, summary=summary)
