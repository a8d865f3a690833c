"""Option models; imported at start-up, so pydantic only (the column check imports pyarrow when it runs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, PrivateAttr, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from loraplug import InputPath, Options
from loraplug_datasets.columns import builder_of
from loraplug_datasets.schemas import SCHEMAS, Schema, detect, missing_columns, schemas_help

Format = Literal["auto", "messages", "sharegpt", "alpaca", "prompt-response", "text-label"]


class HfDatasetOptions(Options):
    """``[data] kind = "hf-dataset"``."""

    path: InputPath | None = Field(
        None,
        description="A local parquet, arrow, JSON Lines or CSV file, or a directory of them (or one written by "
        "`save_to_disk`); relative to the recipe. Give `path` or `hub`.",
    )
    hub: str | None = Field(
        None,
        description='A Hugging Face Hub dataset id ("tatsu-lab/alpaca"); read from the local cache offline.',
    )
    name: str | None = Field(None, description="The hub dataset's configuration (subset), if it has several.")
    revision: str | None = Field(None, description="The hub dataset's revision (branch, tag or commit).")
    split: str = Field("train", description="The split to train on (a local file is one split, `train`).")
    val_split: str | None = Field(None, description='A split to validate on ("test", "validation").')
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of the training split for validation (seeded)."
    )
    val_max_samples: PositiveInt = Field(
        512, description="With `streaming`: the validation samples read from `val_split` before training."
    )
    format: Format = Field(
        "auto",
        description="Which columns hold what: "
        + schemas_help()
        + ". `auto`: the first of these whose columns exist.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description='The dataset\'s column for a field of the format, where it is named otherwise: {prompt = "question", response = "answer"}.',
    )
    streaming: bool = Field(
        False,
        description="Read the training split as a stream (`datasets` streaming) instead of loading it whole: for sets "
        "larger than memory. Needs train.max_steps; samples are not packed, and `balance_by` does not apply.",
    )
    shuffle_buffer: NonNegativeInt = Field(
        1000,
        description="With `streaming`: rows held in the shuffle buffer (reshuffled each epoch); 0 keeps the order.",
    )
    on_error: Literal["error", "skip"] = Field(
        "error", description="A row that does not fit the format stops the run, or is skipped and counted."
    )

    #: The format ``auto`` found in a local dataset's columns while checking (else decided when it loads).
    _detected: Schema | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> HfDatasetOptions:
        if (self.path is None) == (self.hub is None):
            raise PydanticCustomError(
                "source", "give exactly one of `path` (a local dataset) or `hub` (a hub id)"
            )
        if self.streaming and self.val_fraction:
            raise PydanticCustomError(
                "streaming_val",
                "val_fraction cannot hold out rows of a stream; set val_split to a split to validate on",
            )
        if self.path is not None and self.path.is_file() and builder_of(self.path) is None:
            raise PydanticCustomError(
                "file_format",
                "{name} is not a file datasets reads by its suffix: .parquet, .arrow, .json, .jsonl, .csv or .tsv",
                {"name": self.path.name},
            )
        if self.path is not None and self.path.is_file() and (self.split != "train" or self.val_split):
            raise PydanticCustomError(
                "file_split",
                "a single file is one split, `train`; hold out a part with val_fraction, or point `path` at a directory "
                "with a file per split (train.parquet, test.parquet)",
            )
        fields = (
            {f for s in SCHEMAS.values() for f in s.fields}
            if self.format == "auto"
            else set(SCHEMAS[self.format].fields)
        )
        if unknown := sorted(set(self.columns) - fields):
            raise PydanticCustomError(
                "columns", "columns maps {unknown}, which format {format} has no field for; its fields: {fields}",
                {"unknown": ", ".join(unknown), "format": repr(self.format), "fields": ", ".join(sorted(fields))},
            )  # fmt: skip
        if self.path is not None and (info.context or {}).get("check_files", True):
            self._detected = self._check_columns()
        return self

    def _check_columns(self) -> Schema | None:
        """The format of a local dataset as its columns show it; an error naming the columns found when none fits."""
        from loraplug_datasets.columns import Unreadable, local_columns

        assert self.path is not None  # noqa: S101 — called for local datasets only
        try:
            found = local_columns(self.path, self.split)
        except Unreadable as exc:
            raise PydanticCustomError("unreadable", "{problem}", {"problem": str(exc)}) from exc
        if found is None:
            return None
        if self.format != "auto":
            schema = SCHEMAS[self.format]
            if missing := missing_columns(schema, found, self.columns):
                raise PydanticCustomError(
                    "columns_missing", "{path} has no column {missing} that format {format} reads; its columns: {found}{hint}",
                    {"path": str(self.path), "missing": ", ".join(missing), "format": repr(self.format),
                     "found": ", ".join(found), "hint": " (map them with `columns`)"},
                )  # fmt: skip
            return schema
        schema = detect(found, self.columns)
        if schema is None:
            raise PydanticCustomError(
                "format_unknown", "no format fits the columns of {path} ({found}); formats and their columns: {formats}. "
                "Map your columns to one with `columns` (and set `format`)",
                {"path": str(self.path), "found": ", ".join(found), "formats": schemas_help()},
            )  # fmt: skip
        return schema

    def chosen_schema(self) -> Schema | None:
        """The format as set, or as found in a local dataset's columns; ``None``: decided when it loads."""
        return SCHEMAS[self.format] if self.format != "auto" else self._detected

    def produces(self) -> tuple[str, ...]:
        """The record shapes of the format: ``chat`` for the chat formats, ``labelled-text`` for text-label
        (``recipe check`` refuses it for a model kind that trains on the other)."""
        schema = self.chosen_schema()
        return (schema.shape,) if schema else tuple(dict.fromkeys(s.shape for s in SCHEMAS.values()))

    def streams(self) -> bool:
        """Whether the training records are a stream of unknown length (``recipe check`` then needs max_steps)."""
        return self.streaming
