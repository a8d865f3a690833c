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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from loraplug.bundles import DataBundle, Record, record_text
from loraplug.data.filters import (
    CharLengthOptions,
    Filter,
    ImageDedupOptions,
    MinResolutionOptions,
    NearDedupOptions,
    NoFilterOptions,
    PatternOptions,
    builtin_filter,
    sample_id,
)
from loraplug.data.options import CleanOptions
from loraplug.data.report import DataReport, FilterCount, SplitReport
from loraplug.errors import LoraplugError

TOKEN_FILTER = "length_tokens"


@dataclass(frozen=True)
class PlannedFilter:
    """One filter a run applies: its kind, its validated options, and the recipe key that asked for it."""

    kind: str
    options: Any
    key: str


@dataclass(frozen=True)
class BuiltFilter:
    plan: PlannedFilter
    filter: Filter

    @property
    def description(self) -> str:
        return str(getattr(self.filter, "description", "") or self.plan.kind)


#: Builds a filter from its kind and options: the ``loraplug_build_filter`` hook in a run.
FilterBuilder = Callable[[str, Any], Filter]


def plan_filters(options: CleanOptions, listed: Sequence[tuple[str, Any]] = ()) -> list[PlannedFilter]:
    """The filters ``[data.clean]`` asks for, in the order they run: the core's cheap checks, then the
    ``[[data.clean.filters]]`` tables (``listed``: kind and validated options) in order, then deduplication."""
    plan: list[PlannedFilter] = []
    if options.drop_empty_responses:
        plan.append(PlannedFilter("empty_responses", NoFilterOptions(), "data.clean.drop_empty_responses"))
    if options.include:
        plan.append(PlannedFilter("include", PatternOptions(patterns=options.include), "data.clean.include"))
    if options.exclude:
        plan.append(PlannedFilter("exclude", PatternOptions(patterns=options.exclude), "data.clean.exclude"))
    if options.min_chars is not None or options.max_chars is not None:
        bounds = CharLengthOptions(min_chars=options.min_chars, max_chars=options.max_chars)
        plan.append(PlannedFilter("length_chars", bounds, "data.clean.min_chars / max_chars"))
    if options.min_resolution is not None:
        plan.append(
            PlannedFilter(
                "min_resolution",
                MinResolutionOptions(pixels=options.min_resolution),
                "data.clean.min_resolution",
            )
        )
    plan += [
        PlannedFilter(kind, settings, f"data.clean.filters[{index}]")
        for index, (kind, settings) in enumerate(listed)
    ]
    if options.exact_dedup:
        plan.append(PlannedFilter("exact_dedup", NoFilterOptions(), "data.clean.exact_dedup"))
    if options.near_dedup_threshold is not None:
        near = NearDedupOptions(
            threshold=options.near_dedup_threshold,
            ngram=options.near_dedup_ngram,
            num_perm=options.near_dedup_num_perm,
        )
        plan.append(PlannedFilter("near_dedup", near, "data.clean.near_dedup_threshold"))
    if options.image_dedup_distance is not None:
        plan.append(
            PlannedFilter(
                "image_dedup",
                ImageDedupOptions(distance=options.image_dedup_distance),
                "data.clean.image_dedup_distance",
            )
        )
    return plan


def build_filters(plan: Sequence[PlannedFilter], build: FilterBuilder | None = None) -> list[BuiltFilter]:
    """Fresh filters for one pass over the data; ``build`` defaults to the core's own filters."""
    return [BuiltFilter(item, (build or builtin_filter)(item.kind, item.options)) for item in plan]


def _passes(record: Record, filters: list[BuiltFilter], split: SplitReport, keep_examples: int) -> bool:
    for item in filters:
        try:
            why = item.filter.reason(record)
        except LoraplugError as exc:
            # A filter that cannot read a record stops the run, naming the recipe key that asked for it.
            exc.where = exc.where or item.plan.key
            raise
        if why is not None:
            split.counter(item.plan.kind, item.description).remove(
                sample_id(record), record_text(record) or str(record.get("image", "")), why, keep_examples
            )
            return False
    return True


def _clean_list(
    records: Sequence[Record], filters: list[BuiltFilter], split: SplitReport, keep_examples: int
) -> list[Record]:
    for item in filters:
        split.counter(item.plan.kind, item.description)  # every configured filter appears, removals or not
    kept = [r for r in records if _passes(r, filters, split, keep_examples)]
    split.before, split.after = len(records), len(kept)
    return kept


class CleanedStream:
    """A stream of records filtered as it is read; each pass starts with fresh filters (deduplication
    state), primed with the validation records so that training never repeats one."""

    def __init__(
        self,
        records: Iterable[Record],
        fresh: Callable[[], list[BuiltFilter]],
        examples: int,
        split: SplitReport,
        primer: Sequence[Record],
    ) -> None:
        self.records = records
        self.fresh = fresh
        self.examples = examples
        self.split = split
        self.primer = primer

    def __iter__(self) -> Iterator[Record]:
        filters = self.fresh()
        scratch = SplitReport()
        for record in self.primer:
            _passes(record, filters, scratch, 0)
        for record in self.records:
            if _passes(record, filters, self.split, self.examples):
                yield record


def clean(
    data: DataBundle,
    options: CleanOptions,
    plan: Sequence[PlannedFilter] | None = None,
    build: FilterBuilder | None = None,
) -> DataBundle:
    """``data`` with every configured filter applied; the report is ``.report`` of the result.

    :param plan: the filters to apply (default: :func:`plan_filters` of ``options``).
    :param build: builds each filter (default: the core's own; a run passes the ``loraplug_build_filter`` hook).
    """
    report = DataReport(options)
    steps = list(plan_filters(options) if plan is None else plan)
    filters = build_filters(steps, build)
    val = (
        _clean_list(list(data.val), filters, report.split("val"), options.examples)
        if data.val is not None
        else None
    )
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
        train = CleanedStream(
            data.train,
            lambda: build_filters(steps, build),
            options.examples,
            report.split("train"),
            val or [],
        )
        report.notes.append(
            "the training data is a stream: it is cleaned as it is read, so its counts are not known before training"
        )
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
        self.counter: FilterCount = split.counter(
            TOKEN_FILTER, description + " (model tokenizer, before truncation)"
        )

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


S = TypeVar("S")


def encode_within_token_limits(
    data: DataBundle,
    split: str,
    records: Sequence[Record],
    encode: Callable[[Record], S],
    tokens: Callable[[S], int],
) -> tuple[list[S], list[int]]:
    """Each of ``records`` (of ``split``) encoded, less those ``[data.clean]``'s token limits remove
    (counted in its report, :func:`token_limit`), and the position in ``records`` of each sample kept
    (to keep ``data.weights`` in step). ``tokens`` is a sample's length before any truncation."""
    limit = token_limit(data, split)
    samples: list[S] = []
    kept: list[int] = []
    for i, record in enumerate(records):
        sample = encode(record)
        if limit is None or limit.keep(record, tokens(sample)):
            samples.append(sample)
            kept.append(i)
    return samples, kept
