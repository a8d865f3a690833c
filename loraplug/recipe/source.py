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
from loraplug.options import unreadable_reason

KeyPath = tuple[str | int, ...]

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_KEY_LINE = re.compile(
    r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*="""
)


def _split_dotted(text: str) -> tuple[str, ...]:
    return tuple(
        part.strip().strip("\"'") for part in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", text)
    )


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
    reason = unreadable_reason(path, "file")
    if reason is not None:
        missing = reason.startswith("file not found")
        raise LoraplugError(
            f"Recipe file not found: {path}" if missing else f"The recipe cannot be read: {reason}",
            fix="Check the path; recipes/ holds the shipped recipes"
            if missing
            else "Pass the recipe file itself (or fix the link)",
        )
    if path.is_dir():
        raise LoraplugError(f"{path} is a directory, not a recipe file", fix="Pass a .toml file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LoraplugError(
            f"The recipe {path} cannot be read: {exc.strerror}", fix="Check the file's permissions"
        ) from exc
    try:
        # utf-8-sig: a byte-order mark (which some Windows editors write) is not part of the TOML.
        text = raw.decode("utf-8-sig")
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


def _not_a_table(override: str, parent: KeyPath, node: Any) -> LoraplugError:
    name = dotted(parent)
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        key = override.lstrip("~").partition("=")[0].strip()
        fix = f"Say which of its {len(node)} tables, counting from 0: e.g. `{key.replace(name, f'{name}.0', 1)}=…`"
    else:
        fix = f"Set `{name}` itself (e.g. `{name}=…`), or check the key with `loraplug recipe keys`"
    return LoraplugError(
        f"The override {override!r} sets a key inside `{name}`, which is {_kind_of(node)}, not a table",
        fix=fix,
    )


def _kind_of(value: Any) -> str:
    """A reader's name for a TOML value's type: ``a number (0.0002)``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array of tables" if value and all(isinstance(item, dict) for item in value) else "an array"
    return type(value).__name__


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
                raise _not_a_table(override, path[:depth], node)
            single = node.get(part)
            if (
                isinstance(single, list)
                and len(single) == 1
                and isinstance(single[0], dict)
                and not isinstance(path[depth + 1], int)
            ):
                node = node[part][0]  # `export.kind=…` with a single [[export]]
                path = (*path[: depth + 1], 0, *path[depth + 1 :])
                continue
            node = node.setdefault(part, {})
    last = path[-1]
    if not isinstance(node, (dict, list)) or (isinstance(node, list) and not isinstance(last, int)):
        raise _not_a_table(override, path[:-1], node)  # `train.lr.x=5`: nothing goes inside a number
    if delete:
        if isinstance(node, dict):
            node.pop(last, None)
    elif isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise LoraplugError(f"The override {override!r} indexes past the end of {dotted(path[:-1])}")
        node[last : last + 1] = [parse_value(value.strip())]
    elif isinstance(node, dict):  # a key into a list was refused above
        node[last] = parse_value(value.strip())
    source.overridden[path] = override
