"""Every hookspec is documented in docs/hooks.md — generated from its docstring, with an example — says
how it is dispatched, and is actually called, as it says, when a recipe runs.

A hook nobody calls is a promise silently broken (axolotl's `create_optimizer` had no call site);
a hook nobody documented is one no plugin author can use; a reference written twice drifts (the page
and the module docstring once disagreed on how `evaluate` is dispatched).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from loraplug import hookspecs

ROOT = Path(__file__).parents[1]
HOOKS = sorted(name for name, fn in vars(hookspecs).items() if name.startswith("loraplug_") and callable(fn))
DISPATCH = re.compile(r"^Dispatch: (by kind|by model kind|broadcast|each plugin) — \S", re.M)
#: Dispatch ways whose every call reaches one plugin only.
ONE_PLUGIN = ("by kind", "by model kind", "each plugin")
#: Hooks a training run never calls, and the test that shows their command calls them.
OUTSIDE_A_RUN = {"loraplug_build_captioner": "tests/test_captioning.py (loraplug data caption)"}


def _tool() -> ModuleType:
    """tools/update_hooks_doc.py, imported from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("update_hooks_doc", ROOT / "tools" / "update_hooks_doc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dispatch(name: str) -> str:
    """How a hook is dispatched, as its docstring's one ``Dispatch:`` line says."""
    found = DISPATCH.findall(inspect.getdoc(getattr(hookspecs, name)) or "")
    assert len(found) == 1, (
        f"{name}'s docstring needs one 'Dispatch: <by kind|by model kind|broadcast|each plugin> — …' line"
    )
    return str(found[0])


def test_every_hookspec_says_how_it_is_dispatched_and_stage_hooks_are_dispatched_by_kind() -> None:
    from loraplug.kinds import STAGE_HOOKS

    dispatch = {name: _dispatch(name) for name in HOOKS}
    # The hooks the registry dispatches by a kind's stage (evaluate: the metric stage) are exactly those
    # whose docstring says "by kind".
    assert {name for name, way in dispatch.items() if way == "by kind"} == set(STAGE_HOOKS.values())
    # The module docstring explains the ways, and lists no hooks: a list there drifts from the Dispatch lines.
    short_names = {name.removeprefix("loraplug_") for name in HOOKS} - {"register_kinds"}
    named = set(re.findall(r"``(\w+)``", hookspecs.__doc__ or "")) & (short_names | set(HOOKS))
    assert not named, f"the module docstring of loraplug/hookspecs.py names hooks: {named}"


def test_docs_hooks_md_is_generated_from_the_hookspec_docstrings() -> None:
    """The reference part of docs/hooks.md is what tools/update_hooks_doc.py renders from the docstrings."""
    tool = _tool()
    text = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert tool.render(text, hookspecs) == text, (
        "docs/hooks.md is out of step with loraplug/hookspecs.py: run `make docs`"
    )
    for name in HOOKS:
        assert f"<!-- BEGIN hook: {name} -->" in text
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"## `{name}({params})`" in text
        assert f"**Dispatch:** {_dispatch(name)} — " in text


def test_every_hook_in_docs_hooks_md_has_an_example_that_implements_it() -> None:
    text = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    sections = re.split(r"^<!-- BEGIN hook: ", text, flags=re.M)[1:]
    assert len(sections) == len(HOOKS)
    for section in sections:
        name = section.split(" ", 1)[0]
        example = section.split(f"<!-- END hook: {name} -->", 1)[1]
        assert re.search(rf"```python\n(?:.*\n)*?def {name}\(", example), (
            f"docs/hooks.md: {name} has no example implementing it"
        )


def test_the_generator_picks_up_a_new_hookspec_and_a_changed_docstring() -> None:
    """A hookspec added (as other engineers add them) gets its section; an edited docstring shows."""
    tool = _tool()
    text = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    changed = ModuleType("changed_hookspecs")
    specs = {name: getattr(hookspecs, name) for name in tool.hookspecs_of(hookspecs)}
    exporting = list(specs).index("loraplug_export")

    def loraplug_build_scheduler(kind: str, options: Any, optimizer: Any, ctx: Any) -> Any:
        """Build the learning-rate schedule: ``train.schedule`` names the kind.

        Dispatch: by kind — the one plugin that declared the recipe's ``train.schedule``.

        :param optimizer: the optimizer from :func:`loraplug_build_optimizer`.
        :returns: a ``torch.optim.lr_scheduler.LRScheduler``.
        """

    def loraplug_load_data(kind: str, options: Any, ctx: Any) -> Any:
        """Read the data, differently now.

        Dispatch: by kind — the one plugin that declared the recipe's ``data.kind``.
        """

    ordered = list(specs.items())
    ordered.insert(exporting, ("loraplug_build_scheduler", hookspecs.hookspec(loraplug_build_scheduler)))
    for name, fn in ordered:
        setattr(changed, name, hookspecs.hookspec(loraplug_load_data) if name == "loraplug_load_data" else fn)
    changed.PROJECT = hookspecs.PROJECT

    rendered = tool.render(text, changed)
    flat = " ".join(rendered.split())  # as Markdown reads it: the generator wraps long lines
    new = rendered.index("<!-- BEGIN hook: loraplug_build_scheduler -->")
    assert (
        rendered.index("<!-- END hook: loraplug_deployable -->")
        < new
        < rendered.index("<!-- BEGIN hook: loraplug_export -->")
    )
    assert "## `loraplug_build_scheduler(kind, options, optimizer, ctx)`" in rendered
    assert (
        "* `optimizer` — the optimizer from [`loraplug_build_optimizer`](#loraplug_build_optimizerkind-options-param_groups-ctx)."
        in flat
    )
    assert (
        "| [`loraplug_build_scheduler`](#loraplug_build_schedulerkind-options-optimizer-ctx) | by kind |"
        in flat
    )
    assert tool.NO_EXAMPLE in rendered
    assert "Read the data, differently now." in flat and "Called first in a run" not in flat
    assert tool.render(rendered, changed) == rendered  # regenerating changes nothing more


def test_every_hookspec_is_called_by_a_run(tmp_path: Path) -> None:
    env = {**os.environ, "LORAPLUG_TRACE_HOOKS": "1", "HF_HUB_OFFLINE": "1"}
    recipe = ROOT / "recipes" / "quickstart.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "loraplug", "run", str(recipe), "--smoke"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = re.findall(r"^\[loraplug hook\] (loraplug_\w+) -> (.*)$", proc.stderr, re.M)
    called = {name for name, _ in calls}
    assert called == set(HOOKS) - set(OUTSIDE_A_RUN), (
        f"never called: {set(HOOKS) - set(OUTSIDE_A_RUN) - called}"
    )
    # Each call reaches the plugins its docstring's Dispatch line says.
    from loraplug.plugins import PluginHost

    pm = PluginHost.load().pm
    for name, reached in calls:
        plugins = set() if reached == "no plugin" else set(reached.split(", "))
        if _dispatch(name) in ONE_PLUGIN:
            assert len(plugins) <= 1 and (plugins or name == "loraplug_register_kinds"), (name, reached)
        else:
            implementers = {pm.get_name(impl.plugin) for impl in getattr(pm.hook, name).get_hookimpls()}
            assert plugins == implementers, (name, reached)


class OddModelPlugin:
    """A model plugin whose hooks answer with the wrong types (a dict, a tuple, strings)."""

    @hookspecs.hookimpl
    def loraplug_register_kinds(self, register: Any) -> None:
        from loraplug import KindSpec, Options

        register(KindSpec("model", "odd", Options, "answers with the wrong types"))
        register(KindSpec("filter", "odd-filter", Options, "a filter without reason(record)"))
        register(KindSpec("optimizer", "odd-adam", Options, "an optimizer that is a dict"))
        for metric in ("odd_list", "odd_text"):
            register(KindSpec("metric", metric, Options, "a score that is no number", higher_is_better=True))

    @hookspecs.hookimpl
    def loraplug_build_model(self, kind: str, options: Any, ctx: Any) -> Any:
        return {"module": None}

    @hookspecs.hookimpl
    def loraplug_train_step(self, model: Any, module: Any, batch: Any, ctx: Any) -> Any:
        return (1.0, 3)  # loss and count, but not a StepResult

    @hookspecs.hookimpl
    def loraplug_generate(self, model: Any, options: Any, prompts: list[str], out_dir: Path, ctx: Any) -> Any:
        return [f"a reply to {p}" for p in prompts]

    @hookspecs.hookimpl
    def loraplug_build_filter(self, kind: str, options: Any, ctx: Any) -> Any:
        return "drop short rows"

    @hookspecs.hookimpl
    def loraplug_build_optimizer(self, kind: str, options: Any, param_groups: Any, ctx: Any) -> Any:
        return {"lr": 1e-3}

    @hookspecs.hookimpl
    def loraplug_evaluate(
        self, metrics: list[str], model: Any, options: Any, data: Any, scores: Any, ctx: Any
    ) -> Any:
        return [0.5] if metrics == ["odd_list"] else {"odd_text": "high"}


def test_the_typed_facade_checks_each_hooks_answer_and_names_the_plugin(tmp_path: Path) -> None:
    """host.build_model / train_step / generate return what the hookspec promises, or a PluginError
    naming the plugin — a tuple from train_step used to surface as an AttributeError deep in the loop."""
    from loraplug.errors import PluginError
    from loraplug.plugins import ExtraPlugin, PluginHost

    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(OddModelPlugin(), "loraplug-odd")])
    recipe: Any = SimpleNamespace(model=SimpleNamespace(kind="odd", options=None))
    with pytest.raises(
        PluginError, match="loraplug-odd returned dict from loraplug_build_model, expected ModelBundle"
    ):
        host.build_model(recipe, ctx=None)  # type: ignore[arg-type]
    step = host.train_step("odd")
    with pytest.raises(
        PluginError, match="loraplug-odd returned tuple from loraplug_train_step, expected StepResult"
    ) as raised:
        step(model=None, module=None, batch=None, ctx=None)
    assert raised.value.fix == "This is a bug in loraplug-odd"
    with pytest.raises(PluginError, match="returned list from loraplug_generate, expected a list of Sample"):
        host.generate(recipe, SimpleNamespace(kind="odd"), ["q: rain"], tmp_path, ctx=None)  # type: ignore[arg-type]


def test_the_facade_checks_filters_optimizers_and_metrics(tmp_path: Path) -> None:
    """host.build_filter / build_optimizer / evaluate: a wrong answer is a PluginError naming the plugin
    here, not an AttributeError in the cleaning or a TypeError when metrics.jsonl is written."""
    from loraplug.errors import PluginError
    from loraplug.plugins import ExtraPlugin, PluginHost

    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(OddModelPlugin(), "loraplug-odd")])
    with pytest.raises(
        PluginError,
        match="loraplug-odd returned str from loraplug_build_filter, expected a filter with a reason",
    ):
        host.build_filter("odd-filter", None, "odd", ctx=None)  # type: ignore[arg-type]
    served = host.lookup("optimizer", "odd-adam")
    recipe: Any = SimpleNamespace(optimizer=SimpleNamespace(kind="odd-adam", options=None, served=served))
    with pytest.raises(
        PluginError, match="loraplug-odd returned dict from loraplug_build_optimizer, expected Optimizer"
    ):
        host.build_optimizer(recipe, [], ctx=None)  # type: ignore[arg-type]
    metric = host.lookup("metric", "odd_list")
    scores: dict[str, Any] = {"model": None, "options": None, "data": None, "scores": {}, "ctx": None}
    with pytest.raises(
        PluginError, match="loraplug-odd returned list from loraplug_evaluate, expected a dict of metric name"
    ):
        host.evaluate(metric, metrics=["odd_list"], **scores)
    with pytest.raises(
        PluginError, match="returned odd_text = 'high' \\(str\\) from loraplug_evaluate, expected a number"
    ) as raised:
        host.evaluate(metric, metrics=["odd_text"], **scores)
    assert raised.value.fix == "This is a bug in loraplug-odd"


TEXT_METRIC_PLUGIN = """
from loraplug import KindSpec, hookimpl

@hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("metric", "mood", "loraplug.options:NoOptions", "a score in words", higher_is_better=True))

@hookimpl
def loraplug_evaluate(metrics, model, options, data, scores, ctx):
    return {"mood": "cheerful"}
"""


def test_a_metric_that_is_no_number_fails_the_run_naming_its_plugin(
    tmp_path: Path, toy_recipe_file: Any
) -> None:
    from loraplug.testing import plugin_dist, plugins_installed, run_cli

    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-mood", module="mood", source=TEXT_METRIC_PLUGIN
    )
    with plugins_installed(site):
        ran = run_cli("run", toy_recipe_file(eval={"metrics": ["mood"]}, export=[]))
    assert ran.exit_code != 0
    assert (
        "loraplug-mood returned mood = 'cheerful' (str) from loraplug_evaluate, expected a number"
        in ran.stderr
    )
    assert "Traceback" not in ran.output


METRIC_PLUGIN = """
import json, os
from loraplug import KindSpec, hookimpl

@hookimpl
def loraplug_register_kinds(register):
    for name in {names!r}:
        register(KindSpec("metric", name, "loraplug.options:NoOptions", "a test metric", higher_is_better=True))

@hookimpl
def loraplug_evaluate(metrics, model, options, data, scores, ctx):
    with open(os.environ["METRIC_CALLS"], "a", encoding="utf-8") as calls:
        calls.write(json.dumps({{"plugin": {plugin!r}, "metrics": list(metrics)}}) + "\\n")
    return {{name: 1.0 for name in metrics}}
"""


def test_evaluate_is_called_once_per_plugin_with_the_metrics_it_declared(tmp_path: Path) -> None:
    """What loraplug_evaluate's Dispatch line says: eval.metrics grouped by the plugin that declared each,
    one call per plugin and evaluation with its own names; a plugin whose metrics are not asked for is not
    called (a broadcast would call all three with every name)."""
    from loraplug.testing import plugin_dist, run_with_site, toy_plugin_dist, write_recipe

    site = toy_plugin_dist(tmp_path / "site")
    for plugin, names in {"a": ["a_one", "a_two"], "b": ["b_one"], "c": ["c_one"]}.items():
        source = METRIC_PLUGIN.format(plugin=plugin, names=names)
        plugin_dist(site, distribution=f"loraplug-metric-{plugin}", module=f"metric_{plugin}", source=source)
    for name, numbers in {"train": range(12), "val": range(12, 16)}.items():
        rows = "".join(json.dumps({"x": [i / 10, 1 - i / 10], "y": i / 5}) + "\n" for i in numbers)
        (tmp_path / f"{name}.jsonl").write_text(rows, encoding="utf-8")
    recipe = write_recipe(
        tmp_path / "toy.toml",
        {
            "run": {"name": "toy", "output_dir": "runs"},
            "data": {"kind": "toy-rows", "path": "train.jsonl", "val_path": "val.jsonl"},
            "model": {"kind": "toy-regressor", "features": 2, "hidden": 4},
            "adapter": {"kind": "lora", "r": 2},
            "train": {"max_steps": 2, "batch_size": 4},
            "eval": {"every_n_steps": 2, "metrics": ["a_two", "b_one", "a_one"]},
            "export": [],
        },
    )
    calls_file = tmp_path / "calls.jsonl"
    env = {"HF_HUB_OFFLINE": "1", "METRIC_CALLS": str(calls_file)}
    ran = run_with_site(site, "run", recipe, cwd=tmp_path, env=env, trace_hooks=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    calls = [json.loads(line) for line in calls_file.read_text(encoding="utf-8").splitlines()]
    evaluations = 2  # the baseline at step 0 and step 2
    assert sorted((c["plugin"], tuple(c["metrics"])) for c in calls) == sorted(
        [("a", ("a_two", "a_one")), ("b", ("b_one",))] * evaluations
    )
