"""Recipe values a careless user writes: each is refused by `recipe check` (and so by `run`) with one
paragraph naming the key, where it came from and what to write instead — never a crash, never a
silent conversion, never a write outside the run directory. (On the toy regressor's recipe, beside every
installed plugin.)"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from pathlib import Path

import pytest

from loraplug.options import Options
from loraplug.plugins import PluginHost
from loraplug.testing import plugins_installed, run_cli, toy_recipe

pytestmark = pytest.mark.usefixtures("toy")  # the toy plugin installed beside the others (tests/conftest.py)


def check(path: Path, *overrides: str):
    return run_cli("recipe", "check", path, *overrides)


def refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "unexpected error" not in result.output and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.betas=[2,0]", ["`train.betas[0]` = 2", "less than 1"]),
        ("run.seed=-1", ["`run.seed` = -1", "greater than or equal to 0"]),
        ("adapter.r=true", ["`adapter.r` = true", "true is a boolean; write a whole number"]),
        ("train.lr=true", ["`train.lr` = true", "true is a boolean; write a number"]),
        ('adapter.r="16"', ["`adapter.r` = '16'", "without quotes"]),
        ("adapter.r=16.0", ["`adapter.r` = 16.0", "valid integer"]),
        ("train.lr=inf", ["`train.lr` = inf", "finite number"]),
        ("train.lr=nan", ["`train.lr` = nan", "finite number"]),
        ("train.lr=1e9", ["`train.lr` = 1000000000.0", "less than or equal to 10"]),
        ("train.eps=0", ["`train.eps` = 0", "greater than 0"]),
        ("eval.use_best=1", ["`eval.use_best` = 1", "1 is a number; write true or false"]),
        ("run.name=123", ["`run.name` = 123", 'write it in quotes: "123"']),
    ],
)
def test_a_value_of_the_wrong_type_or_out_of_range_is_refused_by_check(
    toy_recipe_file, override: str, fragments: list[str]
) -> None:
    refused(check(toy_recipe_file(), override), *fragments, f"the command-line override `{override}`")


def test_the_same_value_in_the_file_names_its_line(toy_recipe_file) -> None:
    path = toy_recipe_file(adapter={"r": True}, train={"lr": float("inf")})
    lines = path.read_text().splitlines()
    r_line = lines.index("r = true") + 1
    result = check(path)
    refused(
        result,
        "2 problems",
        "`adapter.r` = true: Input should be a valid integer",
        f"({path}:{r_line})",
        "`train.lr` = inf",
    )


def test_numbers_toml_users_write_are_still_accepted(toy_recipe_file) -> None:
    # An integer where a float is expected is fine (TOML users write `lr = 1`), and overrides parse as TOML.
    result = run_cli(
        "recipe",
        "check",
        toy_recipe_file(train={"lr": 1}),
        "adapter.r=16",
        "train.betas=[0.9, 0.99]",
        "--resolved",
    )
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads(result.stdout)
    assert resolved["train"]["lr"] == 1.0 and resolved["adapter"]["r"] == 16
    assert resolved["optimizer"]["betas"] == [0.9, 0.99]  # train.betas is deprecated: read into [optimizer]
    assert resolved["run"]["output_dir"].endswith("runs")  # a path is still a string in TOML


def test_run_stops_at_the_check_not_in_the_optimizer(toy_recipe_file) -> None:
    # `train.betas=[2,0]` used to pass the check and crash in torch's AdamW as "unexpected error … bug".
    result = run_cli("run", toy_recipe_file(), "train.betas=[2,0]")
    refused(result, "`train.betas[0]` = 2")
    assert not (toy_recipe_file().parent / "runs" / "tiny").exists()


@pytest.mark.parametrize("override", ["train.lr.x=5", "train.lr.x.y=5"])
def test_an_override_into_a_scalar_is_refused(toy_recipe_file, override: str) -> None:
    refused(
        check(toy_recipe_file(), override),
        f"The override '{override}' sets a key inside `train.lr`",
        "a number (0.01), not a table",
    )


def test_an_override_into_an_array_of_tables_says_to_index_it(toy_recipe_file) -> None:
    two = toy_recipe_file(
        export=[{"kind": "toy-weights"}, {"kind": "toy-weights", "name": "again"}]
    )  # one is addressed as it is
    refused(check(two, "export.kind=toy-weights"), "an array of tables", "`export.0.kind=…`")


@pytest.mark.parametrize(
    "name", ["..", "../escape", "/tmp/elsewhere", "a/b", "a\\b", ".hidden", "-rf", "tab\tname", ""]
)
def test_run_name_must_be_one_safe_directory_name(toy_recipe_file, name: str) -> None:
    refused(check(toy_recipe_file(run={"name": name})), "`run.name` = ", "it must be one directory name")


def test_an_unsafe_run_name_is_refused_by_run_before_anything_is_written(
    tmp_path: Path, toy_recipe_file
) -> None:
    result = run_cli("run", toy_recipe_file(), "run.name=../escape")
    refused(result, "`run.name` = '../escape': is a path, not one directory name")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_run_names_people_use_are_accepted(toy_recipe_file) -> None:
    for name in ("quickstart", "r32-lr1e-4", "v1.2+bf16", "my run", "café_2"):
        result = check(toy_recipe_file(run={"name": name}))
        assert result.exit_code == 0, (name, result.output)


def test_the_default_run_name_from_the_file_name_follows_the_same_rule(
    tmp_path: Path, toy_recipe_file
) -> None:
    text = toy_recipe_file().read_text().replace('name = "tiny"\n', "")
    hidden = tmp_path / ".hidden.toml"
    hidden.write_text(text)
    refused(
        check(hidden),
        "`run.name` is unset and the recipe's file name '.hidden' starts with '.'",
        "set run.name",
    )
    plain = tmp_path / "plain-name.toml"
    plain.write_text(text)
    assert check(plain).exit_code == 0


@pytest.mark.parametrize("name", ["../../../x", "/tmp/x", "sub/dir", ".."])
def test_an_export_name_must_be_one_safe_directory_name(toy_recipe_file, name: str) -> None:
    result = check(toy_recipe_file(export=[{"kind": "toy-weights", "name": name}]))
    refused(result, f"`export[0].name` = {name!r}", "it must be one directory name")


def test_an_export_name_must_be_a_string(toy_recipe_file) -> None:
    refused(
        check(toy_recipe_file(export=[{"kind": "toy-weights", "name": 5}])),
        "`export[0].name` = 5: must be a string",
    )


def test_a_recipe_with_a_byte_order_mark_is_read(tmp_path: Path, toy_recipe_file) -> None:
    path = toy_recipe_file()
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = check(bom)
    assert result.exit_code == 0, result.output
    # Lines are still counted from the top of the file.
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"r = 4", b"rr = 4"))
    line = bom.read_text(encoding="utf-8-sig").splitlines().index("rr = 4") + 1
    refused(check(bom), f"unknown key `adapter.rr` ({bom}:{line})")


def test_a_symlink_loop_is_named_as_such(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b.toml", tmp_path / "a.toml")
    os.symlink(tmp_path / "a.toml", tmp_path / "b.toml")
    result = check(tmp_path / "a.toml")
    refused(result, f"{tmp_path / 'a.toml'} is a symbolic link loop")
    assert "not found" not in result.stderr


def test_a_dangling_symlink_names_its_target(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.toml", tmp_path / "link.toml")
    refused(
        check(tmp_path / "link.toml"),
        f"{tmp_path / 'link.toml'} is a symbolic link to {tmp_path / 'gone.toml'}, which does not exist",
    )


def test_a_data_file_that_is_a_symlink_loop_is_named_as_such(tmp_path: Path, toy_recipe_file) -> None:
    os.symlink(tmp_path / "y.jsonl", tmp_path / "x.jsonl")
    os.symlink(tmp_path / "x.jsonl", tmp_path / "y.jsonl")
    refused(
        check(toy_recipe_file(data={"path": str(tmp_path / "x.jsonl")})),
        "`data.path`:",
        "is a symbolic link loop",
    )


def _numeric(annotation: object) -> type | None:
    """``int`` or ``float`` when a field holds one (possibly optional), else None."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = {_numeric(a) for a in typing.get_args(annotation)} - {None}
        return found.pop() if len(found) == 1 else None
    return annotation if annotation in (int, float) else None  # type: ignore[return-value]


def test_every_installed_kinds_numbers_refuse_booleans_strings_and_infinity() -> None:
    # Across the core's sections and every installed plugin's option models (the first-party ones and
    # the toy's): `true` is never 1, "16" never 16, and inf never a number.
    from loraplug.data.options import CleanOptions, DataCoreOptions
    from loraplug.recipe.sections import EvalSection, RunSection, TrainSection

    models = {RunSection, TrainSection, EvalSection, DataCoreOptions, CleanOptions}
    models |= {served.spec.options_model() for served in PluginHost.load().registry.all()}
    checked = 0
    for model in models:
        assert issubclass(model, Options), model
        for name, field in model.model_fields.items():
            number = _numeric(field.annotation)
            if number is None:
                continue
            bad = [True, "1"] + ([float("inf")] if number is float else [1.5])
            for value in bad:
                try:
                    model.model_validate({name: value})
                except Exception as exc:  # noqa: BLE001 — pydantic's ValidationError
                    errors = [e for e in exc.errors() if e["loc"][:1] == (name,)]  # type: ignore[attr-defined]
                    assert errors, f"{model.__name__}.{name} accepted {value!r}"
                else:
                    pytest.fail(f"{model.__name__}.{name} accepted {value!r}")
            checked += 1
    assert checked > 40


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, toy_site: Path) -> Path:
    root = tmp_path_factory.mktemp("names")
    with plugins_installed(toy_site):
        result = run_cli(
            "run", toy_recipe(root, train={"max_steps": 1}, eval={"sample_prompts": []}, export=[])
        )
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", ".hidden"], "The export name '.hidden' starts with '.'"),
        (["--name", "a:b"], "The export name 'a:b' has the character ':'"),
        (
            ["--name", "fine", "name=../../x"],
            "The export setting 'name=../../x' is not an option of the export. Name the export's directory with --name",
        ),
    ],
)
def test_loraplug_export_names_follow_the_same_rule(trained_run: Path, args: list[str], message: str) -> None:
    result = run_cli("export", trained_run, "--kind", "toy-weights", *args)
    refused(result, message)
    assert not (trained_run / "exports").exists() or not any((trained_run / "exports").iterdir())
