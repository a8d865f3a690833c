"""Helpers for testing loraplug and its plugins — first-party or third-party — with pytest.

``run_cli`` runs the real CLI in-process and captures what a user would see; ``write_recipe`` writes a
recipe file from Python dicts; ``plugin_dist`` installs a plugin module as a real distribution with an
entry point (a ``.dist-info`` directory on ``sys.path``), so discovery is tested exactly as it happens
after ``pip install``.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str | Path) -> CliResult:
    """Run ``loraplug ARGS`` in this process; return its exit code and output."""
    from loraplug.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        cli_main.console.file = out
        cli_main.err_console.file = err
        try:
            code = cli_main.main([str(a) for a in args])
        finally:
            cli_main.console.file = None  # type: ignore[assignment]
            cli_main.err_console.file = None  # type: ignore[assignment]
    return CliResult(code, out.getvalue(), err.getvalue())


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    """Write ``recipe`` (section name → table; ``export`` → list of tables) as TOML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


def plugin_dist(site: Path, *, distribution: str, module: str, source: str, version: str = "0.1.0") -> Path:
    """Create an installed-looking distribution in ``site`` whose entry point loads ``module``.

    Put ``site`` on ``sys.path`` (or ``PYTHONPATH`` for a subprocess) to make loraplug discover it.
    """
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[loraplug]\n{module} = {module}\n", encoding="utf-8")
    return site


