"""The tiny classification recipe learns (macro-F1 rises), its report draws the confusion matrix, and each
export predicts what the trained model predicts when loaded in plain transformers, peft and onnxruntime."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug.testing import run_cli, write_recipe

ROOT = Path(__file__).parents[3]
RECIPE = ROOT / "recipes" / "tiny_classify.toml"
TEXTS = [
    "hello, my invoice shows a double charge",
    "the site is down again, please help",
    "how do I change the export format?",
    "error 503 on the dashboard",
    "refund please",
    "x",
]
pytestmark = pytest.mark.slow


def _eval_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "eval"]


def _trained_logits(run_dir: Path, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost

    _, _, model = load_run(run_dir, PluginHost.load(), Console(quiet=True))
    model.module.eval()
    with torch.no_grad():
        return model.module(input_ids=ids, attention_mask=mask).logits.float()


def _export_logits(run_dir: Path, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each export's logits, loaded as docs/classification.md tells a user to load it."""
    import onnxruntime
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    exports = run_dir / "exports"
    merged = AutoModelForSequenceClassification.from_pretrained(exports / "merged").eval()
    adapter = json.loads((exports / "peft" / "adapter_config.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(
        adapter["base_model_name_or_path"], config=AutoConfig.from_pretrained(exports / "peft")
    )
    peft = PeftModel.from_pretrained(base, exports / "peft").eval()
    session = onnxruntime.InferenceSession(
        str(exports / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    with torch.no_grad():
        found = {
            "merged": merged(input_ids=ids, attention_mask=mask).logits,
            "peft": peft(input_ids=ids, attention_mask=mask).logits,
        }
    (onnx,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    return {**found, "onnx": torch.from_numpy(onnx)}


def _batch(run_dir: Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids as the merged export's own tokenizer pads them (texts of different lengths)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "exports" / "merged")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert tokenizer.padding_side == "right" and bool((batch["attention_mask"] == 0).any())
    return batch["input_ids"], batch["attention_mask"]


def _check_exports(run_dir: Path, labels: list[str]) -> None:
    ids, mask = _batch(run_dir, TEXTS)
    trained = _trained_logits(run_dir, ids, mask)
    for name, logits in _export_logits(run_dir, ids, mask).items():
        assert torch.equal(logits.argmax(-1), trained.argmax(-1)), name
        assert torch.allclose(logits.float(), trained, atol=1e-4), (name, (logits - trained).abs().max())
    for name in ("peft", "merged"):
        config = json.loads((run_dir / "exports" / name / "config.json").read_text())
        assert [config["id2label"][str(i)] for i in range(len(labels))] == labels
        assert config["label2id"] == {label: i for i, label in enumerate(labels)}
        manifest = json.loads((run_dir / "exports" / name / "export.json").read_text())
        assert manifest["figures"]["max_abs_logit_diff_vs_trained"] < 1e-4


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classify")
    os.chdir(root)
    result = run_cli("run", RECIPE, f"run.output_dir={root / 'runs'}", "eval.use_best=false")
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny_classify"


def test_the_tiny_recipe_raises_macro_f1_clearly(recipe_run: Path) -> None:
    evals = _eval_records(recipe_run)
    first, last = evals[0], evals[-1]
    assert first["step"] == 0
    assert first["macro_f1"] < 0.35, first
    assert last["macro_f1"] >= first["macro_f1"] + 0.3, (first, last)
    for label in ("question", "billing", "outage"):
        assert {f"precision/{label}", f"recall/{label}", f"f1/{label}"} <= last.keys()


def test_the_report_draws_the_confusion_matrix_and_per_class_table(recipe_run: Path) -> None:
    page = (recipe_run / "report.html").read_text()
    assert "<h2>Evaluation</h2>" in page
    assert "<h3>confusion matrix</h3>" in page and 'src="evaluation/confusion_matrix.png"' in page
    assert (recipe_run / "evaluation" / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert "<h3>per-class scores</h3>" in page and "macro average" in page and "outage" in page


def test_each_export_predicts_the_trained_models_classes(recipe_run: Path) -> None:
    _check_exports(recipe_run, ["question", "billing", "outage"])


def test_a_gpt2_base_without_a_pad_token_trains_balanced_and_exports_with_labels_read_from_csv(
    tmp_path: Path,
) -> None:
    rows = [("great fun", "pos"), ("awful bore", "neg"), ("so so", "meh")] * 6
    (tmp_path / "r.csv").write_text(
        "text,label\n" + "".join(f"{text} {i},{label}\n" for i, (text, label) in enumerate(rows))
    )
    recipe = write_recipe(
        tmp_path / "gpt2.toml",
        {
            "run": {"name": "gpt2", "output_dir": str(tmp_path / "runs")},
            "data": {"kind": "labelled-csv", "path": "r.csv", "balance_by": "label"},
            "model": {
                "kind": "sequence-classifier",
                "pretrained": "tiny-gpt2-classifier",
                "dtype": "float32",
            },
            "adapter": {"kind": "lora", "r": 4},
            "train": {"max_steps": 3, "batch_size": 6, "lr": 5e-3},
            "export": [{"kind": "peft"}, {"kind": "merged"}, {"kind": "onnx"}],
        },
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "gpt2"
    # balance_by draws each class equally often from labelled-text records
    sampling = json.loads((run_dir / "data_report.json").read_text())["sampling"]
    assert sampling["each class drawn"] == "33.3% of the time (3 classes)", sampling
    config = json.loads((run_dir / "exports" / "merged" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["pad_token_id"] == config["eos_token_id"]
    _check_exports(run_dir, ["meh", "neg", "pos"])  # read from the data, sorted
