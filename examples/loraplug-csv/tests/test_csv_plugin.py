"""How a third-party plugin tests itself: register it as an installed distribution, run the CLI."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loraplug.testing import plugin_dist, write_recipe

PACKAGE = Path(__file__).parents[1] / "loraplug_csv"


def installed(tmp_path: Path) -> Path:
    return plugin_dist(tmp_path / "site", distribution="loraplug-csv", module="loraplug_csv", package=PACKAGE)


def run(site: Path, *args: str, trace: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "HF_HUB_OFFLINE": "1",
        **({"LORAPLUG_TRACE_HOOKS": "1"} if trace else {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "loraplug", *args], capture_output=True, text=True, env=env, timeout=600
    )


def reviews(path: Path, rows: int = 16) -> Path:
    """Texts whose label is spelt in them, so a few steps learn something."""
    lines = [
        f"{'great fun' if i % 2 else 'awful bore'} number {i},{'positive' if i % 2 else 'negative'}\n"
        for i in range(rows)
    ]
    path.write_text("review,verdict\n" + "".join(lines), encoding="utf-8")
    return path


def classifier_recipe(tmp_path: Path, **changes: Any) -> Path:
    reviews(tmp_path / "reviews.csv")
    recipe: dict[str, dict[str, object]] = {
        "run": {"name": "reviews", "output_dir": str(tmp_path / "runs"), "seed": 3},
        "data": {
            "kind": "csv-labels",
            "path": "reviews.csv",
            "text_column": "review",
            "label_column": "verdict",
            "val_fraction": 0.25,
        },
        "model": {
            "kind": "text-classifier",
            "pretrained": "tiny-classifier",
            "labels": ["negative", "positive"],
        },
        "adapter": {"kind": "lora", "r": 4},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3},
        "eval": {"metrics": ["accuracy"], "sample_prompts": ["great fun"]},
    }
    for section, values in changes.items():
        if isinstance(values, list):  # [[export]] tables
            recipe[section] = values
            continue
        recipe.setdefault(section, {}).update(values)
        recipe[section] = {
            key: value for key, value in recipe[section].items() if value is not None
        }  # None: drop the key
    return write_recipe(tmp_path / "reviews.toml", recipe)


def test_csv_data_trains_a_causal_lm(tmp_path: Path) -> None:
    site = installed(tmp_path)
    (tmp_path / "pairs.csv").write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(12)))
    recipe = write_recipe(
        tmp_path / "csv.toml",
        {
            "run": {"output_dir": str(tmp_path / "runs")},
            "data": {
                "kind": "csv",
                "path": "pairs.csv",
                "prompt_column": "question",
                "response_column": "answer",
            },
            "model": {"kind": "causal-lm", "pretrained": "tiny-llama"},
            "adapter": {"kind": "lora"},
            "train": {"max_steps": 2, "batch_size": 4},
        },
    )
    proc = run(site, "run", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert "rows 12" in proc.stdout


def test_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    site = installed(tmp_path)
    (tmp_path / "pairs.csv").write_text("q,a\nx,y\n")
    recipe = write_recipe(
        tmp_path / "csv.toml",
        {
            "data": {"kind": "csv", "path": "pairs.csv"},
            "model": {"kind": "causal-lm", "pretrained": "tiny-llama"},
            "adapter": {"kind": "lora"},
        },
    )
    proc = run(site, "run", str(recipe))
    assert proc.returncode == 2
    assert "has no column prompt, response" in proc.stderr and "Traceback" not in proc.stderr


def test_csv_data_for_an_image_model_is_refused_by_recipe_check(tmp_path: Path) -> None:
    site = installed(tmp_path)
    (tmp_path / "pairs.csv").write_text("prompt,response\nx,y\n")
    recipe = write_recipe(
        tmp_path / "csv.toml",
        {
            "data": {"kind": "csv", "path": "pairs.csv"},
            "model": {"kind": "stable-diffusion", "pretrained": "tiny-sd"},
            "adapter": {"kind": "lora"},
        },
    )
    proc = run(site, "recipe", "check", str(recipe))
    assert proc.returncode == 2
    assert "the data kind 'csv' (loraplug-csv) produces chat records" in proc.stderr
    assert "trains on caption-image records" in proc.stderr and "Traceback" not in proc.stderr


def test_a_new_model_kind_trains_evaluates_and_samples(tmp_path: Path) -> None:
    site = installed(tmp_path)
    proc = run(site, "run", str(classifier_recipe(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "rows 16" in proc.stdout and "val rows 4" in proc.stdout
    run_dir = tmp_path / "runs" / "reviews"
    assert (run_dir / "adapter" / "adapter.safetensors").is_file()
    scores = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [s["accuracy"] for s in scores if "accuracy" in s]
    assert accuracy and all(0.0 <= a <= 1.0 for a in accuracy)
    samples = "\n".join(
        p.read_text()
        for p in (run_dir / "samples").rglob("*")
        if p.is_file() and p.suffix in (".md", ".txt", ".jsonl", ".json")
    )
    assert "positive" in samples or "negative" in samples, (
        "the sample is the label the classifier gives its prompt"
    )


def test_a_label_the_model_does_not_know_names_the_row(tmp_path: Path) -> None:
    site = installed(tmp_path)
    recipe = classifier_recipe(tmp_path, model={"labels": ["negative", "neutral"]})
    proc = run(site, "run", str(recipe))
    assert proc.returncode == 2, proc.stderr
    assert (
        "has the label 'positive', which is not in model.labels" in proc.stderr
        and "reviews.csv:" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_labelled_rows_for_a_causal_lm_are_refused_by_recipe_check(tmp_path: Path) -> None:
    site = installed(tmp_path)
    recipe = classifier_recipe(
        tmp_path, model={"kind": "causal-lm", "pretrained": "tiny-llama", "labels": None}
    )
    proc = run(site, "recipe", "check", str(recipe))
    assert proc.returncode == 2
    assert "the data kind 'csv-labels' (loraplug-csv) produces labelled-text records" in proc.stderr


def test_the_plugin_imports_loraplug_only_never_another_plugin() -> None:
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    # loraplug_hf is the toolkit's Hugging Face half: a library plugins depend on, not a plugin.
    assert {name for name in imported if name.startswith("loraplug")} == {
        "loraplug",
        "loraplug_hf",
        "loraplug_csv",
    }


# --- Exported by onnx and int8 through loraplug_deployable, which those plugins call without knowing this one ---

#: What the trained classifier, its ONNX export and its int8 export compute on texts of their own, measured
#: in a process where the plugin is installed: the run rebuilt with loraplug's public API, not by a test helper.
COMPARE = """
import json, sys
from pathlib import Path

import numpy as np, onnxruntime, torch
from rich.console import Console
from transformers import AutoModelForSequenceClassification

from loraplug import load_plugins
from loraplug.pipeline import load_run
from loraplug_csv.classifier import collate, encode

run_dir = Path(sys.argv[1])
recipe, ctx, model = load_run(run_dir, load_plugins(), Console(quiet=True))
tokenizer, options = model.components["tokenizer"], recipe.model.options
texts = ["great fun number 99", "an awful bore, truly awful", "ok", "great fun, great fun, great fun number 7"]
batch = collate([encode(tokenizer, options, {"id": str(i), "text": t, "label": 0}) for i, t in enumerate(texts)], pad_id=tokenizer.pad_token_id)
ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
module = model.module.eval()
with torch.no_grad():
    trained = module(input_ids=ids, attention_mask=mask).logits.float().numpy()
    with module.disable_adapter():
        base = module(input_ids=ids, attention_mask=mask).logits.float().numpy()
    int8 = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "exports" / "int8")).eval()
    quantized = int8(input_ids=ids, attention_mask=mask).logits.float().numpy()
session = onnxruntime.InferenceSession(str(run_dir / "exports" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
(onnx,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
print(json.dumps({
    "onnx_vs_trained": float(np.abs(onnx - trained).max()),
    "base_vs_trained": float(np.abs(base - trained).max()),
    "int8_vs_trained": float(np.abs(quantized - trained).max()),
    "int8_weight": type(int8.model.layers[0].mlp.up_proj.weight).__name__,
    "labels": int8.config.id2label,
}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """The classifier trained with an onnx and an int8 export: ``(site, run directory, the run)``."""
    tmp = tmp_path_factory.mktemp("classifier")
    site = installed(tmp)
    recipe = classifier_recipe(
        tmp, train={"max_steps": 6, "lr": 5e-3}, export=[{"kind": "onnx"}, {"kind": "int8"}]
    )
    ran = run(site, "run", str(recipe), trace=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return site, tmp / "runs" / "reviews", ran


def _export(run_dir: Path, name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(
        (run_dir / "exports" / name / "export.json").read_text(encoding="utf-8")
    )
    return manifest


def test_onnx_and_int8_export_the_classifier_merged_once(
    exported: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    _, run_dir, ran = exported
    assert ran.stderr.count("[loraplug hook] loraplug_deployable -> loraplug-csv:loraplug_csv") == 1
    for name in ("onnx", "int8"):
        check = _export(run_dir, name)["figures"]["merge_check"]
        assert 0 <= check["max_abs_logit_diff_vs_trained"] < check["tolerance"] == 1e-3
    onnx = _export(run_dir, "onnx")["figures"]
    assert onnx["inputs"] == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert 0 <= onnx["max_abs_logit_diff"] < onnx["tolerance"]
    files = {f["path"] for f in _export(run_dir, "onnx")["files"]}
    assert {
        "model.onnx",
        "config.json",
        "tokenizer.json",
    } <= files  # the labels and tokenizer beside the graph


def test_onnxruntime_and_the_int8_export_compute_what_the_trained_classifier_computes(
    exported: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    site, run_dir, _ = exported
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", COMPARE, str(run_dir)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["onnx_vs_trained"] < 1e-4  # texts and lengths neither traced nor checked by the export
    assert seen["base_vs_trained"] > 1e-2  # the trained adapter and head are in the export
    assert (
        seen["int8_vs_trained"] < 0.05 and "Int8" in seen["int8_weight"]
    )  # torchao's int8 tensors, reloaded
    assert seen["labels"] == {"0": "negative", "1": "positive"}


def test_int8_measures_its_drift_and_scores_on_the_validation_rows(
    exported: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    _, run_dir, _ = exported
    figures = _export(run_dir, "int8")["figures"]
    assert figures["measured_on"] == "validation split, first 4 samples"
    assert 0 < figures["max_abs_logit_drift"] < 0.05
    assert 0 <= figures["accuracy_quantized"] <= 1 and figures["cross_entropy_unquantized"] > 0
    assert "cross_entropy_change_pct" in figures and figures["size_ratio"] < 1


def test_recipe_check_lets_the_bitsandbytes_exports_have_the_classifier(tmp_path: Path) -> None:
    # The model kind declares provides="from_pretrained"; one that declares nothing (stable-diffusion) is refused.
    site = installed(tmp_path)
    exports = [{"kind": "onnx"}, {"kind": "int8"}, {"kind": "bnb-8bit"}, {"kind": "bnb-4bit"}]
    proc = run(site, "recipe", "check", str(classifier_recipe(tmp_path, export=exports)))
    assert proc.returncode == 0, proc.stderr
