"""Reading a recipe file: UTF-8 TOML, command-line overrides, and where each key came from.

Errors name the line a key is on, so this module keeps a map from dotted key paths to line numbers
(tomllib does not report positions) and remembers which values came from the command line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplug.errors import LoraplugError

KeyPath = tuple[str | int, ...]

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_KEY_LINE = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=""")


def _split_dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", text))


def dotted(path: KeyPath) -> str:
    """``("export", 0, "kind")`` → ``export[0].kind``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class RecipeSource:
    """A recipe as read: the raw table (overrides applied) and the provenance of every key."""

    path: Path
    text: str
    data: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overridden: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        """``recipes/x.toml:12``, ``command-line override train.lr=1e-4`` or the nearest table's line."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.overridden:
                return f"the command-line override `{self.overridden[path[:n]]}`"
            if path[:n] in self.lines:
                return f"{self.path}:{self.lines[path[:n]]}"
        return str(self.path)


def read_recipe(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeSource:
    """Read ``path`` as UTF-8 TOML and apply ``key.path=value`` overrides (``~key.path`` deletes)."""
    if not path.exists():
        raise LoraplugError(f"Recipe file not found: {path}", fix="Check the path; recipes/ holds the shipped recipes")
    if path.is_dir():
        raise LoraplugError(f"{path} is a directory, not a recipe file", fix="Pass a .toml file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LoraplugError(
            f"The recipe is not UTF-8 text (byte 0x{raw[exc.start]:02x} cannot be decoded)",
            where=f"{path}:{line}",
            fix="Save the file as UTF-8; TOML requires it",
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"{path}:{match.group(1)}:{match.group(2)}" if match else str(path)
        raise LoraplugError(
            f"The recipe is not valid TOML: {re.sub(r' ?[(]at line.*', '', message)}",
            where=where,
            fix="Fix the syntax at that line (strings need quotes, tables need [brackets])",
        ) from exc
    source = RecipeSource(path=path, text=text, data=data, lines=_key_lines(text))
    for override in overrides:
        apply_override(source, override)
    return source


def _key_lines(text: str) -> dict[KeyPath, int]:
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0] if '"' not in line and "'" not in line else line
        if m := _ARRAY_HEADER.match(stripped):
            name = _split_dotted(m.group(1))
            index = array_counts.get(name, 0)
            array_counts[name] = index + 1
            table = (*name, index)
            lines[table] = number
            lines.setdefault(name, number)
        elif m := _TABLE_HEADER.match(stripped):
            table = _split_dotted(m.group(1))
            lines[table] = number
        elif m := _KEY_LINE.match(stripped):
            lines[(*table, *_split_dotted(m.group(1)))] = number
    return lines


def parse_value(text: str) -> Any:
    """A TOML value (``1e-4``, ``true``, ``["q_proj", "v_proj"]``), or the text itself as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(source: RecipeSource, override: str) -> None:
    delete = override.startswith("~")
    key, sep, value = override.lstrip("~").partition("=")
    if not delete and not sep:
        raise LoraplugError(
            f"The override {override!r} is not KEY=VALUE",
            fix="Write overrides as dotted keys, e.g. `train.lr=1e-4 adapter.r=16` (`~key` removes a key)",
        )
    path: KeyPath = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    if not path or any(p == "" for p in path):
        raise LoraplugError(f"The override {override!r} has an empty key", fix="Write e.g. `train.lr=1e-4`")
    node: Any = source.data
    for depth, part in enumerate(path[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise LoraplugError(
                    f"The override {override!r} indexes {dotted(path[: depth + 1])}, which does not exist",
                    fix="Index only [[array]] entries the recipe has, counting from 0",
                )
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise LoraplugError(f"The override {override!r} goes inside {dotted(path[:depth])}, which is not a table")
            if isinstance(node.get(part), list) and len(node[part]) == 1 and not isinstance(path[depth + 1], int):
                node = node[part][0]  # `export.kind=…` with a single [[export]]
                path = (*path[: depth + 1], 0, *path[depth + 1 :])
                continue
            node = node.setdefault(part, {})
    last = path[-1]
    if delete:
        if isinstance(node, dict):
            node.pop(last, None)
    elif isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise LoraplugError(f"The override {override!r} indexes past the end of {dotted(path[:-1])}")
        node[last:last + 1] = [parse_value(value.strip())]
    else:
        node[last] = parse_value(value.strip())
    source.overridden[path] = override
