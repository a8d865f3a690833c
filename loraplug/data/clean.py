"""Cleaning a :class:`~loraplug.DataBundle` with the ``[data.clean]`` filters, and the token-length
filter a model's plugin applies with its own tokenizer.

Lists are cleaned at once, so the report has exact counts before any model loads. Streams are
cleaned as they are read, with fresh deduplication state for every pass (epoch).

Why the token filter is the model plugin's: tokens are counted by the model's tokenizer on the text
as the model will see it (chat template, special tokens) — which only the model's plugin knows,
after the model's tokenizer has loaded — and it must run before the plugin packs samples into rows.
The plugin calls :func:`token_limit` while it encodes; the counts land in the same report.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from loraplug.bundles import DataBundle, Record
from loraplug.data.filters import Filter, build_filters, record_text, sample_id
from loraplug.data.options import CleanOptions
from loraplug.data.report import DataReport, FilterCount, SplitReport

TOKEN_FILTER = "length_tokens"


def _passes(record: Record, filters: list[Filter], split: SplitReport, keep_examples: int) -> bool:
    for item in filters:
        why = item.reason(record)
        if why is not None:
            split.counter(item.name, item.description).remove(sample_id(record), record_text(record) or str(record.get("image", "")), why, keep_examples)
            return False
    return True


def _clean_list(records: Sequence[Record], filters: list[Filter], split: SplitReport, keep_examples: int) -> list[Record]:
    for item in filters:
        split.counter(item.name, item.description)  # every configured filter appears, removals or not
    kept = [r for r in records if _passes(r, filters, split, keep_examples)]
    split.before, split.after = len(records), len(kept)
    return kept


class CleanedStream:
    """A stream of records filtered as it is read; each pass starts with fresh deduplication state,
    primed with the validation records so that training never repeats one."""

    def __init__(self, records: Iterable[Record], options: CleanOptions, split: SplitReport, primer: Sequence[Record]) -> None:
        self.records = records
        self.options = options
        self.split = split
        self.primer = primer

    def __iter__(self) -> Iterator[Record]:
        filters = build_filters(self.options)
        scratch = SplitReport()
        for record in self.primer:
            _passes(record, filters, scratch, 0)
        for record in self.records:
            if _passes(record, filters, self.split, self.options.examples):
                yield record


def clean(data: DataBundle, options: CleanOptions) -> DataBundle:
    """``data`` with every configured filter applied; the report is ``.report`` of the result."""
    report = DataReport(options)
    filters = build_filters(options)
    val = _clean_list(list(data.val), filters, report.split("val"), options.examples) if data.val is not None else None
    # The filters keep what they saw of the validation records: training duplicates of them go too.
    train: Sequence[Record] | Iterable[Record]
    summary = dict(data.summary)
    if isinstance(data.train, Sequence):
        split = report.split("train")
        train = _clean_list(data.train, filters, split, options.examples)
        removed = (split.before or 0) - (split.after or 0)
        if removed:
            summary["removed by cleaning"] = removed
    else:
        train = CleanedStream(data.train, options, report.split("train"), val or [])
        report.notes.append("the training data is a stream: it is cleaned as it is read, so its counts are not known before training")
    if val is not None and data.val is not None and len(val) != len(data.val):
        summary["val removed by cleaning"] = len(data.val) - len(val)
    # The report lists splits in reading order: train first.
    report.splits = {name: report.splits[name] for name in ("train", "val") if name in report.splits}
    return replace(data, train=train, val=val, summary=summary, report=report)


class TokenLimit:
    """``min_tokens`` / ``max_tokens`` for one split: ask :meth:`keep` for each record with its token count."""

    def __init__(self, options: CleanOptions, split: SplitReport) -> None:
        self.low, self.high = options.min_tokens, options.max_tokens
        self.keep_examples = options.examples
        self.split = split
        description = (
            f"fewer than {self.low} or more than {self.high} tokens" if self.low is not None and self.high is not None
            else f"fewer than {self.low} tokens" if self.low is not None else f"more than {self.high} tokens"
        )  # fmt: skip
        self.counter: FilterCount = split.counter(TOKEN_FILTER, description + " (model tokenizer, before truncation)")

    def keep(self, record: Record, tokens: int) -> bool:
        why = None
        if self.low is not None and tokens < self.low:
            why = f"{tokens} tokens < {self.low}"
        elif self.high is not None and tokens > self.high:
            why = f"{tokens} tokens > {self.high}"
        if why is None:
            return True
        self.counter.remove(sample_id(record), record_text(record) or "", why, self.keep_examples)
        if self.split.after is not None:
            self.split.after -= 1
        return False


def token_limit(data: DataBundle, split: str) -> TokenLimit | None:
    """The token-length filter of ``[data.clean]`` for ``split`` ("train" or "val"), or ``None`` when the
    recipe sets no token limit. For model plugins: call it before encoding, then ``keep(record, n)``."""
    report = data.report
    if report is None or (report.options.min_tokens is None and report.options.max_tokens is None):
        return None
    return TokenLimit(report.options, report.split(split))
