"""The plugins docs/plugins.md shows for the new axes — an optimizer, a cleaning filter, a metric, a
sample sink — are complete: each is installed as a real distribution and trains a tiny run (of the toy
regressor: the axes are the core's, whatever the modality)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from loraplug.testing import plugin_dist, run_with_site
from loraplug.training.state import load_state

DOC = Path(__file__).parents[1] / "docs" / "plugins.md"

pytestmark = pytest.mark.usefixtures("toy")  # the toy plugin installed, on PYTHONPATH too (tests/conftest.py)


def example(name: str) -> str:
    match = re.search(
        rf"<!-- example: {name} -->\n```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S
    )
    assert match, f"docs/plugins.md lost its {name} example"
    return match.group(1)


@pytest.fixture
def run_with(tmp_path: Path):
    def run(name: str, recipe: Path) -> subprocess.CompletedProcess[str]:
        module = "loraplug_" + name.replace(" ", "_")
        site = plugin_dist(
            tmp_path / "site",
            distribution=f"loraplug-{name.replace(' ', '-')}",
            module=module,
            source=example(name),
        )
        proc = run_with_site(site, "run", recipe, cwd=tmp_path, env={"LORAPLUG_STRICT_PLUGINS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return run


def test_the_optimizer_example_trains_and_checkpoints_its_state(
    tmp_path: Path, toy_recipe_file, run_with
) -> None:
    recipe = toy_recipe_file(train={"optimizer": "sgd", "lr": 0.05, "max_steps": 2, "save_every_n_steps": 2}, optimizer={"momentum": 0.8},
                       eval={"sample_prompts": []}, export=[])  # fmt: skip
    proc = run_with("optimizer plugin", recipe)
    assert (
        "[loraplug hook] loraplug_build_optimizer -> loraplug-optimizer-plugin:loraplug_optimizer_plugin"
        in proc.stderr
    )
    saved = load_state(
        tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000002" / "optimizer.safetensors"
    )["optimizer"]
    assert saved["param_groups"][0]["momentum"] == 0.8 and "momentum_buffer" in saved["state"][0]


def test_the_filter_example_removes_what_it_says(
    tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of, run_with
) -> None:
    texts = [f"question {i}, an answer" for i in range(8)] + ["call 555 1234, no"]
    rows = [
        {**row, "text": text} for row, text in zip(toy_rows_of(9), texts, strict=True)
    ]  # read by record_text
    recipe = toy_recipe_file(data={"path": str(jsonl_file("d.jsonl", rows)), "val_path": None,
                             "clean": {"filters": [{"kind": "max_digits", "at_most": 2}]}},
                       train={"max_steps": 1}, eval={"sample_prompts": []}, export=[])  # fmt: skip
    run_with("filter plugin", recipe)
    report = json.loads((tmp_path / "runs" / "tiny" / "data_report.json").read_text())
    counts = {f["name"]: f["removed"] for f in report["splits"]["train"]["filters"]}
    assert counts["max_digits"] == 1


def test_the_metric_example_is_monitored_higher_is_better(tmp_path: Path, toy_recipe_file, run_with) -> None:
    recipe = toy_recipe_file(train={"max_steps": 2}, eval={"every_n_steps": 1, "metrics": ["token_probability"], "monitor": "token_probability",
                                                     "sample_prompts": []}, export=[])  # fmt: skip
    run_with("metric plugin", recipe)
    status = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())
    assert status["monitor"] == {"metric": "token_probability", "lower_is_better": False}
    scores = {e["step"]: e["token_probability"] for e in status["evaluations"] if e["step"] > 0}
    assert status["best"]["value"] == max(scores.values())


def test_the_sample_sink_example_renders_samples_by_type(tmp_path: Path, toy_recipe_file, run_with) -> None:
    run_with(
        "sample sink plugin",
        toy_recipe_file(train={"max_steps": 1}, eval={"sample_prompts": ["0.5, -1, 2"]}, export=[]),
    )
    written = (tmp_path / "runs" / "tiny" / "samples.md").read_text()
    assert (
        written.startswith("## step 0, samples/0: 0.5, -1, 2")
        and "## step 1, samples/0: 0.5, -1, 2" in written
    )
