"""Regenerate the tables at the end of docs/recipes.md from the installed first-party plugins.

python tools/update_recipes_doc.py        (or: make docs)
"""

from __future__ import annotations

from pathlib import Path

from loraplug.plugins import FIRST_PARTY, PluginHost
from loraplug.recipe import reference

DOC = Path(__file__).parents[1] / "docs" / "recipes.md"


def main() -> None:
    text = DOC.read_text(encoding="utf-8")
    head = text[: text.index(reference.BEGIN) + len(reference.BEGIN)]
    tail = text[text.index(reference.END) :]
    generated = reference.markdown(PluginHost.load().registry, set(FIRST_PARTY))
    DOC.write_text(f"{head}\n{generated}{tail}", encoding="utf-8")
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
