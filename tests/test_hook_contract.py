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
from types import SimpleNamespace
from typing import Any

import pytest

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


class OddModelPlugin:
    """A model plugin whose hooks answer with the wrong types (a dict, a tuple, strings)."""

    @hookspecs.hookimpl
    def loraplug_register_kinds(self, register: Any) -> None:
        from loraplug import KindSpec, Options

        register(KindSpec("model", "odd", Options, "answers with the wrong types"))

    @hookspecs.hookimpl
    def loraplug_build_model(self, kind: str, options: Any, ctx: Any) -> Any:
        return {"module": None}

    @hookspecs.hookimpl
    def loraplug_train_step(self, model: Any, module: Any, batch: Any, ctx: Any) -> Any:
        return (1.0, 3)  # loss and count, but not a StepResult

    @hookspecs.hookimpl
    def loraplug_generate(self, model: Any, options: Any, prompts: list[str], out_dir: Path, ctx: Any) -> Any:
        return [f"a reply to {p}" for p in prompts]


def test_the_typed_facade_checks_each_hooks_answer_and_names_the_plugin(tmp_path: Path) -> None:
    """host.build_model / train_step / generate return what the hookspec promises, or a PluginError
    naming the plugin — a tuple from train_step used to surface as an AttributeError deep in the loop."""
    from loraplug.errors import PluginError
    from loraplug.plugins import ExtraPlugin, PluginHost

    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(OddModelPlugin(), "loraplug-odd")])
    recipe: Any = SimpleNamespace(model=SimpleNamespace(kind="odd", options=None))
    with pytest.raises(PluginError, match="loraplug-odd returned dict from loraplug_build_model, expected ModelBundle"):
        host.build_model(recipe, ctx=None)  # type: ignore[arg-type]
    step = host.train_step("odd")
    with pytest.raises(PluginError, match="loraplug-odd returned tuple from loraplug_train_step, expected StepResult") as raised:
        step(model=None, module=None, batch=None, ctx=None)
    assert raised.value.fix == "This is a bug in loraplug-odd"
    with pytest.raises(PluginError, match="returned list from loraplug_generate, expected a list of Sample"):
        host.generate(recipe, SimpleNamespace(kind="odd"), ["q: rain"], tmp_path, ctx=None)  # type: ignore[arg-type]
