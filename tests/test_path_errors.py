"""A path the system refuses (too long, through a file, no permission) is a clear error, never "a bug".

Each command below took a path a user typed and ended in "unexpected error: OSError … this is a bug".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplug.testing import run_cli

TOO_LONG = "a" * 300  # longer than any filesystem allows one name to be


@pytest.mark.parametrize(
    "command",
    [
        ("runs", "show", TOO_LONG),
        ("runs", "list", TOO_LONG),
        ("export", TOO_LONG, "--kind", "peft"),
        ("generate", TOO_LONG, "--prompt", "hi"),
    ],
    ids=["runs show", "runs list", "export", "generate"],
)
def test_a_path_too_long_for_the_filesystem_is_named_in_a_clear_error(
    command: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli(*command)
    assert result.exit_code == 2, result.output
    assert "File name too long" in result.stderr and TOO_LONG[:50] in result.stderr
    assert "unexpected" not in result.output and "Traceback" not in result.output


@pytest.mark.usefixtures("toy")
@pytest.mark.parametrize("override", [f'data.path="{TOO_LONG}.jsonl"', f'run.output_dir="{TOO_LONG}"'])
def test_recipe_check_names_the_key_of_a_path_too_long(override: str, toy_recipe_file) -> None:
    result = run_cli("recipe", "check", toy_recipe_file(), override)
    key = override.split("=")[0]
    assert result.exit_code == 2 and f"`{key}`" in result.stderr, result.output
    assert "unexpected" not in result.output
