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
    done = subprocess.run([sys.executable, "-c", match.group(1)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "jsonl  (loraplug-causal-lm)" in done.stdout and "imagefolder  (loraplug-diffusion)" in done.stdout
