"""loraplug replaces only what it wrote itself, and only when told to (docs/runs.md, "What loraplug replaces").

Each test sets up the user's files where a careless command line would aim, runs that command line
through the CLI, and checks that the files are still there and that the refusal suggests no flag
that would delete them. (The same rule for `data pack`: plugins/webdataset/tests/test_pack_replace_rule.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loraplug.testing import run_cli

pytestmark = pytest.mark.usefixtures("toy")  # runs of the toy regressor (tests/conftest.py): the core alone


def _users_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.txt").write_text("years of work")
    return folder


def _untouched(folder: Path) -> bool:
    return (
        sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
        and (folder / "thesis.txt").read_text() == "years of work"
    )


# ---- runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--smoke",), ("--smoke", "--overwrite")])
def test_a_run_never_replaces_a_directory_that_holds_no_run(
    tmp_path: Path, toy_recipe_file, flags: tuple[str, ...]
) -> None:
    target = tmp_path / "runs" / ("smoke" if "--smoke" in flags else "") / "tiny"
    _users_files(target)
    result = run_cli("run", toy_recipe_file(export=[]), *flags)
    assert result.exit_code == 2, result.output
    assert "is not a loraplug run (it has no run.json)" in result.stderr
    assert "--overwrite" not in result.stderr  # no flag replaces it, so none is suggested
    assert _untouched(target)


def test_a_run_directory_that_is_a_file_is_refused(tmp_path: Path, toy_recipe_file) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").write_text("a file")
    result = run_cli("run", toy_recipe_file(export=[]), "--overwrite")
    assert result.exit_code == 2 and "is a file, not a directory" in result.stderr, result.output
    assert (tmp_path / "runs" / "tiny").read_text() == "a file"


def test_smoke_replaces_an_earlier_smoke_run_but_not_a_real_run(tmp_path: Path, toy_recipe_file) -> None:
    recipe = toy_recipe_file(export=[])
    assert run_cli("run", recipe, "--smoke").exit_code == 0
    smoke_dir = tmp_path / "runs" / "smoke" / "tiny"
    assert json.loads((smoke_dir / "run.json").read_text())["smoke"] is True  # how a smoke run is recognised
    again = run_cli("run", recipe, "--smoke", "run.seed=1")
    assert again.exit_code == 0, again.output  # an earlier smoke run is replaced without a flag

    # A real run that happens to live where --smoke writes is not --smoke's to replace.
    real = run_cli(
        "run", recipe, f"run.output_dir={json.dumps(str(tmp_path / 'runs' / 'smoke'))}", "--overwrite"
    )
    assert real.exit_code == 0, real.output
    adapter = (smoke_dir / "adapter" / "adapter.safetensors").read_bytes()
    refused = run_cli("run", recipe, "--smoke")
    assert refused.exit_code == 2 and "not a smoke run" in refused.stderr, refused.output
    assert (smoke_dir / "adapter" / "adapter.safetensors").read_bytes() == adapter
    assert json.loads((smoke_dir / "run.json").read_text())["smoke"] is False


@pytest.mark.parametrize("flags", [("--smoke",), ("--overwrite",)])
def test_a_run_name_that_is_a_path_writes_nothing_outside_output_dir(
    tmp_path: Path, toy_recipe_file, flags: tuple[str, ...]
) -> None:
    elsewhere = _users_files(tmp_path / "elsewhere")
    result = run_cli("run", toy_recipe_file(export=[]), f"run.name={json.dumps(str(elsewhere))}", *flags)
    assert result.exit_code == 2 and "run.name" in result.stderr, result.output
    assert _untouched(elsewhere)


def test_run_name_dot_dot_cannot_write_the_run_into_the_parent(tmp_path: Path, toy_recipe_file) -> None:
    # work/new does not exist, so work/new/.. did not "exist" either: the run went into work/.
    parent = _users_files(tmp_path / "work")
    result = run_cli("run", toy_recipe_file(export=[]), 'run.output_dir="work/new"', 'run.name=".."')
    assert result.exit_code == 2 and "run.name" in result.stderr, result.output
    assert _untouched(parent)


def test_a_run_name_that_is_a_symlink_out_of_output_dir_is_refused(tmp_path: Path, toy_recipe_file) -> None:
    # A plain name passes any check of the name itself; only resolving it shows where the write would land.
    elsewhere = _users_files(tmp_path / "elsewhere")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(elsewhere, target_is_directory=True)
    result = run_cli("run", toy_recipe_file(export=[]), "--overwrite")
    assert result.exit_code == 2 and "is a symbolic link to" in result.stderr, result.output
    assert _untouched(elsewhere)


# ---- run.output_dir ------------------------------------------------------------------------------


def test_output_dir_that_is_a_file_is_refused_by_recipe_check_and_run(
    tmp_path: Path, toy_recipe_file
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    recipe = toy_recipe_file(export=[])
    for command in (("recipe", "check"), ("run",)):
        result = run_cli(*command, recipe, 'run.output_dir="notes.txt"')
        assert result.exit_code == 2, result.output
        assert "`run.output_dir`" in result.stderr and "is a file, not a directory" in result.stderr
        assert "unexpected error" not in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_output_dir_under_proc_is_refused(toy_recipe_file) -> None:
    result = run_cli("run", toy_recipe_file(export=[]), 'run.output_dir="/proc/runs"')
    assert result.exit_code == 2 and "`run.output_dir`" in result.stderr and "kernel" in result.stderr, (
        result.output
    )


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_dir_is_refused(tmp_path: Path, toy_recipe_file) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        result = run_cli("run", toy_recipe_file(export=[]), 'run.output_dir="locked/runs"')
    finally:
        locked.chmod(0o755)
    assert (
        result.exit_code == 2 and "`run.output_dir`" in result.stderr and "is not writable" in result.stderr
    ), result.output


def test_an_output_dir_the_system_cannot_create_is_a_clear_error_naming_the_key(
    tmp_path: Path, toy_recipe_file
) -> None:
    # Runs as root too (CI does, where a read-only directory is still writable): a name longer than the
    # filesystem allows. It was "unexpected error … this is a bug" from recipe check.
    too_long = f'run.output_dir="{"a" * 300}/runs"'
    for command in ("recipe check", "run"):
        result = run_cli(*command.split(), toy_recipe_file(export=[]), too_long)
        assert result.exit_code == 2 and "`run.output_dir`" in result.stderr, result.output
        assert "File name too long" in result.stderr and "unexpected" not in result.output


def test_a_failed_run_is_replaced_without_the_flag_only_while_it_holds_nothing_but_its_own_files(
    tmp_path: Path, toy_recipe_file, jsonl_file
) -> None:
    recipe = toy_recipe_file(export=[])
    empty = json.dumps(str(jsonl_file("empty.jsonl", [])))
    assert run_cli("run", recipe, f"data.path={empty}").exit_code == 2  # failed before its first step
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "thesis.txt").write_text("years of work")  # the user's file, put beside the failed run

    refused = run_cli("run", recipe)
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr, refused.output
    assert (run_dir / "thesis.txt").read_text() == "years of work"
    replaced = run_cli("run", recipe, "--overwrite")  # asked for: the run and what was put in it go
    assert replaced.exit_code == 0, replaced.output


# ---- exports ------------------------------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path: Path, toy_recipe_file) -> Path:
    result = run_cli("run", toy_recipe_file(train={"max_steps": 2}, eval={"sample_prompts": []}, export=[]))
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tiny"


def test_export_overwrite_replaces_an_export_but_never_other_files(finished_run: Path) -> None:
    notes = _users_files(finished_run / "exports" / "notes")
    result = run_cli("export", finished_run, "--kind", "toy-weights", "--name", "notes", "--overwrite")
    assert result.exit_code == 2 and "is not a loraplug export" in result.stderr, result.output
    assert "--overwrite" not in result.stderr
    assert _untouched(notes)

    assert run_cli("export", finished_run, "--kind", "toy-weights").exit_code == 0
    replaced = run_cli("export", finished_run, "--kind", "toy-weights", "--overwrite")
    assert replaced.exit_code == 0, replaced.output


def test_an_export_name_that_leaves_exports_writes_nothing_outside(tmp_path: Path, toy_recipe_file) -> None:
    recipe = toy_recipe_file(
        train={"max_steps": 1},
        eval={"sample_prompts": []},
        export=[{"kind": "toy-weights", "name": "../../../escaped"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code != 0, result.output
    assert "escaped" in result.stderr
    assert not list(tmp_path.rglob("escaped")) and not (tmp_path.parent / "escaped").exists()
