"""Every hookspec is documented in docs/hooks.md and actually called when a recipe runs.

A hook nobody calls is a promise silently broken (axolotl's `create_optimizer` had no call site);
a hook nobody documented is one no plugin author can use.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

from loraplug import hookspecs

ROOT = Path(__file__).parents[1]
HOOKS = sorted(name for name, fn in vars(hookspecs).items() if name.startswith("loraplug_") and callable(fn))


def test_hookspecs_have_docstrings() -> None:
    for name in HOOKS:
        assert inspect.getdoc(getattr(hookspecs, name)), name


def test_every_hookspec_has_a_section_in_docs_hooks_md() -> None:
    text = (ROOT / "docs" / "hooks.md").read_text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert re.search(rf"^## `{name}\({re.escape(params)}\)`", text, re.M), f"docs/hooks.md lacks a '## `{name}({params})`' heading"
    documented = set(re.findall(r"^## `(loraplug_\w+)\(", text, re.M))
    assert documented == set(HOOKS), f"documented but not in hookspecs: {documented - set(HOOKS)}"


def test_every_hookspec_is_called_by_a_run(tmp_path: Path) -> None:
    env = {**os.environ, "LORAPLUG_TRACE_HOOKS": "1", "HF_HUB_OFFLINE": "1"}
    recipe = ROOT / "recipes" / "quickstart.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "loraplug", "run", str(recipe), "--smoke"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    called = set(re.findall(r"^\[loraplug hook\] (loraplug_\w+) -> ", proc.stderr, re.M))
    assert called == set(HOOKS), f"never called: {set(HOOKS) - called}"
