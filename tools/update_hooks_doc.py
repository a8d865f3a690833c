"""Regenerate the hook reference in docs/hooks.md from the hookspec docstrings in loraplug/hookspecs.py.

    python tools/update_hooks_doc.py           (or: make docs)
    python tools/update_hooks_doc.py --check   exit 1, changing nothing, when docs/hooks.md is out of step

The docstrings are the one source of the reference; docs/hooks.md is hand-written around blocks this
tool owns, each between a BEGIN and an END comment:

* ``dispatch`` — a table of every hook and its docstring's ``Dispatch:`` line;
* ``hook: loraplug_x`` — one per hookspec: its heading, signature and docstring. The hand-written
  example that follows it, up to the next block, is left alone;
* ``fields: loraplug.X`` — a class's docstring with its ``:param`` fields as a list (``KindSpec``,
  ``Deployable``: what a hook hands over or returns).

A hookspec that has no block yet gets one, after the section of the hookspec before it, with a line
asking for an example; a block whose hookspec is gone is an error, since the example that follows it
needs a person to remove or move it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from textwrap import fill
from types import ModuleType

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "hooks.md"
SOURCE = "loraplug/hookspecs.py"
WIDTH = 110  # the page's line length
NO_EXAMPLE = "*No example yet: write one here, below the generated reference.*"

_BLOCK = re.compile(r"<!-- BEGIN (?P<name>[^>]*?) -->\n.*?<!-- END (?P=name) -->\n", re.S)
_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod):`(?P<short>~?)(?P<target>[^`]+)`")
_FIELD = re.compile(r"^:(?:param (?P<param>\w+)|returns?):\s*(?P<text>.*)$")
_DISPATCH = "Dispatch:"


def hookspecs_of(module: ModuleType) -> dict[str, Callable[..., object]]:
    """The hookspecs a module defines, in the order it defines them."""
    marker = f"{module.PROJECT}_spec"
    return {
        name: fn for name, fn in vars(module).items() if name.startswith("loraplug_") and hasattr(fn, marker)
    }


def anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def heading_of(name: str, fn: Callable[..., object]) -> str:
    return f"`{name}({', '.join(inspect.signature(fn).parameters)})`"


def signature_of(name: str, fn: Callable[..., object]) -> str:
    """``def name(arg: Type, ...) -> Type: ...`` as written in the spec (annotations stay strings)."""
    annotations = {
        key: value if isinstance(value, str) else inspect.formatannotation(value)
        for key, value in getattr(fn, "__annotations__", {}).items()
    }
    params = [f"{p}: {annotations[p]}" if p in annotations else p for p in inspect.signature(fn).parameters]
    returns = (f" -> {annotations['return']}" if "return" in annotations else "") + ": ..."
    one_line = f"def {name}({', '.join(params)}){returns}"
    if len(one_line) <= 100:
        return one_line
    return f"def {name}(\n" + "".join(f"    {p},\n" for p in params) + f"){returns}"


class Renderer:
    """Turns reST-flavoured docstrings into Markdown; ``:func:`` of a hook links to its section."""

    def __init__(self, hooks: dict[str, Callable[..., object]]) -> None:
        self.links = {name: f"#{anchor(heading_of(name, fn))}" for name, fn in hooks.items()}

    def inline(self, text: str) -> str:
        def role(match: re.Match[str]) -> str:
            target = match.group("target")
            shown = target.rsplit(".", 1)[-1] if match.group("short") else target
            link = self.links.get(target.rsplit(".", 1)[-1])
            return f"[`{shown}`]({link})" if link else f"`{shown}`"

        return _ROLE.sub(role, text).replace("``", "`")

    @staticmethod
    def split(doc: str) -> tuple[list[str], list[tuple[str, str]], str, list[str]]:
        """A docstring's body lines, its ``:param`` fields, its ``:returns:`` text, and body lines after the fields."""
        body: list[str] = []
        after: list[str] = []
        fields: list[tuple[str | None, list[str]]] = []  # (param name, or None for returns; its lines)
        current: list[str] | None = None  # the field whose indented continuation lines are being read
        for line in inspect.cleandoc(doc).splitlines():
            field = _FIELD.match(line)
            if field:
                current = [field.group("text")]
                fields.append((field.group("param"), current))
            elif current is not None and line[:1].isspace() and line.strip():
                current.append(line.strip())
            else:
                current = None
                (after if fields else body).append(line)
        params = [(name, " ".join(lines)) for name, lines in fields if name is not None]
        returns = next((" ".join(lines) for name, lines in fields if name is None), "")
        return body, params, returns, after

    def body(self, lines: list[str]) -> str:
        """Body lines as Markdown; a ``Dispatch:`` paragraph is set in bold."""
        text = "\n".join(lines).strip()
        paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        out = []
        for paragraph in paragraphs:
            if paragraph.startswith(_DISPATCH):
                paragraph = f"**{_DISPATCH}**{paragraph[len(_DISPATCH) :]}"
            out.append(self.inline(paragraph))
        return "\n\n".join(out)

    def items(self, params: list[tuple[str, str]]) -> str:
        """``:param`` fields as a Markdown list, each item wrapped as the page is."""
        return "\n".join(
            fill(f"* `{name}` — {self.inline(text)}", width=WIDTH, subsequent_indent="  ", break_long_words=False,
                 break_on_hyphens=False)
            for name, text in params
        )  # fmt: skip

    def hook(self, name: str, fn: Callable[..., object]) -> str:
        body, params, returns, after = self.split(inspect.getdoc(fn) or "")
        parts = [f"## {heading_of(name, fn)}", f"```python\n{signature_of(name, fn)}\n```", self.body(body)]
        if params:
            parts.append("**Gets:**\n\n" + self.items(params))
        if returns:
            parts.append(fill(f"**Returns:** {self.inline(returns)}", width=WIDTH, break_long_words=False))
        parts.append(self.body(after))
        return "\n\n".join(p for p in parts if p) + "\n"

    def fields(self, cls: type) -> str:
        body, params, _, after = self.split(inspect.getdoc(cls) or "")
        return "\n\n".join(p for p in (self.body(body), self.items(params), self.body(after)) if p) + "\n"

    def dispatch_table(self, hooks: dict[str, Callable[..., object]]) -> str:
        rows = ["| hook | dispatch | reaches |", "|---|---|---|"]
        for name, fn in hooks.items():
            how, _, whom = dispatch_line(inspect.getdoc(fn) or "").partition(" — ")
            rows.append(f"| [`{name}`]({self.links[name]}) | {how} | {self.inline(whom)} |")
        return "\n".join(rows) + "\n"


def dispatch_line(doc: str) -> str:
    """The text of a docstring's ``Dispatch:`` paragraph, on one line ('' when it has none)."""
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        if paragraph.startswith(_DISPATCH):
            return " ".join(paragraph[len(_DISPATCH) :].split())
    return ""


def block(name: str, content: str, source: str = SOURCE) -> str:
    note = (
        f"<!-- generated from {source} by tools/update_hooks_doc.py: edit the docstring, then `make docs` -->"
    )
    return f"<!-- BEGIN {name} -->\n{note}\n{content}<!-- END {name} -->\n"


def source_of(obj: object) -> str:
    """Where ``obj`` is defined, relative to the checkout when it is in it."""
    path = Path(inspect.getsourcefile(obj) or "?").resolve()  # type: ignore[arg-type]
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def render(text: str, module: ModuleType) -> str:
    """``text`` (docs/hooks.md) with every generated block rewritten from ``module``'s docstrings."""
    hooks = hookspecs_of(module)
    renderer = Renderer(hooks)
    present = [m.group("name") for m in _BLOCK.finditer(text)]
    gone = [
        n.removeprefix("hook: ")
        for n in present
        if n.startswith("hook: ") and n.removeprefix("hook: ") not in hooks
    ]
    if gone:
        raise SystemExit(
            f"docs/hooks.md documents {', '.join(gone)}, which {SOURCE} no longer defines: "
            "remove or move that section (and its example) by hand"
        )
    text = _add_missing_hooks(text, hooks, present)

    def rewrite(match: re.Match[str]) -> str:
        name = match.group("name")
        if name == "dispatch":
            return block(name, renderer.dispatch_table(hooks))
        if name.startswith("hook: "):
            hook = name.removeprefix("hook: ")
            return block(name, renderer.hook(hook, hooks[hook]))
        if name.startswith("fields: "):
            module_name, _, attr = name.removeprefix("fields: ").rpartition(".")
            cls = getattr(importlib.import_module(module_name), attr)
            return block(name, renderer.fields(cls), source_of(cls))
        raise SystemExit(f"docs/hooks.md has a generated block this tool does not know: {name!r}")

    return _BLOCK.sub(rewrite, text)


def _add_missing_hooks(text: str, hooks: dict[str, Callable[..., object]], present: list[str]) -> str:
    """Insert a block for each hookspec without one, before the section of the next hookspec that has one."""
    names = list(hooks)
    for index, name in enumerate(names):
        if f"hook: {name}" in present:
            continue
        new = block(f"hook: {name}", "") + f"\n{NO_EXAMPLE}\n\n"
        following = [f"<!-- BEGIN hook: {n} -->" for n in names[index + 1 :] if f"hook: {n}" in present]
        if following:
            at = text.index(following[0])
            text = text[:at] + new + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n"
        present.append(f"hook: {name}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/hooks.md is out of step")
    args = parser.parse_args(argv)
    from loraplug import hookspecs

    text = DOC.read_text(encoding="utf-8")
    updated = render(text, hookspecs)
    if args.check:
        if updated != text:
            print(f"{DOC} is out of step with {SOURCE}: run `make docs`", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        DOC.write_text(updated, encoding="utf-8")
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
