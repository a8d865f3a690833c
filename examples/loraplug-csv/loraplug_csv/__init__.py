"""loraplug-csv: train on a CSV file of prompt/response pairs.

    [data]
    kind = "csv"
    path = "pairs.csv"
    prompt_column = "question"
    response_column = "answer"
"""

from __future__ import annotations

import csv

from pydantic import Field

from loraplug import DataBundle, InputFile, KindSpec, LoraplugError, Options, hookimpl


class CsvOptions(Options):
    path: InputFile = Field(description="CSV file with a header row.")
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    response_column: str = Field("response", description="Column holding the response.")


@hookimpl
def loraplug_register_kinds(register):
    # Its records are chat turns, what a causal LM trains on: recipe check refuses it for an image model.
    register(KindSpec("data", "csv", CsvOptions, "CSV of prompt/response pairs", produces="chat"))


@hookimpl
def loraplug_load_data(kind, options, ctx):
    with open(options.path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {options.prompt_column, options.response_column} - set(reader.fieldnames or [])
        if missing:
            raise LoraplugError(
                f"{options.path.name} has no column {', '.join(sorted(missing))}",
                where=f"{options.path}:1",
                fix=f"Its columns are {', '.join(reader.fieldnames or [])}; set data.prompt_column / data.response_column",
            )
        records = [
            {
                "id": f"{options.path.name}:{line}",
                "messages": [
                    {"role": "user", "content": row[options.prompt_column]},
                    {"role": "assistant", "content": row[options.response_column]},
                ],
            }
            for line, row in enumerate(reader, start=2)
        ]
    if not records:
        raise LoraplugError(f"{options.path} has no rows", fix="Add rows below the header")
    return DataBundle(train=records, summary={"rows": len(records)})
