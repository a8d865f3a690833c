"""Opening a dataset through Hugging Face ``datasets`` and turning its rows into records.

A local dataset is read with the builder its files' suffix names (parquet, arrow, json, csv) or, written by
``save_to_disk``, with ``load_from_disk``; a hub dataset by id, configuration, split and revision — offline
(``HF_HUB_OFFLINE=1``) from the Hugging Face cache only. Whole splits become lists of records, which the core
cleans and balances and the model plugin packs like any list; ``streaming`` gives an iterable read row by row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from loraplug import DataBundle, LoraplugError, Record, RunContext
from loraplug.toolkit import hold_out, quiet_libraries
from loraplug_datasets.columns import builder_of, data_files, is_saved_dataset
from loraplug_datasets.options import HfDatasetOptions
from loraplug_datasets.schemas import (
    SCHEMAS,
    BadRow,
    Schema,
    detect,
    missing_columns,
    schemas_help,
    to_record,
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_error(options: HfDatasetOptions, exc: Exception) -> LoraplugError:
    what = f"the hub dataset {options.hub!r}" + (f" (configuration {options.name!r})" if options.name else "")
    if _offline():
        return LoraplugError(
            f"Cannot load {what}: HF_HUB_OFFLINE=1 is set, and it is not in the Hugging Face cache",
            where="data.hub",
            fix="Unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) on a machine online to download it once into the "
            "cache; or save it to files (`Dataset.to_parquet`) and point data.path at them",
        )
    return LoraplugError(
        f"Cannot load {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc}",
        where="data.hub",
        fix="Check the id, data.name, data.split and data.revision on the Hub (and that the Hub can be reached)",
    )


def open_split(options: HfDatasetOptions, split: str, cache_dir: Path, *, streaming: bool) -> Any:
    """The ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) of ``split``."""
    quiet_libraries("datasets")
    import datasets

    datasets.disable_progress_bars()  # the run prints its own summary
    if options.hub is not None:
        try:
            return datasets.load_dataset(
                options.hub, options.name, split=split, revision=options.revision, streaming=streaming
            )
        except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
            raise _hub_error(options, exc) from exc
    path = options.path
    assert path is not None  # noqa: S101 — the options require path or hub
    try:
        if path.is_dir() and is_saved_dataset(path):
            saved = datasets.load_from_disk(str(path))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise _no_split(path, split, list(saved))
                saved = saved[split]
            return saved.to_iterable_dataset() if streaming else saved
        if path.is_dir():
            files = data_files(path)
            builders = {builder_of(f) for f in files}
            if len(builders) != 1:
                raise LoraplugError(
                    f"{path} holds {'no data files' if not files else 'files of several formats'} "
                    f"({', '.join(sorted(str(b) for b in builders)) or 'none of .parquet, .arrow, .json, .jsonl, .csv'})",
                    where="data.path",
                    fix="Point data.path at a directory of files of one format, or at one file",
                )
            source: dict[str, Any] = {"path": builders.pop(), "data_dir": str(path)}
        else:
            builder = builder_of(path)
            if builder is None:
                raise LoraplugError(
                    f"{path.name} is not a file datasets reads by its suffix (.parquet, .arrow, .json, .jsonl, .csv, .tsv)",
                    where="data.path",
                    fix="Rename the file to the suffix of its format",
                )
            source = {"path": builder, "data_files": {"train": str(path)}}
            if path.suffix.lower() == ".tsv":
                source["delimiter"] = "\t"
        kwargs: dict[str, Any] = {} if streaming else {"cache_dir": str(cache_dir / "datasets")}
        return datasets.load_dataset(**source, split=split, streaming=streaming, **kwargs)
    except LoraplugError:
        raise
    except ValueError as exc:
        if "Unknown split" in str(exc):
            raise _no_split(path, split, None) from exc
        raise _unreadable(path, exc) from exc
    except (OSError, datasets.exceptions.DatasetGenerationError) as exc:
        raise _unreadable(path, exc) from exc


def _no_split(path: Path, split: str, found: list[str] | None) -> LoraplugError:
    have = f"; it has {', '.join(found)}" if found else ""
    return LoraplugError(
        f"{path} has no split {split!r}{have}",
        where="data.split",
        fix="Set data.split / data.val_split to a split it has (a directory's files are split by name: train.parquet, test.parquet)",
    )


def _unreadable(path: Path, exc: Exception) -> LoraplugError:
    cause = exc.__cause__ or exc
    return LoraplugError(
        f"datasets cannot read {path}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else cause}",
        where="data.path",
        fix="Check that the file is complete and in the format its suffix says",
    )


def _columns(dataset: Any) -> list[str]:
    names = dataset.column_names
    if names is None:  # a stream whose features the source does not declare: its first row says
        first = next(iter(dataset), None)
        names = list(first) if isinstance(first, Mapping) else []
    return list(names)


def schema_of(options: HfDatasetOptions, dataset: Any, where: str) -> Schema:
    """The format of ``dataset``: as set, or the first whose columns it has; an error naming its columns."""
    found = _columns(dataset)
    if options.format != "auto":
        schema = SCHEMAS[options.format]
        if missing := missing_columns(schema, found, options.columns):
            raise LoraplugError(
                f"{where} has no column {', '.join(missing)} that format {options.format!r} reads; its columns: {', '.join(found)}",
                where="data.format",
                fix="Map the dataset's columns to the format's fields with data.columns, or choose another data.format",
            )
        return schema
    schema = detect(found, options.columns)
    if schema is None:
        raise LoraplugError(
            f"No format fits the columns of {where} ({', '.join(found)})",
            where="data.format",
            fix=f"Formats and their columns: {schemas_help()}. Map your columns to one with data.columns (and set data.format)",
        )
    return schema


def label_names(dataset: Any, schema: Schema, options: HfDatasetOptions) -> list[str] | None:
    """A ``ClassLabel`` label column's class names (records then carry the name, not the index)."""
    if schema.shape != "labelled-text" or dataset.features is None:
        return None
    feature = dataset.features.get(options.columns.get("label", "label"))
    names = getattr(feature, "names", None)
    return list(names) if names else None


class Rows:
    """Rows of one split as records, each row numbered from 1 as ``name:row`` (``jsonl`` numbers lines)."""

    def __init__(self, dataset: Any, options: HfDatasetOptions, where: str) -> None:
        self.dataset = dataset
        self.options = options
        self.name = where
        self.schema = schema_of(options, dataset, where)
        self.labels = label_names(dataset, self.schema, options)
        self.skipped: list[str] = []
        #: A multiprocessing.Value shared with the DataLoader's workers (streams): the run's count of skips.
        self.total: Any = None

    def records(
        self, rows: Iterator[Mapping[str, Any]], warn: Callable[[str], None] | None = None
    ) -> Iterator[Record]:
        for number, row in enumerate(rows, start=1):
            try:
                yield to_record(row, self.schema, self.options.columns, f"{self.name}:{number}", self.labels)
            except BadRow as exc:
                if self.options.on_error == "error":
                    raise LoraplugError(
                        f"Row {number} of {self.name} does not fit format {self.schema.name!r}: {exc}",
                        where=f"{self.name}:{number}",
                        fix=f'Fix the row, or set data.on_error = "skip" to skip and count such rows. Formats: {schemas_help()}',
                    ) from exc
                self.skipped.append(f"row {number}: {exc}")
                if self.total is not None:
                    with self.total.get_lock():
                        self.total.value += 1
                if warn is not None and (len(self.skipped) <= 5 or len(self.skipped) % 100 == 0):
                    warn(f"skipped row {number} of {self.name} ({exc}); {len(self.skipped)} skipped so far")


class RecordStream:
    """The training split streamed as records; iterate it once per epoch (reshuffled each time). A record's
    id numbers the rows as this reader reads them (``name:N``: the Nth row it read this epoch)."""

    def __init__(self, dataset: Any, rows: Rows, options: HfDatasetOptions, ctx: RunContext) -> None:
        import multiprocessing

        from datasets.distributed import split_dataset_by_node

        if options.shuffle_buffer > 1:
            dataset = dataset.shuffle(seed=ctx.seed, buffer_size=options.shuffle_buffer)
        # Each process reads its own part (whole files when they divide evenly, else every world-th row);
        # datasets splits that part between the DataLoader's workers itself.
        self.dataset = split_dataset_by_node(dataset, rank=ctx.process_index, world_size=ctx.num_processes)
        self.rows = rows
        # Inherited by the DataLoader's workers, so rows skipped there reach this process's summary.
        self.rows.total = multiprocessing.Value("q", 0)
        self.warn = ctx.warn
        self.epoch = 0

    def __iter__(self) -> Iterator[Record]:
        self.dataset.set_epoch(self.epoch)
        self.epoch += 1
        yield from self.rows.records(iter(self.dataset), self.warn)


def _where(options: HfDatasetOptions, split: str) -> str:
    if options.hub is not None:
        return f"{options.hub}[{split}]"
    assert options.path is not None  # noqa: S101
    return options.path.name if options.path.is_file() else f"{options.path.name}[{split}]"


def _read_all(options: HfDatasetOptions, split: str, ctx: RunContext) -> tuple[list[Record], list[str]]:
    dataset = open_split(options, split, ctx.cache_dir, streaming=False)
    rows = Rows(dataset, options, _where(options, split))
    records = list(rows.records(iter(dataset)))
    return records, rows.skipped


def load(options: HfDatasetOptions, ctx: RunContext) -> DataBundle:
    summary: dict[str, Any] = {}
    skipped: list[str] = []
    val: list[Record] | None = None
    train: Sequence[Record] | RecordStream
    if options.streaming:
        dataset = open_split(options, options.split, ctx.cache_dir, streaming=True)
        train = RecordStream(dataset, Rows(dataset, options, _where(options, options.split)), options, ctx)
        summary["train samples"] = "streamed"
    else:
        train, skipped = _read_all(options, options.split, ctx)
        if not train:
            detail = f"all {len(skipped)} rows were malformed and skipped" if skipped else "it has no rows"
            raise LoraplugError(
                f"No training samples in {_where(options, options.split)}: {detail}",
                where="data",
                fix=f"Formats and their columns: {schemas_help()}",
            )
    if options.val_split is not None:
        if options.streaming:
            dataset = open_split(options, options.val_split, ctx.cache_dir, streaming=True)
            rows = Rows(dataset, options, _where(options, options.val_split))
            val = list(islice(rows.records(iter(dataset)), options.val_max_samples))
            val_skipped = rows.skipped
        else:
            val, val_skipped = _read_all(options, options.val_split, ctx)
        skipped += [f"{options.val_split} {s}" for s in val_skipped]
    elif options.val_fraction > 0 and isinstance(train, list):
        train, val = hold_out(train, options.val_fraction, ctx.seed)
    if isinstance(train, list):
        summary["train samples"] = len(train)
    if val is not None:
        summary["val samples"] = len(val)
    if skipped:
        summary["skipped rows"] = len(skipped)
        summary["first skipped"] = skipped[0]
    stream = train if isinstance(train, RecordStream) else None
    return DataBundle(
        train=train,
        val=val,
        summary=summary,
        final_summary=(lambda: {"skipped train rows": stream.rows.total.value}) if stream else None,
    )
