"""Reading labelled texts from JSONL and CSV files into ``labelled-text`` records.

A record is ``{"id": "file:line", "text": str, "label": str}``; an integer label in JSONL is kept as
its decimal string, so ``1`` and ``"1"`` name the same class. Every problem names the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraplug import DataBundle, LoraplugError, Record
from loraplug.toolkit import hold_out
from loraplug_text_classification.options import (
    LabelledCsvOptions,
    LabelledDataOptions,
    LabelledJsonlOptions,
)


def _label(value: Any) -> str | None:
    """A label as the classifier names it: a non-empty string, or an integer's decimal form."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _record(path: Path, line: int, text: Any, label: Any, keys: tuple[str, str]) -> Record:
    where = f"{path}:{line}"
    if not isinstance(text, str) or not text.strip():
        raise LoraplugError(
            f"Line {line} of {path.name} has no text in {keys[0]!r}",
            where=where,
            fix=f"Give every sample a non-empty string {keys[0]!r}, or name the field that holds it",
        )
    named = _label(label)
    if named is None:
        raise LoraplugError(
            f"Line {line} of {path.name} has the label {label!r} in {keys[1]!r}; a label is a non-empty string or an integer",
            where=where,
            fix=f"Give every sample one label in {keys[1]!r}",
        )
    return {"id": f"{path.name}:{line}", "text": text, "label": named}


def _jsonl_rows(path: Path, options: LabelledJsonlOptions) -> Iterator[Record]:
    keys = (options.text_field, options.label_field)
    with open(path, encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise LoraplugError(
                    f"Line {line} of {path.name} is not JSON: {exc.msg}",
                    where=f"{path}:{line}",
                    fix='Write one object per line: {"text": "...", "label": "..."}',
                ) from exc
            if not isinstance(obj, dict):
                raise LoraplugError(
                    f"Line {line} of {path.name} is a {type(obj).__name__}, not an object",
                    where=f"{path}:{line}",
                    fix='Write one object per line: {"text": "...", "label": "..."}',
                )
            yield _record(path, line, obj.get(keys[0]), obj.get(keys[1]), keys)


def _csv_rows(path: Path, options: LabelledCsvOptions) -> Iterator[Record]:
    keys = (options.text_column, options.label_column)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=options.delimiter)
        header = reader.fieldnames or []
        missing = [key for key in keys if key not in header]
        if missing:
            raise LoraplugError(
                f"{path.name} has no column {', '.join(missing)}",
                where=f"{path}:1",
                fix=f"Its columns are {', '.join(header) or 'none'}; set data.text_column / data.label_column",
            )
        for row in reader:
            # The line the row ends on (a quoted text may span several lines).
            yield _record(path, reader.line_num, row.get(keys[0]), row.get(keys[1]), keys)


def read_rows(path: Path, options: LabelledDataOptions) -> Iterator[Record]:
    """The records of one file, read lazily: ``recipe check`` stops at the first unknown label."""
    if isinstance(options, LabelledCsvOptions):
        return _csv_rows(path, options)
    assert isinstance(options, LabelledJsonlOptions)  # noqa: S101 — the two labelled data kinds
    return _jsonl_rows(path, options)


def load(options: LabelledDataOptions, seed: int) -> DataBundle:
    """The training (and validation) records of ``options``' files, with the count of each label."""
    train = list(read_rows(options.path, options))
    if not train:
        raise LoraplugError(
            f"{options.path} has no samples", where=str(options.path), fix="Add labelled texts to it"
        )
    val: list[Record] | None = None
    if options.val_path is not None:
        val = list(read_rows(options.val_path, options))
    elif options.val_fraction > 0:
        train, val = hold_out(train, options.val_fraction, seed)
    summary: dict[str, Any] = {"samples": len(train)}
    if val is not None:
        summary["val samples"] = len(val)
    counts: dict[str, int] = {}
    for record in train:
        counts[record["label"]] = counts.get(record["label"], 0) + 1
    summary["labels"] = dict(sorted(counts.items()))
    return DataBundle(train=train, val=val, summary=summary)
