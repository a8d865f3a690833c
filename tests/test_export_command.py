"""``loraplug export RUN_DIR --kind KIND``: re-exports without retraining, refuses what it cannot do
before loading anything, and names the distribution that serves a kind which is not installed (on the
toy regressor and its ``toy-weights`` export: the core alone)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from loraplug.plugins import ExtraPlugin, PluginHost
from loraplug.testing import TOY_DISTRIBUTION, ToyRegressor, plugins_installed, run_cli, toy_recipe

pytestmark = pytest.mark.usefixtures("toy")  # the toy plugin installed for every test (tests/conftest.py)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, toy_site: Path) -> Path:
    root = tmp_path_factory.mktemp("reexport")
    recipe = toy_recipe(
        root, train={"max_steps": 2}, eval={"sample_prompts": []}, export=[{"kind": "toy-weights"}]
    )
    with plugins_installed(toy_site):
        result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reexport_writes_a_manifest_and_leaves_the_run_alone(run_dir: Path) -> None:
    first_manifest = (run_dir / "exports" / "toy-weights" / "export.json").read_text()
    result = run_cli("export", run_dir, "--kind", "toy-weights", "--name", "half", "dtype=float16")
    assert result.exit_code == 0, result.output
    assert (
        "half" in result.stdout
        and "model.safetensors" in result.stdout
        and "max_abs_diff_vs_trained" in result.stdout
    )
    manifest = json.loads((run_dir / "exports" / "half" / "export.json").read_text())
    assert manifest["kind"] == "toy-weights" and manifest["options"]["dtype"] == "float16"
    assert manifest["adapter"] == {
        "path": "adapter/adapter.safetensors",
        "sha256": _sha256(run_dir / "adapter" / "adapter.safetensors"),
        "size": (run_dir / "adapter" / "adapter.safetensors").stat().st_size,
    }
    assert manifest["recipe_hash"] == json.loads(first_manifest)["recipe_hash"]
    assert (run_dir / "exports" / "toy-weights" / "export.json").read_text() == first_manifest
    status = json.loads((run_dir / "run.json").read_text())
    assert [(e["name"], e["ok"]) for e in status["exports"]] == [("toy-weights", True), ("half", True)]


def test_reexport_of_a_checkpoint_directory(run_dir: Path) -> None:
    checkpoint = run_dir / "checkpoints" / "step-2"
    checkpoint.mkdir(parents=True)
    shutil.copy(run_dir / "adapter" / "adapter.safetensors", checkpoint / "adapter.safetensors")
    result = run_cli("export", checkpoint, "--kind", "toy-weights")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run_dir / "exports" / "step-2-toy-weights" / "export.json").read_text())
    assert manifest["adapter"]["path"] == "checkpoints/step-2/adapter.safetensors"
    # A checkpoint's weights are not the finished run's: its model card claims no final metrics.
    assert "- train_loss:" not in (run_dir / "exports" / "step-2-toy-weights" / "README.md").read_text()


def test_reexported_model_card_carries_the_runs_final_metrics(run_dir: Path) -> None:
    result = run_cli("export", run_dir, "--kind", "toy-weights", "--name", "toy-again")
    assert result.exit_code == 0, result.output
    status = json.loads((run_dir / "run.json").read_text())
    card = (run_dir / "exports" / "toy-again" / "README.md").read_text()
    assert f"- train_loss: {round(status['train_loss'], 4)}" in card
    assert card == (run_dir / "exports" / "toy-weights" / "README.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "toy-weights"], "exports/toy-weights already holds an export. Pass --overwrite"),
        (
            ["--kind", "toy-weights", "model_crad=false", "--name", "x"],
            "unknown key `export.model_crad` (the command-line override `model_crad=false`); did you mean `export.model_card`?",
        ),
        (["--kind", "toy-weights", "model_card"], "is not KEY=VALUE"),
        (["--kind", "toy-weights", "--name", "../elsewhere"], "is a path, not one directory name"),
        (["--kind", "toy-weight"], "Did you mean 'toy-weights'?"),
    ],
)
def test_bad_requests_are_refused_before_anything_loads(run_dir: Path, args: list[str], message: str) -> None:
    listing = sorted(p.name for p in (run_dir / "exports").iterdir())
    result = run_cli("export", run_dir, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert sorted(p.name for p in (run_dir / "exports").iterdir()) == listing


def test_a_directory_that_is_no_run(tmp_path: Path) -> None:
    result = run_cli("export", tmp_path, "--kind", "toy-weights")
    assert result.exit_code == 2 and "is not a loraplug run directory" in result.stderr


@pytest.mark.parametrize(
    ("kind", "distribution"),
    [("onnx", "loraplug-onnx"), ("bnb-4bit", "loraplug-quant"), ("int8", "loraplug-quant")],
)
def test_an_export_kind_whose_plugin_is_not_installed_names_the_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, distribution: str
) -> None:
    only_toy = PluginHost.load(entry_points=False, extra=[ExtraPlugin(ToyRegressor(), TOY_DISTRIBUTION)])
    monkeypatch.setattr("loraplug.plugins._loaded", only_toy)  # the process's plugins (load_plugins)
    result = run_cli(
        "recipe", "check", toy_recipe(tmp_path, export=[{"kind": "toy-weights"}, {"kind": kind}])
    )
    assert result.exit_code == 2
    assert (
        f"The export kind {kind!r} is provided by the plugin {distribution}, which is not installed"
        in result.stderr
    )
    assert f"pip install {distribution}" in result.stderr
