"""[data.clean] on the causal LM's chat records: the chat filter (empty responses), the text filters in
one run with their report, and the token limits the model plugin applies. (The core's side, on the toy
regressor's text records: tests/test_data_clean.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from loraplug.testing import run_cli


def _run(lm_recipe, jsonl_file, rows, clean_table: dict, **changes):
    data = jsonl_file("clean.jsonl", rows)
    recipe = lm_recipe(
        data={"path": str(data), "val_fraction": 0.0, "clean": clean_table, **changes.pop("data", {})},
        model={"max_length": 256, **changes.pop("model", {})},
        train={"max_steps": 1},
        eval={"sample_prompts": []},
        export=[],
    )
    return run_cli("run", recipe)


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "tiny" / "data_report.json").read_text())


def _removed(report: dict, split: str = "train") -> dict[str, int]:
    return {f["name"]: f["removed"] for f in report["splits"][split]["filters"]}


def test_every_text_filter_removes_its_samples_and_reports_examples(
    tmp_path: Path, lm_recipe, jsonl_file, chat_rows
) -> None:
    rows = chat_rows(12)
    rows += [
        {
            "prompt": rows[0]["prompt"].upper() + "  ",
            "response": rows[0]["response"],
        },  # exact duplicate once normalised
        {"prompt": "no answer", "response": "   "},  # empty response
        {"prompt": "visit http://spam.example", "response": "click"},  # excluded by a pattern
        {"prompt": "long " + "word " * 80, "response": "ok"},  # too many characters
        {"prompt": "hi", "response": "y"},  # too few characters
    ]
    result = _run(lm_recipe, jsonl_file, rows, {"exclude": ["https?://"], "min_chars": 8, "max_chars": 300})
    assert result.exit_code == 0, result.output
    report = _report(tmp_path)
    assert _removed(report) == {"empty_responses": 1, "exclude": 1, "length_chars": 2, "exact_dedup": 1}
    train = report["splits"]["train"]
    assert (train["before"], train["after"]) == (17, 12)
    dedup = next(f for f in train["filters"] if f["name"] == "exact_dedup")
    assert dedup["examples"][0]["id"] == "clean.jsonl:13"
    assert dedup["examples"][0]["reason"] == "same text as clean.jsonl:1"
    # the terminal shows the same as a table, with examples
    assert (
        "data cleaning" in result.stdout
        and "clean.jsonl:15" in result.stdout
        and "removed by cleaning 5" in result.stdout
    )


def test_token_limits_are_applied_by_the_model_plugin(tmp_path: Path, lm_recipe, jsonl_file) -> None:
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(10)] + [
        {"prompt": "long", "response": "z" * 150}
    ]
    result = _run(lm_recipe, jsonl_file, rows, {"max_tokens": 100})
    assert result.exit_code == 0, result.output
    report = _report(tmp_path)
    tokens = next(f for f in report["splits"]["train"]["filters"] if f["name"] == "length_tokens")
    assert tokens["removed"] == 1 and tokens["examples"][0]["id"] == "clean.jsonl:11"
    assert report["splits"]["train"]["after"] == 10
