"""Column schemas: which columns of a dataset hold what, and how a row becomes a loraplug record.

The chat schemas make the records ``jsonl`` makes from the same content — ``{"id", "messages", **other
columns}`` — so a dataset read here is cleaned, packed and inspected exactly like the same rows in JSONL.
``text-label`` makes the ``{"id", "text", "label"}`` records classifiers read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loraplug import Record

ROLES = ("system", "user", "assistant")
#: ShareGPT's speaker names (``from``) and the chat roles they are.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


class BadRow(ValueError):
    """A row that cannot become a record; the message says why."""


@dataclass(frozen=True)
class Schema:
    """A schema's fields (each read from the column of the same name unless ``columns`` maps it)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    shape: str  # the record shape it produces (loraplug.kinds.RECORD_SHAPES)
    example: str

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


#: In the order ``schema = "auto"`` tries them: the first whose required columns all exist is used.
SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema("messages", ("messages",), (), "chat", 'messages: [{"role", "content"}, ...]'),
        Schema(
            "sharegpt", ("conversations",), ("system",), "chat", 'conversations: [{"from", "value"}, ...]'
        ),
        Schema(
            "alpaca", ("instruction", "output"), ("input", "system"), "chat", "instruction, input, output"
        ),
        Schema("prompt-response", ("prompt", "response"), ("system",), "chat", "prompt, response"),
        Schema("text-label", ("text", "label"), (), "labelled-text", "text, label"),
    )
}


def column_of(schema: Schema, field: str, columns: Mapping[str, str]) -> str:
    return columns.get(field, field)


def missing_columns(schema: Schema, found: Sequence[str], columns: Mapping[str, str]) -> list[str]:
    """The required columns of ``schema`` (as ``columns`` maps them) that ``found`` lacks."""
    return [
        column_of(schema, f, columns) for f in schema.required if column_of(schema, f, columns) not in found
    ]


def detect(found: Sequence[str], columns: Mapping[str, str]) -> Schema | None:
    """The first schema whose required columns all exist among ``found``, or ``None``."""
    return next((s for s in SCHEMAS.values() if not missing_columns(s, found, columns)), None)


def schemas_help() -> str:
    return "; ".join(f"{s.name} ({s.example})" for s in SCHEMAS.values())


def _string(row: Mapping[str, Any], column: str, *, optional: bool = False) -> str | None:
    value = row.get(column)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRow(f"column `{column}` must be a string, got {type(value).__name__}")
    return value


def _checked(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant message, so nothing to learn")
    return messages


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRow(f"column `{column}` must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRow(f"{column}[{i}] must be an object with a string `content`")
        if message.get("role") not in ROLES:
            raise BadRow(f"{column}[{i}].role is {message.get('role')!r}; use one of {', '.join(ROLES)}")
        messages.append({"role": message["role"], "content": message["content"]})
    return _checked(messages)


def _conversations(value: Any, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRow(f"column `{column}` must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(value):
        speaker = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if not isinstance(text, str):
            raise BadRow(f"{column}[{i}] must be an object with a string `value`")
        if speaker not in SHAREGPT_ROLES:
            raise BadRow(f"{column}[{i}].from is {speaker!r}; use one of {', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": text})
    return _checked(messages)


def _with_system(row: Mapping[str, Any], column: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    # As jsonl reads {"system", "prompt", "response"}: a string system prompt comes first.
    system = row.get(column)
    return [{"role": "system", "content": system}, *messages] if isinstance(system, str) else messages


def _chat(schema: Schema, row: Mapping[str, Any], columns: Mapping[str, str]) -> list[dict[str, str]]:
    def col(field: str) -> str:
        return column_of(schema, field, columns)

    if schema.name == "messages":
        return _messages(row.get(col("messages")), col("messages"))
    if schema.name == "sharegpt":
        return _with_system(
            row, col("system"), _conversations(row.get(col("conversations")), col("conversations"))
        )
    if schema.name == "alpaca":
        instruction = _string(row, col("instruction"))
        extra = _string(row, col("input"), optional=True)
        # LLaMA-Factory's and Stanford Alpaca's convention: the input follows the instruction on a new line.
        prompt = f"{instruction}\n{extra}" if extra else instruction
        output = _string(row, col("output"))
        return _with_system(
            row,
            col("system"),
            [{"role": "user", "content": prompt or ""}, {"role": "assistant", "content": output or ""}],
        )
    prompt, response = _string(row, col("prompt")), _string(row, col("response"))
    return _with_system(
        row,
        col("system"),
        [{"role": "user", "content": prompt or ""}, {"role": "assistant", "content": response or ""}],
    )


def _label(value: Any, column: str, names: Sequence[str] | None) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(f"column `{column}` must be a string or a whole number, got {type(value).__name__}")
    if names is not None and isinstance(value, int):
        if not 0 <= value < len(names):
            raise BadRow(f"column `{column}` is {value}, outside its {len(names)} class names")
        return names[value]  # a ClassLabel column: the class's name, as the dataset declares it
    return value


def to_record(
    row: Mapping[str, Any],
    schema: Schema,
    columns: Mapping[str, str],
    record_id: str,
    label_names: Sequence[str] | None = None,
) -> Record:
    """One row as a record; the columns the schema does not read are kept as extra fields (``label``,
    ``weight``, …, for ``balance_by`` / ``weight_by``) unless empty (a columnar file's missing value); an
    ``id`` column replaces the row's id, as an ``id`` field does in ``jsonl``."""
    used = {column_of(schema, f, columns) for f in schema.fields}
    extras = {k: v for k, v in row.items() if k not in used and v is not None}
    if schema.shape == "labelled-text":
        text_column, label_column = column_of(schema, "text", columns), column_of(schema, "label", columns)
        text = _string(row, text_column)
        label = _label(row.get(label_column), label_column, label_names)
        return {"id": record_id, "text": text, "label": label, **extras}
    return {"id": record_id, "messages": _chat(schema, row, columns), **extras}
