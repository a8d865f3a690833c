"""Reading JSONL training data into chat records, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from loraplug import DataBundle, LoraplugError, Record
from loraplug.toolkit import hold_out

ROLES = ("system", "user", "assistant")
FORMAT_HELP = 'Each line must be {"prompt": "...", "response": "..."} or {"messages": [{"role": "user", "content": "..."}, ...]}'
#: The longest line read as one sample (documented with ``on_error``). A longer one — a file that is
#: not JSON Lines, a multi-gigabyte blob — is a bad line, read past in blocks: memory stays bounded.
MAX_LINE_BYTES = 64 << 20
#: How much of an overlong line is read at a time while skipping the rest of it.
SKIP_BLOCK = 1 << 20


class BadLine(ValueError):
    """A line that is not a usable sample; the message says why."""


def chat_turns(messages: list[Any], name: str) -> list[dict[str, str]]:
    """``messages`` (the value of the line's key ``name``) as ``{"role", "content"}`` turns, each checked:
    an object with a string ``content`` and one of :data:`ROLES`."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadLine(f"{name}[{i}] must be an object with a string `content`")
        if message.get("role") not in ROLES:
            raise BadLine(f"{name}[{i}].role is {message.get('role')!r}; use one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_line(obj: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A line's JSON value as chat messages plus its extra fields (label, weight, …)."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise BadLine("`messages` must be a non-empty list")
        turns = chat_turns(messages, "messages")
        if not any(m["role"] == "assistant" for m in turns):
            raise BadLine("no assistant message, so nothing to learn")
        extras = {k: v for k, v in obj.items() if k != "messages"}
        return turns, extras
    if "prompt" in obj or "response" in obj:
        prompt, response = obj.get("prompt"), obj.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise BadLine("`prompt` and `response` must both be strings")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if isinstance(obj.get("system"), str):
            messages.insert(0, {"role": "system", "content": obj["system"]})
        extras = {k: v for k, v in obj.items() if k not in ("prompt", "response", "system")}
        return messages, extras
    raise BadLine(f"it has neither prompt/response nor messages (keys: {', '.join(sorted(obj)) or 'none'})")


def bounded_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The file's lines as bytes, ``None`` for a line longer than ``limit`` bytes (not counting its newline).

    Never holds more than ``limit`` bytes of one line: an overlong line's rest is read and dropped in blocks.
    """
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):  # at most limit bytes before its newline
            yield line
            continue
        while not line.endswith(b"\n"):
            line = handle.readline(SKIP_BLOCK)
            if not line:
                break
        yield None


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count % (1 << 20) == 0 else f"{count:,} bytes"


def chat_record(obj: Any) -> Record:
    """A line's JSON value as a chat record (without its id)."""
    messages, extras = parse_line(obj)
    return {"messages": messages, **extras}


def read_jsonl(
    path: Path,
    *,
    skip_bad: bool,
    parse: Callable[[Any], Record] = chat_record,
    format_help: str = FORMAT_HELP,
) -> tuple[list[Record], list[str]]:
    """Records of ``path`` (each line's JSON value through ``parse``, which raises :class:`BadLine`) and
    the descriptions of skipped lines."""
    records: list[Record] = []
    skipped: list[str] = []
    try:
        # Bytes, decoded line by line: a line that is not UTF-8 is one bad line, named like any other.
        handle = open(path, "rb")  # noqa: SIM115 — closed by the with below
    except OSError as exc:
        raise LoraplugError(
            f"Cannot read {path}: {exc.strerror}", fix="Check the path and its permissions"
        ) from exc
    with handle:
        for number, raw in enumerate(bounded_lines(handle, MAX_LINE_BYTES), start=1):
            where = f"{path}:{number}"
            try:
                if raw is None:
                    raise BadLine(
                        f"longer than {_size(MAX_LINE_BYTES)}, the most read as one sample (is it JSON Lines, one sample per line?)"
                    )
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise BadLine(f"not UTF-8 text (byte {exc.start + 1}); save the file as UTF-8") from exc
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadLine(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
                record = parse(obj)
            except BadLine as exc:
                if not skip_bad:
                    raise LoraplugError(
                        f"Line {number} of {path.name} is malformed: {exc}",
                        where=where,
                        fix=f'{format_help}. Fix the line, or set data.on_error = "skip" to skip and count such lines',
                    ) from exc
                skipped.append(f"line {number}: {exc}")
                continue
            records.append({"id": f"{path.name}:{number}", **record})
    return records, skipped


def load(
    path: Path,
    val_path: Path | None,
    val_fraction: float,
    skip_bad: bool,
    seed: int,
    *,
    parse: Callable[[Any], Record] = chat_record,
    format_help: str = FORMAT_HELP,
    noun: str = "samples",
) -> DataBundle:
    """The training records of ``path`` and the validation records (``val_path``, or a seeded share of
    ``path``); ``noun`` names them in the summary and errors (``pairs`` for preference data)."""
    train, skipped = read_jsonl(path, skip_bad=skip_bad, parse=parse, format_help=format_help)
    if not train:
        detail = (
            f"all {len(skipped)} non-blank lines were malformed and skipped"
            if skipped
            else f"it has no {noun}"
        )
        raise LoraplugError(f"No training {noun} in {path}: {detail}", where=str(path), fix=format_help)
    val: list[Record] | None = None
    if val_path is not None:
        val, val_skipped = read_jsonl(val_path, skip_bad=skip_bad, parse=parse, format_help=format_help)
        skipped += [f"{val_path.name} {s}" for s in val_skipped]
    elif val_fraction > 0:
        train, val = hold_out(train, val_fraction, seed)
    summary: dict[str, Any] = {f"train {noun}": len(train)}
    if val is not None:
        summary[f"val {noun}"] = len(val)
    if skipped:
        summary["skipped lines"] = len(skipped)
        summary["first skipped"] = skipped[0]
    return DataBundle(train=train, val=val, summary=summary)
