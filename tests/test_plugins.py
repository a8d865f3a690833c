"""Plugin discovery through real entry points, broken plugins, and exactly-one-plugin-per-kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loraplug.testing import plugin_dist, toy_plugin_dist, toy_recipe

GOOD = """
from loraplug import hookimpl, KindSpec, Options

class EchoOptions(Options):
    greeting: str = "hi"

@hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("data", "echo", EchoOptions, "an example third-party data kind"))
"""

BROKEN_IMPORT = "import this_module_does_not_exist\n"

TYPO_HOOK = """
from loraplug import hookimpl

@hookimpl
def loraplug_bild_model(kind, options, ctx):
    return None
"""

CLASH = """
from loraplug import hookimpl, KindSpec, Options

class O(Options):
    path: str = ""

@hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("data", "toy-rows", O, "a second toy-rows"))
"""


def loraplug(site: Path, *args: str, strict: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "LORAPLUG_STRICT_PLUGINS": "1" if strict else ""}
    return subprocess.run(
        [sys.executable, "-m", "loraplug", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_third_party_plugin_is_discovered_by_entry_point(tmp_path: Path) -> None:
    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-echo", module="loraplug_echo", source=GOOD, version="1.2.3"
    )
    proc = loraplug(site, "plugins", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    echo = next(p for p in json.loads(proc.stdout) if p["distribution"] == "loraplug-echo")
    assert echo["version"] == "1.2.3"
    assert echo["status"] == "ok"
    assert echo["kinds"] == [
        {"stage": "data", "kind": "echo", "models": None, "summary": "an example third-party data kind"}
    ]


def test_broken_plugin_is_listed_with_its_error_and_skipped(tmp_path: Path) -> None:
    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-broken", module="loraplug_broken", source=BROKEN_IMPORT
    )
    plugin_dist(site, distribution="loraplug-typo", module="loraplug_typo", source=TYPO_HOOK)
    proc = loraplug(site, "plugins", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    by_dist = {p["distribution"]: p for p in json.loads(proc.stdout)}
    assert by_dist["loraplug-broken"]["status"] == "error"
    assert "this_module_does_not_exist" in by_dist["loraplug-broken"]["error"]
    assert by_dist["loraplug-typo"]["status"] == "error"
    assert "did you mean loraplug_build_model" in by_dist["loraplug-typo"]["error"]
    assert by_dist["loraplug-causal-lm"]["status"] == "ok"

    table = loraplug(site, "plugins", "list")
    assert table.returncode == 0 and "error" in table.stdout

    other = loraplug(site, "recipe", "check", "missing.toml")
    assert "warning: plugin loraplug_broken" in other.stderr
    assert "Traceback" not in other.stderr
    keys = loraplug(site, "recipe", "keys", "--markdown")
    assert keys.returncode == 0 and "warning: plugin loraplug_broken" in keys.stderr
    # The Markdown stays clean (a key's description may say "warning": the warning line must not be there).
    assert "warning: plugin" not in keys.stdout


def test_strict_mode_makes_a_broken_plugin_fatal(tmp_path: Path) -> None:
    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-broken", module="loraplug_broken", source=BROKEN_IMPORT
    )
    proc = loraplug(site, "plugins", "list", strict=True)
    assert proc.returncode != 0
    assert "loraplug-broken" in proc.stderr and "LORAPLUG_STRICT_PLUGINS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_plugins_serving_one_kind_is_an_error_naming_both(tmp_path: Path) -> None:
    site = plugin_dist(
        toy_plugin_dist(tmp_path / "site"),
        distribution="loraplug-clash",
        module="loraplug_clash",
        source=CLASH,
    )
    listing = loraplug(site, "plugins", "list")
    assert "conflict" in listing.stdout
    proc = loraplug(site, "recipe", "check", str(toy_recipe(tmp_path)))
    assert proc.returncode == 2
    assert "loraplug-clash" in proc.stderr and "loraplug-toy" in proc.stderr
    assert "more than one plugin" in proc.stderr


ROOT = Path(__file__).parents[1]


def test_train_optimizer_help_names_no_plugins_kinds_and_recipe_keys_lists_the_installed_ones() -> None:
    """The core's [train] help says `adamw` and where to look; the installed optimizer kinds come from
    the plugins (`recipe keys`' optimizer table), as eval.metrics' names do."""
    from loraplug.plugins import PluginHost
    from loraplug.recipe.sections import TrainSection
    from loraplug.testing import run_cli

    plugins_kinds = [
        s.spec.name
        for s in PluginHost.load().registry.all()
        if s.spec.stage == "optimizer" and s.distribution != "loraplug"
    ]
    assert plugins_kinds, "no optimizer plugin installed: nothing to check"
    for key in ("optimizer", "lr", "betas", "eps"):
        help_text = TrainSection.model_fields[key].description or ""
        named = [kind for kind in plugins_kinds if kind in help_text.lower()]
        assert not named, f"train.{key}'s help names plugin kinds {named}: {help_text}"
    assert "`adamw`" in (TrainSection.model_fields["optimizer"].description or "")

    keys = run_cli("recipe", "keys")
    assert keys.exit_code == 0
    listed = keys.stdout[keys.stdout.index("train.optimizer  the optimizer kinds") :]
    for kind in ("adamw", *plugins_kinds):
        assert f"│ {kind} " in listed, kind
    markdown = run_cli("recipe", "keys", "--markdown").stdout
    table = markdown[markdown.index("### Optimizers for `train.optimizer`") :]
    assert "| `adamw` | any | loraplug |" in table
    assert all(f"| `{kind}` |" in table for kind in plugins_kinds)


def test_docs_plugins_md_toolkit_tables_name_every_public_toolkit_name() -> None:
    import re

    import loraplug.toolkit

    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text[text.index("## Toolkit") : text.index("<!-- example: toolkit -->")]
    # A name in backticks in a row of its tables (`require_package`'s row names BITSANDBYTES_INSTALL).
    documented = {
        name
        for row in re.findall(r"^\|.*\|$", section, re.M)
        for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", row)
    }
    missing = sorted(set(loraplug.toolkit.__all__) - documented)
    assert not missing, f"docs/plugins.md's toolkit table lacks {missing}"
