"""Labelled JSONL and CSV: records, errors naming the line, and the labels checked by `recipe check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraplug.testing import run_cli, write_recipe


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def recipe(tmp_path: Path, data: dict[str, Any], **model: Any) -> Path:
    return write_recipe(
        tmp_path / "classify.toml",
        {
            "run": {"name": "classify", "output_dir": str(tmp_path / "runs")},
            "data": data,
            "model": {"kind": "sequence-classifier", "pretrained": "tiny-llama-classifier", **model},
            "adapter": {"kind": "lora"},
            "train": {"max_steps": 1},
        },
    )


ROWS = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "fine", "label": 3}]


def test_jsonl_and_csv_give_the_same_labelled_text_records(tmp_path: Path) -> None:
    from loraplug_text_classification.data import load
    from loraplug_text_classification.options import LabelledCsvOptions, LabelledJsonlOptions

    jsonl(tmp_path / "a.jsonl", [{"review": r["text"], "y": r["label"]} for r in ROWS])
    (tmp_path / "a.csv").write_text("y;review\npos;great\nneg;awful\n3;fine\n", encoding="utf-8")
    from_jsonl = load(
        LabelledJsonlOptions(path=tmp_path / "a.jsonl", text_field="review", label_field="y"), 0
    )
    from_csv = load(
        LabelledCsvOptions(path=tmp_path / "a.csv", text_column="review", label_column="y", delimiter=";"), 0
    )
    expected = [(r["text"], str(r["label"])) for r in ROWS]  # an integer label is its decimal string
    assert [(r["text"], r["label"]) for r in from_jsonl.train] == expected
    assert [(r["text"], r["label"]) for r in from_csv.train] == expected
    assert [r["id"] for r in from_csv.train] == ["a.csv:2", "a.csv:3", "a.csv:4"]
    assert from_jsonl.summary["labels"] == {"3": 1, "neg": 1, "pos": 1}


def test_recipe_check_names_an_unknown_label_and_its_line(tmp_path: Path) -> None:
    jsonl(tmp_path / "train.jsonl", [*ROWS[:2], {"text": "meh", "label": "neutral"}])
    path = recipe(tmp_path, {"kind": "labelled-jsonl", "path": "train.jsonl"}, labels=["neg", "pos"])
    result = run_cli("recipe", "check", path)
    assert result.exit_code != 0
    assert (
        "train.jsonl line 3 has the label 'neutral', which is not in model.labels (neg, pos)" in result.output
    )
    assert "Traceback" not in result.output


def test_recipe_check_names_a_malformed_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('text,label\nfine,pos\n"no label"\n', encoding="utf-8")
    path = recipe(tmp_path, {"kind": "labelled-csv", "path": "t.csv"})
    result = run_cli("recipe", "check", path)
    assert result.exit_code != 0
    assert "Line 3 of t.csv has the label None" in result.output


def test_recipe_check_accepts_labels_read_from_the_data_and_refuses_one_class(tmp_path: Path) -> None:
    jsonl(tmp_path / "train.jsonl", ROWS)
    assert (
        run_cli(
            "recipe", "check", recipe(tmp_path, {"kind": "labelled-jsonl", "path": "train.jsonl"})
        ).exit_code
        == 0
    )
    jsonl(tmp_path / "train.jsonl", [ROWS[0], ROWS[0]])
    result = run_cli("recipe", "check", recipe(tmp_path, {"kind": "labelled-jsonl", "path": "train.jsonl"}))
    assert result.exit_code != 0
    assert "The data has 1 label (pos); a classifier needs at least two" in result.output


def test_labels_named_in_the_recipe_must_be_distinct(tmp_path: Path) -> None:
    jsonl(tmp_path / "train.jsonl", ROWS)
    path = recipe(tmp_path, {"kind": "labelled-jsonl", "path": "train.jsonl"}, labels=["pos", "neg", "pos"])
    result = run_cli("recipe", "check", path)
    assert result.exit_code != 0
    assert "repeated: pos" in result.output
