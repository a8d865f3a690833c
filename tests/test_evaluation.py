"""Evaluation: metrics through the evaluate hook, the best weights, early stopping, NaN handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraplug.testing import run_cli


def status(tmp_path: Path, name: str = "tiny") -> dict:
    return json.loads((tmp_path / "runs" / name / "run.json").read_text())


def test_generation_metrics_are_logged(tmp_path: Path, lm_recipe) -> None:
    recipe = lm_recipe(eval={"metrics": ["perplexity", "bleu", "chrf", "rougeL", "distinct_1", "distinct_2", "exact_match"],
                             "generate_samples": 3, "every_n_steps": 2})  # fmt: skip
    result = run_cli("run", recipe, "train.max_steps=2")
    assert result.exit_code == 0, result.output
    evals = [
        json.loads(row)
        for row in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in row
    ]
    assert [e["step"] for e in evals] == [0, 2]
    for record in evals:
        assert {
            "val_loss",
            "perplexity",
            "bleu",
            "chrf",
            "rougeL",
            "distinct_1",
            "distinct_2",
            "exact_match",
        } <= record.keys()
        assert (
            abs(record["perplexity"] - torch.tensor(record["val_loss"]).exp().item())
            < 1e-6 * record["perplexity"]
        )
        assert 0 <= record["rougeL"] <= 1 and 0 <= record["chrf"] <= 100


def test_unknown_metric_and_unmonitorable_score_are_recipe_errors(lm_recipe) -> None:
    result = run_cli("recipe", "check", lm_recipe(eval={"metrics": ["blue"], "monitor": "accuracy"}))
    assert result.exit_code == 2
    assert "`eval.metrics[0]` = 'blue'" in result.stderr and "Did you mean 'bleu'?" in result.stderr
    assert "`eval.monitor` = 'accuracy'" in result.stderr
    typo = run_cli("recipe", "check", lm_recipe(eval={"metrics": ["chrf"], "monitor": "chrf2"}))
    assert typo.exit_code == 2 and "did you mean 'chrf'? Or add it to eval.metrics" in typo.stderr


def test_f1_needs_labels(lm_recipe) -> None:
    result = run_cli("run", lm_recipe(eval={"metrics": ["f1"]}))
    assert result.exit_code == 2
    assert "The f1 metric needs a `label` field" in result.stderr


def test_f1_against_labels(tmp_path: Path, lm_recipe, jsonl_file) -> None:
    rows = [
        {
            "prompt": f"is {i} even?",
            "response": "yes" if i % 2 == 0 else "no",
            "label": "yes" if i % 2 == 0 else "no",
        }
        for i in range(16)
    ]
    data = jsonl_file("labels.jsonl", rows)
    result = run_cli("run", lm_recipe(data={"path": str(data)}, eval={"metrics": ["f1"]}, export=[]))
    assert result.exit_code == 0, result.output
    final = status(tmp_path)["evaluations"][-1]
    assert 0 <= final["f1"] <= 1


def test_early_stopping_and_best_weights(tmp_path: Path, lm_recipe) -> None:
    # min_delta is larger than any change a few steps can make, so only the first evaluation after the
    # baseline counts as an improvement: the run stops `patience` evaluations later and exports the
    # weights of step 1, not the last ones. A constant schedule makes step 1 the same in a 1-step run.
    recipe = lm_recipe(
        train={"max_steps": 20, "lr": 1e-3, "schedule": "constant"},
        eval={"every_n_steps": 1, "early_stopping_patience": 2, "early_stopping_min_delta": 100.0},
        export=[{"kind": "peft"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "early stopping at step 3" in result.stdout
    assert "using the best weights, from step 1" in result.stdout
    record = status(tmp_path)
    assert record["step"] == 3 and record["stopped_early"] is True
    assert record["best"]["step"] == 1 and record["best"]["metric"] == "val_loss"
    assert [e["step"] for e in record["evaluations"]] == [0, 1, 2, 3]

    one = run_cli("run", recipe, "run.name=one", "train.max_steps=1", "~eval.early_stopping_patience")
    assert one.exit_code == 0, one.output
    exported = load_file(str(tmp_path / "runs" / "tiny" / "adapter" / "adapter.safetensors"))
    after_one = load_file(str(tmp_path / "runs" / "one" / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(exported[k], after_one[k]) for k in exported)
    assert any(torch.count_nonzero(v) for k, v in exported.items() if "lora_B" in k)  # it did train


def test_nan_loss_stops_with_the_step_and_samples(tmp_path: Path, lm_recipe, monkeypatch) -> None:
    monkeypatch.setenv(
        "LORAPLUG_FAULT", "nan:micro=3"
    )  # read by each run (loraplug.training.faults.from_env)
    stopped = run_cli("run", lm_recipe(export=[]))
    assert stopped.exit_code == 2
    assert "The loss became nan at step 3" in stopped.stderr and "train.jsonl:" in stopped.stderr
    assert status(tmp_path)["status"] == "failed"

    skipped = run_cli("run", lm_recipe(export=[]), "train.on_nan=skip", "--overwrite")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped the update" in skipped.stdout
    lines = [
        json.loads(row) for row in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(row.get("skipped_nan_steps") == 1 for row in lines)


# --- metrics declare their direction -------------------------------------------------------------

RISING_METRIC = """
from loraplug import KindSpec, Options, hookimpl

class NoOptions(Options):
    pass

calls = []

@hookimpl
def loraplug_register_kinds(register):
    # Named like a loss, yet higher is better: a guess from the name would pick the first evaluation.
    register(KindSpec("metric", "loss_score", NoOptions, "rises with every evaluation", higher_is_better=True))

@hookimpl
def loraplug_evaluate(metrics, model, options, data, scores, ctx):
    calls.append(1)
    return {"loss_score": float(len(calls))}
"""

UNDECLARED_METRIC = """
from loraplug import KindSpec, Options, hookimpl

class NoOptions(Options):
    pass

@hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("metric", "mystery", NoOptions, "no direction declared"))
"""


def _loraplug(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "loraplug", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_the_monitored_metric_is_ranked_as_it_declares_not_by_its_name(tmp_path: Path, lm_recipe) -> None:
    from loraplug.runinfo import read_run
    from loraplug.testing import plugin_dist

    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-rising", module="loraplug_rising", source=RISING_METRIC
    )
    plugin_dist(site, distribution="loraplug-mystery", module="loraplug_mystery", source=UNDECLARED_METRIC)
    recipe = lm_recipe(
        train={"max_steps": 3}, eval={"every_n_steps": 1, "metrics": ["loss_score"], "monitor": "loss_score", "sample_prompts": []},
        export=[],
    )  # fmt: skip
    ran = _loraplug(site, tmp_path, "run", str(recipe))
    assert ran.returncode == 0, ran.stderr
    record = status(tmp_path)
    assert record["monitor"] == {"metric": "loss_score", "lower_is_better": False}
    assert record["best"] == {
        "metric": "loss_score",
        "value": 4.0,
        "step": 3,
    }  # evaluations at steps 0-3 scored 1-4

    # A running run (no best recorded yet) is ranked by the direction it recorded, never by the name.
    run_dir = tmp_path / "runs" / "tiny"
    record.pop("best")
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "running"}))
    best = read_run(run_dir).best()
    assert best is not None and (best.step, best.value) == (3, 4.0)
    record.pop("monitor")
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert read_run(run_dir).best() is None

    # A metric that does not say which way is better is refused when its plugin loads.
    listing = json.loads(_loraplug(site, tmp_path, "plugins", "list", "--json").stdout)
    mystery = next(p for p in listing if p["distribution"] == "loraplug-mystery")
    assert mystery["status"] == "error" and "without saying whether higher is better" in mystery["error"]


def test_recipe_keys_lists_each_metric_with_its_direction() -> None:
    result = run_cli("recipe", "keys", "--markdown")
    assert result.exit_code == 0
    assert "| `perplexity` | causal-lm | lower | loraplug-causal-lm |" in result.stdout
    assert "| `bleu` | causal-lm | higher | loraplug-causal-lm |" in result.stdout
    assert "causal-lm has perplexity" not in result.stdout  # the eval.metrics help names no plugin's metrics
