"""Recipes are checked completely, before anything loads, with errors that say where and how to fix
(on the toy regressor's recipe, beside every installed plugin)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from loraplug.testing import run_cli

pytestmark = pytest.mark.usefixtures("toy")  # the toy plugin installed beside the others (tests/conftest.py)


def check(path: Path, *overrides: str):
    return run_cli("recipe", "check", path, *overrides)


def test_a_valid_recipe_checks_ok(toy_recipe_file) -> None:
    result = check(toy_recipe_file())
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "loraplug-toy" in result.stdout


def test_unknown_key_names_its_path_line_and_a_suggestion(tmp_path: Path, toy_recipe_file) -> None:
    path = toy_recipe_file()
    text = path.read_text().replace("r = 4", "rr = 4")
    path.write_text(text)
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if text_line.startswith("rr ="))
    result = check(path)
    assert result.exit_code == 2
    assert f"unknown key `adapter.rr` ({path}:{line}); did you mean `adapter.r`?" in result.stderr
    assert "Traceback" not in result.output


def test_an_option_for_a_kind_that_takes_none_says_so_instead_of_an_empty_list(toy_recipe_file) -> None:
    # The default objective (sft) has no options: a DPO key left behind must not read "known keys here: ".
    result = check(toy_recipe_file(objective={"beta": 0.1}))
    assert result.exit_code == 2
    assert "unknown key `objective.beta`" in result.stderr
    assert "[objective] takes no keys for the kind chosen" in result.stderr
    assert "known keys here: \n" not in result.stderr and not result.stderr.rstrip().endswith(
        "known keys here:"
    )


def test_wrong_type_says_what_was_expected(toy_recipe_file) -> None:
    result = check(toy_recipe_file(train={"batch_size": "eight"}))
    assert result.exit_code == 2
    assert "`train.batch_size` = 'eight': Input should be a valid integer" in result.stderr


def test_missing_file_names_its_resolved_path(tmp_path: Path, toy_recipe_file) -> None:
    result = check(toy_recipe_file(data={"path": "nowhere/train.jsonl"}))
    assert result.exit_code == 2
    assert f"file not found: {tmp_path / 'nowhere' / 'train.jsonl'}" in result.stderr


def test_every_problem_is_reported_at_once(toy_recipe_file) -> None:
    result = check(toy_recipe_file(train={"lr": "fast", "warmup": 3}, adapter={"alpah": 3}, bogus={"x": 1}))
    assert result.exit_code == 2
    assert "4 problems" in result.stderr
    assert "unknown section `bogus`" in result.stderr
    assert "did you mean `adapter.alpha`?" in result.stderr


def test_unknown_kind_lists_the_known_kinds(toy_recipe_file) -> None:
    result = check(toy_recipe_file(data={"kind": "toy-row"}))
    assert result.exit_code == 2
    assert "No installed plugin serves the data kind 'toy-row'. Did you mean 'toy-rows'?" in result.stderr
    assert "Known data kinds: " in result.stderr


def test_export_kind_is_checked_against_the_model_kind(toy_recipe_file) -> None:
    result = check(toy_recipe_file(export=[{"kind": "toy-weights"}, {"kind": "nonesuch"}]))
    assert result.exit_code == 2
    assert "`export[1].kind` = 'nonesuch'" in result.stderr


def test_bad_model_options_do_not_make_adapter_and_export_kinds_ambiguous(toy_recipe_file) -> None:
    # The model kind is known even when its options fail: [adapter] and [[export]] are still checked
    # against it, and no false "served by more than one plugin" error appears (`lora` is served by the
    # toy plugin and by the installed model plugins, each for its own model kind).
    result = check(
        toy_recipe_file(model={"features": 0}, adapter={"alpah": 3}, export=[{"kind": "toy-weights"}])
    )
    assert result.exit_code == 2
    assert "2 problems" in result.stderr, result.stderr
    assert "`model.features` = 0" in result.stderr and "did you mean `adapter.alpha`?" in result.stderr
    assert "more than one plugin" not in result.stderr


def test_an_unknown_model_kind_is_the_one_problem_reported_for_kinds_served_per_model(
    toy_recipe_file,
) -> None:
    result = check(toy_recipe_file(model={"kind": "toy-regresor"}, export=[{"kind": "toy-weights"}]))
    assert result.exit_code == 2
    assert "1 problem" in result.stderr or "has a problem" in result.stderr, result.stderr
    assert "Did you mean 'toy-regressor'?" in result.stderr
    assert "more than one plugin" not in result.stderr


def test_recipe_keys_names_each_table_and_lists_the_metrics() -> None:
    result = run_cli("recipe", "keys")
    assert result.exit_code == 0, result.output
    for heading in ("[run]  core", "[train]  core", '[model] kind = "causal-lm"', '[[export]] kind = "peft"'):
        assert heading in result.stdout, heading
    assert "Every [[export]] also takes `name`" in result.stdout
    assert "distinct_2" in result.stdout and "eval.metrics" in result.stdout


def test_name_is_a_key_of_exports_only(toy_recipe_file) -> None:
    result = check(toy_recipe_file(), "model.name=x")
    assert result.exit_code == 2
    assert "unknown key `model.name`" in result.stderr
    assert check(toy_recipe_file(export=[{"kind": "toy-weights", "name": "weights-only"}])).exit_code == 0


def test_overrides_are_applied_and_checked(toy_recipe_file) -> None:
    path = toy_recipe_file()
    result = run_cli("recipe", "check", path, "train.lr=1e-4", 'eval.sample_prompts=["1 2 3"]', "--resolved")
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads(result.stdout)
    assert resolved["train"]["lr"] == 1e-4
    assert resolved["eval"]["sample_prompts"] == ["1 2 3"]
    assert resolved["train"]["schedule"] == "cosine"  # defaults are written out

    bad = check(path, "train.lr=-1")
    assert bad.exit_code == 2
    assert "command-line override `train.lr=-1`" in bad.stderr

    malformed = check(path, "train.lr")
    assert malformed.exit_code == 2 and "is not KEY=VALUE" in malformed.stderr


def test_toml_syntax_error_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[run]\nname = quickstart\n")
    result = check(path)
    assert result.exit_code == 2
    assert f"{path}:2" in result.stderr and "not valid TOML" in result.stderr


def test_non_utf8_recipe_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[run]\nname = "café"\n'.encode("latin-1"))
    result = check(path)
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr and f"{path}:2" in result.stderr


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = check(tmp_path / "nope.toml")
    assert result.exit_code == 2 and "Recipe file not found" in result.stderr


def test_every_shipped_recipe_validates() -> None:
    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        result = check(recipe)
        assert result.exit_code == 0, f"{recipe.name}: {result.output}"
