"""The docs describe the code as it is."""

from __future__ import annotations

from pathlib import Path

from loraplug.plugins import FIRST_PARTY, PluginHost
from loraplug.recipe import reference

ROOT = Path(__file__).parents[1]


def test_recipes_reference_lists_every_key_of_every_first_party_kind() -> None:
    host = PluginHost.load()
    text = (ROOT / "docs" / "recipes.md").read_text()
    begin, end = text.index(reference.BEGIN) + len(reference.BEGIN), text.index(reference.END)
    generated = reference.markdown(host.registry, set(FIRST_PARTY))
    assert text[begin:end].strip() == generated.strip(), (
        "docs/recipes.md is out of date: regenerate its tables with `loraplug recipe keys --markdown --first-party`"
    )


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
