"""A balanced run on the causal LM: data.balance_by turns packing off (a packed row would mix classes'
drawing weights) and says so; the classes are reported as for any model (tests/test_balance.py)."""

from __future__ import annotations

import json
from pathlib import Path

from loraplug.testing import run_cli


def _labelled(jsonl_file, chat_rows, rows: int = 20) -> Path:
    return jsonl_file(
        "labelled.jsonl",
        [{**r, "label": "rare" if i % 5 == 0 else "common"} for i, r in enumerate(chat_rows(rows))],
    )


def test_a_balanced_run_turns_packing_off_and_reports_its_classes(
    tmp_path: Path, lm_recipe, jsonl_file, chat_rows
) -> None:
    data = _labelled(jsonl_file, chat_rows)
    recipe = lm_recipe(
        data={"path": str(data), "val_fraction": 0.0, "balance_by": "label"},
        model={"max_length": 256},
        train={"max_steps": 1},
        eval={"sample_prompts": []},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "packing off: data.balance_by" in result.stdout
    report = json.loads((tmp_path / "runs" / "tiny" / "data_report.json").read_text())
    assert report["sampling"]["classes"] == {"common": 16, "rare": 4}
    assert report["sampling"]["each class drawn"].startswith("50.0%")
