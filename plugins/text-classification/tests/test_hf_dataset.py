"""A classifier trains on labelled text read through the `hf-dataset` data kind (loraplug-datasets), whose
labels the classifier cannot read at `recipe check`: then model.labels must name them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplug.testing import run_cli, write_recipe

pytest.importorskip("loraplug_datasets")


def _recipe(tmp_path: Path, **model: object) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("great fun", "pos"), ("awful bore", "neg")] * 6
    texts = [f"{text} {i}" for i, (text, _) in enumerate(rows)]
    pq.write_table(pa.table({"text": texts, "label": [label for _, label in rows]}), tmp_path / "r.parquet")
    return write_recipe(
        tmp_path / "hf.toml",
        {
            "run": {"name": "hf", "output_dir": str(tmp_path / "runs")},
            "data": {"kind": "hf-dataset", "path": "r.parquet", "format": "text-label", "val_fraction": 0.25},
            "model": {"kind": "sequence-classifier", "pretrained": "tiny-llama-classifier", **model},
            "adapter": {"kind": "lora", "r": 4},
            "train": {"max_steps": 2, "batch_size": 4},
            "eval": {"metrics": ["accuracy", "macro_f1"]},
        },
    )


def test_without_model_labels_recipe_check_asks_for_them(tmp_path: Path) -> None:
    result = run_cli("recipe", "check", _recipe(tmp_path))
    assert result.exit_code != 0
    assert "`model.labels` is not set and data.kind 'hf-dataset' is not one whose labels" in result.output


@pytest.mark.slow
def test_a_parquet_file_of_labelled_text_trains_and_is_scored(tmp_path: Path) -> None:
    result = run_cli("run", _recipe(tmp_path, labels=["neg", "pos"]))
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "runs" / "hf" / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if r.get("split") == "eval"]
    assert evals and {"accuracy", "macro_f1"} <= evals[-1].keys()
