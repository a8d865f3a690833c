"""Reading the CSV files: each row becomes one record of the shape its data kind declares."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraplug import DataBundle, LoraplugError, Record
from loraplug.toolkit import hold_out


def chat_record(path: Path, line: int, row: dict[str, str], prompt: str, response: str) -> Record:
    """A ``chat`` record: the prompt as the user's turn, the response as the assistant's."""
    return {
        "id": f"{path.name}:{line}",
        "messages": [
            {"role": "user", "content": row[prompt]},
            {"role": "assistant", "content": row[response]},
        ],
    }


def labelled_record(path: Path, line: int, row: dict[str, str], text: str, label: str) -> Record:
    """A ``labelled-text`` record: ``{"id", "text", "label"}``."""
    return {"id": f"{path.name}:{line}", "text": row[text], "label": row[label]}


def load(
    path: Path, columns: tuple[str, str], record: Callable[..., Record], val_fraction: float, seed: int
) -> DataBundle:
    """The rows of ``path`` as records; the two ``columns`` must be in its header."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            keys = (
                "data.prompt_column / data.response_column"
                if record is chat_record
                else "data.text_column / data.label_column"
            )
            raise LoraplugError(
                f"{path.name} has no column {', '.join(missing)}",
                where=f"{path}:1",
                fix=f"Its columns are {', '.join(header)}; set {keys}",
            )
        train = []
        for line, row in enumerate(reader, start=2):
            if any(row[c] is None for c in columns):
                raise LoraplugError(
                    f"Row {line} of {path.name} has fewer cells than the header",
                    where=f"{path}:{line}",
                    fix="Fill in the row",
                )
            train.append(record(path, line, row, *columns))
    if not train:
        raise LoraplugError(f"{path} has no rows", where=str(path), fix="Add rows below the header")
    summary: dict[str, Any] = {"rows": len(train)}
    val = None
    if val_fraction > 0:
        train, val = hold_out(train, val_fraction, seed)
        summary["val rows"] = len(val)
    return DataBundle(train=train, val=val, summary=summary)
