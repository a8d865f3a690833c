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
