"""The docs describe the code as it is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def test_the_plugin_host_example_in_docs_plugins_md_runs() -> None:
    """loraplug.load_plugins() is public: the docs' example lists the installed data kinds through it."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    match = re.search(r"<!-- example: the plugin host -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/plugins.md lost its plugin host example"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "jsonl  (loraplug-causal-lm)" in done.stdout and "imagefolder  (loraplug-diffusion)" in done.stdout


def _examples(doc: Path) -> list[str]:
    """The Python examples of a page, without the blocks generated from docstrings (hook signatures)."""
    text = re.sub(
        r"<!-- BEGIN (.*?) -->\n.*?<!-- END \1 -->\n", "", doc.read_text(encoding="utf-8"), flags=re.S
    )
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_docs_examples_import_only_from_loraplug() -> None:
    """A plugin author copies the examples: they take loraplug's names from `loraplug` (`NoOptions`
    included), never from a first-party plugin (`loraplug_causal_lm`…), and import every one they use."""
    import ast

    import loraplug

    public = set(loraplug.__all__) - {"__version__"}
    problems = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for number, example in enumerate(_examples(doc), start=1):
            tree = ast.parse(example)
            imported, used = set(), set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    module = node.module if isinstance(node, ast.ImportFrom) else None
                    for alias in node.names:
                        source = module or alias.name
                        if source.split(".")[0].startswith("loraplug_"):
                            problems.append(f"{doc.name} example {number} imports {source}")
                        imported.add((alias.asname or alias.name).split(".")[0])
                elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
                    used.add(node.id)
                elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                    imported.add(node.name)
            if missing := sorted((used & public) - imported):
                problems.append(
                    f"{doc.name} example {number} uses {', '.join(missing)} without importing it from loraplug"
                )
    assert not problems, "\n".join(problems)
